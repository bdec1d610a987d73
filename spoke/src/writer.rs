//! The data plane's store writes (the epoch that carries traffic, ended
//! epochs erased), done in order on a thread of their own: a flush to disk
//! never stalls a pass of the data plane, so a key rotation under load
//! costs no throughput.

use std::sync::{mpsc, Arc};

use crate::dataplane::SpokeEvent;
use crate::state::SpokeStore;

/// How long a failed write waits before it is tried again.
const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A write the data plane asks for.
pub(crate) enum StoreJob {
    /// Record the epoch that carries traffic now, then report it to the
    /// hub (an update report never runs ahead of the disk).
    Current(u64),
    /// Erase every stored epoch below this one (records, then key files).
    EraseBelow(u64),
}

/// Hands writes to the writer thread, which ends when this is dropped.
pub(crate) struct StoreWriter {
    jobs: mpsc::Sender<StoreJob>,
}

impl StoreWriter {
    /// Starts the writer thread.
    /// Starts the writer thread; `events` hears of each epoch once stored.
    pub(crate) fn spawn(
        store: Arc<SpokeStore>,
        events: tokio::sync::mpsc::UnboundedSender<SpokeEvent>,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("tasuki-store".into())
            .spawn(move || {
                for job in queue {
                    write(&store, &events, job);
                }
            })?;
        Ok(Self { jobs })
    }

    /// Queues a write; never blocks.
    pub(crate) fn send(&self, job: StoreJob) {
        if self.jobs.send(job).is_err() {
            tracing::error!("the store writer has stopped; a store write is lost");
        }
    }
}

fn write(
    store: &SpokeStore,
    events: &tokio::sync::mpsc::UnboundedSender<SpokeEvent>,
    job: StoreJob,
) {
    match job {
        StoreJob::Current(epoch) => {
            // Reported only once stored: tried again until it is (a full
            // disk), however long that takes; the traffic goes on meanwhile.
            let mut tries = 0u32;
            while let Err(e) = store.save_current(epoch) {
                if tries.is_multiple_of(30) {
                    tracing::error!(epoch, error = %format!("{e:#}"), "cannot record the current epoch; trying again every second");
                }
                tries += 1;
                std::thread::sleep(RETRY_INTERVAL);
            }
            if tries > 0 {
                tracing::info!(epoch, tries, "current epoch recorded");
            }
            if events
                .send(SpokeEvent::Report(
                    tasuki_core::spoke_session::PlaneReport::Confirmed(epoch),
                ))
                .is_err()
            {
                tracing::debug!(
                    epoch,
                    "the daemon is stopping; the update report goes at the next start"
                );
            }
        }
        StoreJob::EraseBelow(below) => match store.erase_epochs_below(below) {
            Ok(gone) if !gone.is_empty() => tracing::info!(epochs = ?gone, "ended epochs erased"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot erase ended epochs"),
        },
    }
}
