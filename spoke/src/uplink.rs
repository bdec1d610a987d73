//! A child hub's uplink (hub hierarchy): the hub enrols into its parent hub
//! as a spoke ([`enrol_hub`]) and runs that spoke inside its own process
//! ([`start`]): the control loop, the underlay follower and the data plane
//! of `tasuki-spoke run`, as tasks of the caller's tokio runtime (the data
//! plane on a thread of its own), with no local socket, no signal handling
//! and no word to systemd. The parent knows it as a service spoke (no user
//! logs in) that serves whole subnets, and hears what they are after each
//! attach and whenever they change.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use tasuki_core::admin_api::SpokeStatus;
use tasuki_core::control::SpokeConfig;
use tasuki_core::hierarchy::ServedNets;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};
use tracing::Instrument;

use crate::daemon::{connect, spawn_loops, Parts, PlaneRunning, PlaneStart};
use crate::enrol::{EnrolAs, Outcome};
use crate::local::LocalApi;
use crate::state::SpokeStore;

/// How long [`start`] waits for the data plane of an uplink whose
/// configuration is stored (it says at once when the TUN cannot be made).
const START_WAIT: Duration = Duration::from_secs(20);
/// How long between two tries to resolve the parent's name.
const RESOLVE_RETRY: Duration = Duration::from_secs(5);
/// How long [`Uplink::shutdown`] waits for the data plane to stop.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// How a child hub's enrolment at its parent ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UplinkEnrolled {
    /// Enrolled and holding its first key: the uplink can run.
    Active {
        /// The uplink's name at the parent.
        name: String,
        /// Its tunnel address in the parent's network.
        tunnel_addr: Ipv4Net,
        /// Its first key epoch.
        epoch: u64,
    },
    /// Enrolled; the parent's admin must approve it (a running uplink
    /// asks again every few seconds and carries traffic once approved).
    Pending {
        /// The uplink's name at the parent.
        name: String,
    },
}

impl std::fmt::Display for UplinkEnrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Active {
                name,
                tunnel_addr,
                epoch,
            } => write!(
                f,
                "enrolled at the parent hub as {name:?}, tunnel address {tunnel_addr}, key epoch {epoch}"
            ),
            Self::Pending { name } => write!(
                f,
                "enrolled at the parent hub as {name:?}; waiting for its admin's approval"
            ),
        }
    }
}

/// Enrols this hub into the parent hub the invitation names, as a child
/// hub whose branch serves `serves`: the enrolment of `tasuki-spoke
/// enrol` (the parent's key pinned, the same state directory layout in
/// `dir`, the same refusals), with `EnrolHub` as its first message.
pub async fn enrol_hub(invitation: &str, dir: &Path, serves: ServedNets) -> Result<UplinkEnrolled> {
    Ok(
        match crate::enrol::enrol(invitation, dir, EnrolAs::Hub { serves }).await? {
            Outcome::Active {
                name,
                address,
                epoch,
            } => UplinkEnrolled::Active {
                name,
                tunnel_addr: address,
                epoch,
            },
            Outcome::Pending { name } => UplinkEnrolled::Pending { name },
        },
    )
}

/// Whether the state directory `dir` holds an enrolment (active or
/// waiting for approval), that is whether [`start`] can run it. Creates
/// nothing when `dir` or its store is not there; true for a directory an
/// [`Uplink`] of this process runs on.
pub fn is_enrolled(dir: &Path) -> Result<bool> {
    if running::holds(dir) {
        return Ok(true);
    }
    crate::state::is_enrolled(dir)
}

/// Starts the uplink enrolled in `dir`: its control loop, underlay
/// follower and data plane (TUN `interface`) as tasks of the current
/// tokio runtime, until the [`Uplink`] is stopped or dropped. `serves` is
/// what this hub's branch serves: told to the parent after each attach and
/// whenever it changes. When the parent's configuration is stored, waits
/// for the data plane: an error if it cannot start (the TUN cannot be
/// made); else (waiting for an approval) [`Uplink::status`] tells how it
/// goes.
pub async fn start(
    dir: &Path,
    interface: &str,
    serves: watch::Receiver<ServedNets>,
) -> Result<Uplink> {
    let claim = running::Claim::take(dir)?;
    if !crate::state::is_enrolled(dir)? {
        anyhow::bail!(
            "{} holds no enrolment at a parent hub: enrol first (enrol_hub)",
            dir.display()
        );
    }
    let store = Arc::new(SpokeStore::open(dir)?);
    let key = Arc::new(store.key()?);
    let enrolment = store
        .enrolment()?
        .with_context(|| format!("{} holds no enrolment at a parent hub", dir.display()))?;
    let Parts {
        control,
        api,
        config,
        plane,
        underlay,
        ..
    } = connect(&store, &key, &enrolment, interface, Some(serves))?;
    let span = tracing::info_span!("uplink", parent = %enrolment.hub_endpoint);
    let [control, underlay] = spawn_loops(control, underlay, span.clone());
    let (plane_tx, plane_rx) = watch::channel(PlaneState::Starting);
    let stopping = Arc::new(AtomicBool::new(false));
    let supervisor = tokio::spawn(
        supervise(
            plane,
            plane_tx,
            [control.abort_handle(), underlay.abort_handle()],
            stopping.clone(),
        )
        .instrument(span),
    );
    let uplink = Uplink {
        api: Some(api),
        config: config.clone(),
        plane: plane_rx,
        control,
        underlay,
        supervisor,
        stopping,
        _claim: claim,
    };
    if config.borrow().is_some() {
        uplink.started().await?;
    }
    Ok(uplink)
}

/// A child hub's uplink to its parent, running; its tasks end when it is
/// stopped or dropped, and the data plane with them (its TUN and socket).
pub struct Uplink {
    /// What `tasuki-spoke status` would answer from (`None` once
    /// [`Self::shutdown`] let go of it).
    api: Option<LocalApi>,
    config: watch::Receiver<Option<SpokeConfig>>,
    plane: watch::Receiver<PlaneState>,
    control: JoinHandle<()>,
    underlay: JoinHandle<()>,
    supervisor: JoinHandle<()>,
    /// Set when the uplink is stopped: the data plane's end is no failure.
    stopping: Arc<AtomicBool>,
    _claim: running::Claim,
}

impl Uplink {
    /// The parent's configuration of this uplink, as the control loop
    /// knows it (`None` until the parent approved it): its `routes` and
    /// `ipv6.routes` are what the rest of the tree serves.
    pub fn config(&self) -> watch::Receiver<Option<SpokeConfig>> {
        self.config.clone()
    }

    /// What `tasuki-spoke status` would answer for this uplink: its state
    /// (`dataplane-failed` and `dataplane-stopped` besides a spoke's, with
    /// the reason in `last_error`), the parent, the key epoch, counters.
    /// `None` only when its control loop ended for no reason it knows (a
    /// bug; the log says more).
    pub async fn status(&self) -> Option<SpokeStatus> {
        let api = self.api.as_ref()?;
        let plane = self.plane.borrow().clone();
        if self.control.is_finished() && !plane.ended() {
            return None;
        }
        let mut status = api.status().await;
        match plane {
            PlaneState::Starting => {}
            PlaneState::Unresolved(e) => status.last_error = Some(e),
            PlaneState::Running { route_errors } => {
                // The control channel's last error first: it is the news.
                if status.last_error.is_none() && !route_errors.is_empty() {
                    status.last_error = Some(route_errors.join("; "));
                }
            }
            PlaneState::Failed(e) => {
                status.state = "dataplane-failed".into();
                status.control_connected = false;
                status.last_error = Some(e);
            }
            PlaneState::Stopped => {
                status.state = "dataplane-stopped".into();
                status.control_connected = false;
                status.last_error = Some("the uplink's data plane stopped".into());
            }
        }
        Some(status)
    }

    /// Stops the uplink at once: its tasks are aborted; the data plane's
    /// thread ends, its TUN and socket with it, a moment later (see
    /// [`Self::shutdown`] to wait for that).
    pub fn stop(self) {
        tracing::info!("stopping the uplink to the parent hub");
        drop(self);
    }

    /// Stops the uplink and waits (a few seconds at most) until its data
    /// plane has stopped, so that its TUN is gone: a new uplink can then
    /// take the same interface name.
    pub async fn shutdown(mut self) {
        tracing::info!("stopping the uplink to the parent hub");
        self.stopping.store(true, Ordering::Relaxed);
        self.control.abort();
        self.underlay.abort();
        // The data plane stops once no sender of its commands is left.
        self.api = None;
        if tokio::time::timeout(STOP_WAIT, &mut self.supervisor)
            .await
            .is_err()
        {
            tracing::warn!("the uplink's data plane did not stop in time");
        }
    }

    /// Waits until the data plane has started or failed to (at most
    /// [`START_WAIT`]); its failure is an error.
    async fn started(&self) -> Result<()> {
        let mut plane = self.plane.clone();
        let settled = tokio::time::timeout(
            START_WAIT,
            plane.wait_for(|s| !matches!(s, PlaneState::Starting)),
        )
        .await;
        match settled {
            Ok(Ok(state)) => match &*state {
                PlaneState::Failed(e) => Err(anyhow::anyhow!("{e}")),
                _ => Ok(()),
            },
            Ok(Err(_)) => Err(anyhow::anyhow!(
                "the uplink's data plane ended before it said whether it started"
            )),
            Err(_) => {
                tracing::warn!(
                    "the uplink's data plane has not started yet; its status tells how it goes"
                );
                Ok(())
            }
        }
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.control.abort();
        self.underlay.abort();
        self.supervisor.abort();
    }
}

/// Where the uplink's data plane is.
#[derive(Clone, Debug)]
enum PlaneState {
    /// Waiting for the parent's configuration, or starting.
    Starting,
    /// The parent's name does not resolve (yet): tried again.
    Unresolved(String),
    /// Running; the routes that could not be added, if any.
    Running { route_errors: Vec<String> },
    /// It could not start: the uplink has stopped.
    Failed(String),
    /// It stopped: the uplink has stopped.
    Stopped,
}

impl PlaneState {
    /// Whether the uplink stopped with its data plane.
    fn ended(&self) -> bool {
        matches!(self, Self::Failed(_) | Self::Stopped)
    }
}

/// Starts the data plane once the parent's configuration is known (the
/// parent's name tried until it resolves) and follows it; if it cannot
/// start, or stops, the control loop and underlay follower (`loops`) stop
/// too, and `state` says why.
async fn supervise(
    plane: PlaneStart,
    state: watch::Sender<PlaneState>,
    loops: [AbortHandle; 2],
    stopping: Arc<AtomicBool>,
) {
    let end = match start_plane(plane, &state, &stopping).await {
        Err(e) => {
            let e = format!("the uplink's data plane did not start: {e:#}");
            if !stopping.load(Ordering::Relaxed) {
                tracing::error!("{e}; the uplink stops");
            }
            PlaneState::Failed(e)
        }
        Ok(PlaneRunning { done, route_errors }) => {
            if !route_errors.is_empty() {
                tracing::warn!(errors = ?route_errors, "the uplink runs without some of the parent's routes");
            }
            state.send_replace(PlaneState::Running { route_errors });
            if done.await.is_err() {
                tracing::debug!("the data plane's thread ended without a word");
            }
            if !stopping.load(Ordering::Relaxed) {
                tracing::error!("the uplink's data plane stopped; the uplink stops");
            }
            PlaneState::Stopped
        }
    };
    // Said before the loops end: a status in between tells why.
    state.send_replace(end);
    for task in loops {
        task.abort();
    }
}

/// The data plane, started once the configuration is known and the
/// parent's name resolves.
async fn start_plane(
    mut plane: PlaneStart,
    state: &watch::Sender<PlaneState>,
    stopping: &AtomicBool,
) -> Result<PlaneRunning> {
    let config = plane.configured().await?;
    let hub = loop {
        match plane.resolve_hub().await {
            Ok(hub) => break hub,
            Err(_) if stopping.load(Ordering::Relaxed) => anyhow::bail!("the uplink stops"),
            Err(e) => {
                let e = format!("{e:#}");
                tracing::warn!(error = %e, "cannot resolve the parent hub; trying again");
                state.send_replace(PlaneState::Unresolved(e));
                tokio::time::sleep(RESOLVE_RETRY).await;
            }
        }
    };
    state.send_replace(PlaneState::Starting);
    plane.launch(config, hub, None).await
}

/// The state directories uplinks of this process run on: one runs on a
/// directory at a time, and [`is_enrolled`] answers for it without opening
/// its store (which the running uplink holds).
mod running {
    use super::*;

    static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    /// `dir` as the list keeps it (the same directory named another way
    /// is the same one).
    fn key(dir: &Path) -> PathBuf {
        std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned())
    }

    /// Whether an uplink of this process runs on `dir`.
    pub(super) fn holds(dir: &Path) -> bool {
        let dir = key(dir);
        DIRS.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&dir)
    }

    /// `dir` taken for one uplink until the claim is dropped.
    pub(super) struct Claim(PathBuf);

    impl Claim {
        /// Takes `dir`; an error when an uplink runs on it already.
        pub(super) fn take(dir: &Path) -> Result<Self> {
            let key = key(dir);
            let mut dirs = DIRS.lock().unwrap_or_else(PoisonError::into_inner);
            if dirs.contains(&key) {
                anyhow::bail!("an uplink runs on {} already", dir.display());
            }
            dirs.push(key.clone());
            Ok(Self(key))
        }
    }

    impl Drop for Claim {
        fn drop(&mut self) {
            DIRS.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|d| d != &self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enrolment_reads_as_a_sentence() {
        let active = UplinkEnrolled::Active {
            name: "branch-a".into(),
            tunnel_addr: "10.77.0.9/24".parse().unwrap(),
            epoch: 1,
        };
        assert_eq!(
            active.to_string(),
            "enrolled at the parent hub as \"branch-a\", tunnel address 10.77.0.9/24, key epoch 1"
        );
        let pending = UplinkEnrolled::Pending {
            name: "branch-a".into(),
        };
        assert!(pending
            .to_string()
            .contains("waiting for its admin's approval"));
    }

    #[test]
    fn no_store_is_made_to_say_a_directory_holds_no_enrolment() {
        let base = std::env::temp_dir().join(format!("tasuki-uplink-{}", std::process::id()));
        let dir = base.join("absent");
        assert!(!is_enrolled(&dir).unwrap());
        assert!(!dir.exists());
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!is_enrolled(&dir).unwrap());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[tokio::test]
    async fn an_unenrolled_directory_does_not_start() {
        let dir = std::env::temp_dir().join(format!("tasuki-uplink-start-{}", std::process::id()));
        let (_tx, rx) = watch::channel(ServedNets::default());
        let err = start(&dir, "tasuki-up0", rx).await.err().unwrap();
        assert!(format!("{err:#}").contains("holds no enrolment"));
        assert!(!dir.exists());
        // The directory is free again for the next try.
        assert!(!running::holds(&dir));
    }

    /// A state directory enrolled at a parent that is not there
    /// (127.0.0.1:9 refuses), with a configuration or none (pending).
    fn enrolled_dir(tag: &str, config: Option<&SpokeConfig>) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tasuki-uplink-{tag}-{}", std::process::id()));
        let store = SpokeStore::open(&dir).unwrap();
        store.key_or_create().unwrap();
        let hub_key = tasuki_core::keys::StaticKey::generate(&mut rand_core::OsRng).public();
        store
            .save_enrolment(&crate::state::Enrolment {
                name: "branch".into(),
                hub_endpoint: "127.0.0.1:9".into(),
                hub_key,
            })
            .unwrap();
        if let Some(config) = config {
            store.save_config(config).unwrap();
        }
        dir
    }

    #[tokio::test]
    async fn a_pending_uplink_runs_says_how_it_goes_and_stops() {
        let dir = enrolled_dir("pending", None);
        assert!(is_enrolled(&dir).unwrap());
        let (_serves, rx) = watch::channel(ServedNets::default());
        let uplink = start(&dir, "tasuki-upt0", rx.clone()).await.unwrap();
        assert!(is_enrolled(&dir).unwrap(), "while it runs too");
        assert!(start(&dir, "tasuki-upt1", rx.clone()).await.is_err());
        assert!(uplink.config().borrow().is_none());
        let status = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let status = uplink.status().await.unwrap();
                if status.last_error.is_some() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(status.state, "waiting-for-hub");
        assert_eq!(status.name, "branch");
        assert!(!status.control_connected);
        uplink.shutdown().await;
        assert!(!running::holds(&dir));
        // The store is free for the next start.
        start(&dir, "tasuki-upt0", rx).await.unwrap().stop();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_data_plane_that_cannot_start_is_an_error() {
        let config = SpokeConfig {
            spoke_id: 3,
            name: "branch".into(),
            tunnel_addr: "10.77.0.3/24".parse().unwrap(),
            hub_tunnel_addr: "10.77.0.1".parse().unwrap(),
            routes: vec!["10.9.0.0/16".parse().unwrap()],
            mtu: 1420,
            keepalive_secs: 25,
            ipv6: None,
            hub_endpoints: Vec::new(),
        };
        let dir = enrolled_dir("no-tun", Some(&config));
        let (_serves, rx) = watch::channel(ServedNets::default());
        // No interface has a name this long: the TUN cannot be made.
        let err = start(&dir, "tasuki-name-far-too-long", rx)
            .await
            .err()
            .unwrap();
        let err = format!("{err:#}");
        assert!(err.contains("data plane did not start"), "{err}");
        assert!(err.contains("TUN"), "{err}");
        assert!(!running::holds(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The hub keeps its uplink in state its tasks share.
    #[test]
    fn an_uplink_can_be_shared_between_tasks() {
        fn shared<T: Send + Sync + 'static>() {}
        fn sendable<F: std::future::Future + Send>(_: F) {}
        fn status_is_sendable(uplink: &Uplink) {
            sendable(uplink.status());
            sendable(enrol_hub("", Path::new(""), ServedNets::default()));
            sendable(start(
                Path::new(""),
                "",
                watch::channel(ServedNets::default()).1,
            ));
        }
        shared::<Uplink>();
        let _check: fn(&Uplink) = status_is_sendable;
    }

    #[test]
    fn one_uplink_runs_on_a_directory() {
        let dir = std::env::temp_dir().join(format!("tasuki-uplink-claim-{}", std::process::id()));
        let claim = running::Claim::take(&dir).unwrap();
        assert!(running::holds(&dir));
        assert!(is_enrolled(&dir).unwrap());
        assert!(running::Claim::take(&dir).is_err());
        drop(claim);
        assert!(!running::holds(&dir));
    }
}
