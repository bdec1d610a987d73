//! A task on a thread of its own, with a single-threaded tokio runtime: the
//! data plane of each daemon. Its devices are set up inside that runtime,
//! so their readiness is its business alone, and nothing the control side
//! does on the main runtime (a store flush, a password hash) stalls a pass.

use std::future::Future;

use anyhow::{Context, Result};
use tokio::sync::oneshot;

/// Starts `setup` on a new thread named `name`, inside a fresh
/// single-threaded runtime. `setup` makes the task's devices and returns a
/// value to hand back (such as the TUN's name) with the future to run.
/// Resolves once `setup` is done: with its value and a receiver that
/// resolves when the task has ended, or with `setup`'s error.
pub async fn spawn_on_own_thread<T, S, SF, R>(
    name: &str,
    setup: S,
) -> Result<(T, oneshot::Receiver<()>)>
where
    T: Send + 'static,
    S: FnOnce() -> SF + Send + 'static,
    SF: Future<Output = Result<(T, R)>>,
    R: Future<Output = ()>,
{
    let (up_tx, up_rx) = oneshot::channel::<Result<T>>();
    let (done_tx, done_rx) = oneshot::channel();
    let what = name.to_owned();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    report_setup(
                        up_tx,
                        Err(anyhow::Error::new(e).context("cannot start a runtime")),
                    );
                    return;
                }
            };
            runtime.block_on(async move {
                match setup().await {
                    Ok((value, task)) => {
                        if report_setup(up_tx, Ok(value)) {
                            task.await;
                        }
                    }
                    Err(e) => {
                        report_setup(up_tx, Err(e));
                    }
                }
            });
            if done_tx.send(()).is_err() {
                tracing::debug!("nobody waits for the end of this thread's task any more");
            }
        })
        .with_context(|| format!("cannot start the {what} thread"))?;
    let value = up_rx
        .await
        .with_context(|| format!("the {name} thread ended before it was set up"))??;
    Ok((value, done_rx))
}

/// Hands the caller the setup's outcome; false when the caller stopped
/// waiting (it is stopping), so the task is not started for nobody.
fn report_setup<T>(up: tokio::sync::oneshot::Sender<Result<T>>, outcome: Result<T>) -> bool {
    let sent = up.send(outcome).is_ok();
    if !sent {
        tracing::debug!("the setup's outcome came after the caller stopped waiting");
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_task_runs_on_its_own_thread_and_reports_its_end() {
        let main = std::thread::current().id();
        let (tx, rx) = std::sync::mpsc::channel();
        let (value, done) = spawn_on_own_thread("test-task", move || async move {
            let on = std::thread::current().id();
            let task = async move {
                // A timer works: the runtime has its drivers.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                let _ = tx.send(on);
            };
            Ok((42, task))
        })
        .await
        .unwrap();
        assert_eq!(value, 42);
        done.await.unwrap();
        assert_ne!(rx.recv().unwrap(), main);
    }

    #[tokio::test]
    async fn a_failed_setup_is_an_error() {
        let r = spawn_on_own_thread("test-fail", || async {
            anyhow::bail!("no device");
            #[allow(unreachable_code)]
            Ok(((), async {}))
        })
        .await;
        assert!(format!("{:#}", r.unwrap_err()).contains("no device"));
    }
}
