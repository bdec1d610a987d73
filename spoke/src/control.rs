//! The spoke's control loop: attach to the hub over Noise, receive the
//! configuration and keys, store them, report receipt, stay connected, and
//! reconnect with backoff when the channel drops.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use tasuki_core::channel::Initiator;

use tasuki_core::api_error::ApiError;
use tasuki_core::control::{
    DeviceWaiting, Hello, HubMessage, Purpose, SessionFacts, SpokeConfig, SpokeMessage, UserReply,
    UserRequest,
};
use tasuki_core::hierarchy::ServedNets;
use tasuki_core::keys::StaticKey;
use tasuki_core::requests::{ApprovalsWaiting, Request};
use tasuki_core::spoke_pairs::SpokePairs;
use tasuki_core::spoke_session::{
    after_refusal, AfterRefusal, Holding, PlaneCommand, SessionAction, SessionEnd, SpokeSession,
    IDLE_SECS,
};
use tasuki_shell::frames::{write_frame, FrameReader};
use tokio::sync::{mpsc, oneshot, watch};

use crate::dataplane::{DpCommand, SpokeEvent};
use crate::routes::{Change, SharedRoutes};
use crate::state::{Enrolment, SpokeStore};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(IDLE_SECS);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest wait between attempts when the hub is a cluster.
const CLUSTER_BACKOFF: Duration = Duration::from_secs(1);
const PENDING_RETRY: Duration = Duration::from_secs(2);

/// What the control loop reports for `status`.
#[derive(Clone, Debug, Default)]
pub(crate) struct ControlState {
    pub(crate) connected: bool,
    pub(crate) last_error: Option<String>,
}

/// A user's request from the local socket, with where to send the answer.
pub(crate) type UserCall = (UserRequest, oneshot::Sender<Result<UserReply, ApiError>>);

/// Who is logged in here, as the hub last said.
#[derive(Clone, Debug, Default)]
pub(crate) struct SessionInfo {
    pub(crate) users: Vec<String>,
    pub(crate) carrying: bool,
    pub(crate) devices_waiting: Vec<String>,
    /// Access requests waiting for the approval of each user logged in here.
    pub(crate) approvals_waiting: std::collections::BTreeMap<String, Vec<Request>>,
    /// Keyed groups held.
    pub(crate) groups: Vec<tasuki_core::spoke_groups::GroupHeld>,
}

pub(crate) struct Control {
    pub(crate) store: Arc<SpokeStore>,
    pub(crate) key: Arc<StaticKey>,
    pub(crate) enrolment: Enrolment,
    pub(crate) dataplane: mpsc::Sender<DpCommand>,
    pub(crate) config: watch::Sender<Option<SpokeConfig>>,
    pub(crate) state: watch::Sender<ControlState>,
    /// What the data plane reports, for the hub.
    pub(crate) events: tokio::sync::Mutex<mpsc::UnboundedReceiver<SpokeEvent>>,
    /// Users' requests from the local socket.
    pub(crate) calls: tokio::sync::Mutex<mpsc::Receiver<UserCall>>,
    /// The session facts for `status`.
    pub(crate) session_info: watch::Sender<SessionInfo>,
    /// Direct mode: the pairs held (locked only for plain calls).
    pub(crate) pairs: std::sync::Mutex<SpokePairs>,
    /// Keyed groups: their epochs held (locked only for plain calls).
    pub(crate) groups: std::sync::Mutex<tasuki_core::spoke_groups::SpokeGroups>,
    /// The data-plane socket's port, once it listens.
    pub(crate) dp_port: std::sync::Mutex<Option<u16>>,
    /// This machine's addresses, anew after each change.
    pub(crate) underlay: tokio::sync::Mutex<watch::Receiver<BTreeSet<IpAddr>>>,
    /// The TUN interface (for the groups' multicast routes).
    pub(crate) interface: String,
    /// Each group's multicast ranges routed into the tunnel.
    pub(crate) multicast_routes:
        std::sync::Mutex<std::collections::BTreeMap<String, Vec<ipnet::Ipv4Net>>>,
    /// The hub's routes on the TUN, once it is up.
    pub(crate) routes: SharedRoutes,
    /// A child hub's uplink: what its branch serves, told to the parent
    /// after each attach and at each change (`None` for a device).
    pub(crate) serves: Option<tokio::sync::Mutex<watch::Receiver<ServedNets>>>,
    /// The member of the hub's cluster that answered last (tried first).
    pub(crate) last_member: std::sync::Mutex<Option<String>>,
}

/// Where the hub is: its cluster's members as the hub last said (`config`),
/// or what the invitation named.
pub(crate) fn hub_members(config: Option<&SpokeConfig>, enrolment: &Enrolment) -> Vec<String> {
    match config {
        Some(c) if !c.hub_endpoints.is_empty() => c.hub_endpoints.clone(),
        _ => tasuki_shell::connect::endpoints(&enrolment.hub_endpoint),
    }
}

/// An attached control channel: the Noise channel, both halves of its
/// connection, and the connection's own address.
struct Attached {
    ch: tasuki_core::channel::Channel,
    reader: FrameReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    local_at: Option<SocketAddr>,
}

impl Control {
    /// Runs forever: attach, serve, back off, repeat.
    pub(crate) async fn run(self) {
        let mut backoff = Duration::from_millis(500);
        loop {
            let result = self.session().await;
            if self.state.borrow().connected {
                // The session was up: the next attempt starts quickly again.
                backoff = Duration::from_millis(500);
            }
            self.state.send_modify(|s| {
                s.connected = false;
                if let Err(e) = &result {
                    s.last_error = Some(format!("{e:#}"));
                }
            });
            // What waits for approval may change while we are away: the
            // hub tells it again at the next attach.
            self.session_info
                .send_modify(|s| s.approvals_waiting.clear());
            let refusal = result
                .as_ref()
                .err()
                .and_then(|e| e.downcast_ref::<crate::enrol::HubRefused>())
                .map(|r| r.refusal.code);
            match &result {
                Ok(()) => backoff = Duration::from_millis(500),
                Err(e) => {
                    tracing::warn!(hub = %self.enrolment.hub_endpoint, error = %format!("{e:#}"), "control channel down")
                }
            }
            match refusal.map(after_refusal) {
                Some(AfterRefusal::RetrySoon) => {
                    tokio::time::sleep(PENDING_RETRY).await;
                    continue;
                }
                // Cut off for good: no key of ours may stay usable.
                Some(AfterRefusal::EraseKeys) => {
                    match self.store.erase_epochs_below(u64::MAX) {
                        Ok(gone) if !gone.is_empty() => {
                            tracing::warn!(epochs = ?gone, "this spoke was revoked: its keys are erased");
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot erase keys"),
                    }
                    if let Err(e) = self.store.forget_pairs() {
                        tracing::error!(error = %format!("{e:#}"), "cannot erase pair keys");
                    }
                    if let Err(e) = self.store.forget_groups() {
                        tracing::error!(error = %format!("{e:#}"), "cannot erase group keys");
                    }
                    self.with_groups(|g| {
                        *g = tasuki_core::spoke_groups::SpokeGroups::restore(
                            tasuki_core::spoke_groups::GROUP_GRACE_SECS,
                            Vec::new(),
                        )
                    });
                    self.publish_groups();
                    self.with_pairs(|p| {
                        p.end_all(tasuki_shell::boot_secs());
                        // Stores and tunnels are gone already.
                        while p.poll_action().is_some() {}
                    });
                    if self.dataplane.send(DpCommand::Revoked).await.is_err() {
                        tracing::error!(
                            "the data plane has stopped; it cannot drop the revoked keys"
                        );
                    }
                }
                Some(AfterRefusal::BackOff) | None => {}
            }
            tokio::time::sleep(backoff).await;
            // A cluster's next member takes over within seconds: look soon.
            let most = if self.hub_members().len() > 1 {
                CLUSTER_BACKOFF
            } else {
                MAX_BACKOFF
            };
            backoff = (backoff * 2).min(most);
        }
    }

    async fn session(&self) -> Result<()> {
        let endpoint = &self.enrolment.hub_endpoint;
        let Attached {
            mut ch,
            mut reader,
            mut w,
            local_at,
        } = self.attach().await?;
        let origin = tokio::time::Instant::now();
        let now = || origin.elapsed().as_secs();
        let mut session = SpokeSession::new(now(), self.config.borrow().clone());
        let mut pending = HashMap::new();
        self.carry_out(&mut session, &mut ch, &mut w, &mut pending, now)
            .await?;
        self.state.send_modify(|s| {
            s.connected = true;
            s.last_error = None;
        });
        tracing::info!(hub = %endpoint, "control channel up");
        self.publish_groups();
        // Pairs keyed by a group get their keys from the group's epochs.
        self.feed_all_groups();
        self.carry_out_pairs(&mut session, now()).await?;
        self.send_facts();
        let mut events = self.events.lock().await;
        let mut calls = self.calls.lock().await;
        let mut pair_timer = tokio::time::interval(Duration::from_secs(5));
        let mut underlay = self.underlay.lock().await;
        underlay.borrow_and_update();
        let mut serves = match &self.serves {
            Some(serves) => Some(serves.lock().await),
            None => None,
        };
        // The hub's first welcome says it attached us.
        let mut welcomed = false;
        loop {
            let mut tell_serves = false;
            let deadline = origin + Duration::from_secs(session.poll_timeout());
            tokio::select! {
                Some((request, reply)) = calls.recv() => {
                    pending.insert(session.call(now(), request), reply);
                }
                Some(event) = events.recv() => self.on_event(&mut session, now(), event),
                frame = reader.next(IDLE_TIMEOUT) => {
                    let Some(body) = frame? else { bail!("the hub closed the control channel") };
                    let msg = ch.open::<HubMessage>("hub message", &body)?;
                    let welcome = matches!(msg, HubMessage::Welcome(_));
                    self.on_message(&mut session, now(), msg)?;
                    tell_serves = welcome && !welcomed;
                    welcomed |= welcome;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    session.handle_timeout(now()).map_err(session_end)?;
                }
                _ = pair_timer.tick() => {
                    let boot = tasuki_shell::boot_secs();
                    self.with_pairs(|p| p.handle_timeout(boot));
                    self.with_groups(|g| g.handle_timeout(boot));
                }
                Ok(()) = underlay.changed() => {
                    let now = underlay.borrow_and_update().clone();
                    self.on_underlay_changed(local_at, &now)?;
                }
                true = serves_changed(serves.as_deref_mut()), if welcomed => tell_serves = true,
            }
            if let Some(serves) = serves.as_deref_mut().filter(|_| tell_serves) {
                let nets = serves.borrow_and_update().clone();
                tracing::info!(v4 = ?nets.v4, v6 = ?nets.v6, "telling the parent hub what this branch serves");
                session.send_other(now(), SpokeMessage::Serves(nets));
            }
            self.carry_out_groups(&mut session, now()).await?;
            self.carry_out_pairs(&mut session, now()).await?;
            self.carry_out(&mut session, &mut ch, &mut w, &mut pending, now)
                .await?;
        }
    }

    /// Where the hub is: its cluster's members as the hub last said, or
    /// what the invitation named.
    fn hub_members(&self) -> Vec<String> {
        hub_members(self.config.borrow().as_ref(), &self.enrolment)
    }

    /// Connects to the hub, runs the Noise handshake and points the data
    /// plane at the address the hub's name resolved to this time.
    async fn attach(&self) -> Result<Attached> {
        let members = self.hub_members();
        let last = self
            .last_member
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let first = last
            .and_then(|l| members.iter().position(|m| *m == l))
            .unwrap_or(0);
        let (stream, answered) =
            tasuki_shell::connect::connect_first(&members, first, CONNECT_TIMEOUT).await?;
        let endpoint = &members[answered];
        if answered != first {
            tracing::info!(member = %endpoint, "another member of the hub cluster answers");
        }
        let attached = self.handshake(stream, endpoint).await;
        // A member that took the connection but not the handshake (one that
        // turns spokes away) is tried last next time.
        let next = match &attached {
            Ok(_) => endpoint.clone(),
            Err(_) => members[(answered + 1) % members.len()].clone(),
        };
        *self
            .last_member
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(next);
        attached
    }

    /// The Noise handshake on a connection to `endpoint`; then the data
    /// plane is pointed at the address it reached.
    async fn handshake(&self, stream: tokio::net::TcpStream, endpoint: &str) -> Result<Attached> {
        let _ = stream.set_nodelay(true);
        // The name is resolved anew on every connection: if the hub moved,
        // the data plane follows it (UDP on the same address and port).
        let hub_at = stream.peer_addr().ok();
        let local_at = stream.local_addr().ok();
        let (r, mut w) = stream.into_split();
        let mut reader = FrameReader::new(r);
        let hello = Hello {
            version: tasuki_core::PROTOCOL_VERSION,
            invitation: None,
        };
        let (init, first) = Initiator::start(
            Purpose::Attach,
            &self.key,
            &self.enrolment.hub_key,
            None,
            &hello,
        )?;
        write_frame(&mut w, &first).await?;
        let reply = reader
            .next(CONNECT_TIMEOUT)
            .await?
            .context("the hub closed the connection during the handshake")?;
        let fingerprint = self.enrolment.hub_key.fingerprint();
        let ch = init
            .finish(&reply)
            .map_err(|e| crate::enrol::explain(e, endpoint, &fingerprint))?;
        if let Some(addr) = hub_at {
            self.dataplane
                .send(DpCommand::HubAt(addr))
                .await
                .context("data plane stopped")?;
        }
        Ok(Attached {
            ch,
            reader,
            w,
            local_at,
        })
    }

    /// This machine's addresses changed: a connection from an address that
    /// went away is dead (nothing comes back to it), so the loop reconnects
    /// from the new one at once; else the hub gets the new local candidates.
    fn on_underlay_changed(&self, local: Option<SocketAddr>, now: &BTreeSet<IpAddr>) -> Result<()> {
        if let Some(at) = local.filter(|at| !now.contains(&at.ip())) {
            bail!(
                "this machine's address {} went away: reconnecting from the new one",
                at.ip()
            );
        }
        self.send_facts();
        Ok(())
    }

    /// A message from the hub, for the session (a key delivery with what
    /// the store holds).
    fn on_message(&self, session: &mut SpokeSession, now: u64, msg: HubMessage) -> Result<()> {
        let (held, current) = if matches!(msg, HubMessage::KeyDistribution(_)) {
            let held: Vec<_> = self.store.epochs()?.into_iter().map(|h| h.epoch).collect();
            (held, self.store.current()?)
        } else {
            (Vec::new(), 0)
        };
        let holding = Holding {
            epochs: &held,
            current,
        };
        session
            .handle_message(now, msg, holding)
            .map_err(session_end)
    }

    /// What waits for a logged-in user's approval: logged when new, shown
    /// by `status`.
    fn on_approvals_waiting(&self, w: ApprovalsWaiting) {
        self.session_info.send_modify(|s| {
            if !s.users.contains(&w.user) {
                return;
            }
            let known = s.approvals_waiting.get(&w.user);
            for r in &w.requests {
                if !known.is_some_and(|k| k.iter().any(|o| o.id == r.id)) {
                    tracing::warn!(
                        approver = %w.user, request = r.id, requester = %r.requester,
                        policy = %r.policy, reason = %r.reason,
                        "an access request waits for your approval: tasuki-spoke approve-request {} (or deny-request)",
                        r.id
                    );
                }
            }
            s.approvals_waiting.insert(w.user, w.requests);
        });
    }

    /// Stores the hub's configuration; only a stored one is in effect.
    /// What changed in the routes alone is taken at once (see
    /// [`crate::routes`]), IPv6 the spoke had not had too; any other change
    /// waits for a restart.
    async fn save_config(&self, session: &mut SpokeSession, config: SpokeConfig) {
        // Held until the configuration is in effect: the data plane's start
        // routes as the one in effect then, this as the ones after it.
        let mut routed = self.routes.lock().await;
        let change = crate::routes::classify(self.config.borrow().as_ref(), &config);
        let saved = self.store.save_config(&config);
        if let Err(e) = &saved {
            tracing::error!(error = %format!("{e:#}"), "cannot store the configuration; it is taken at the next attach");
        } else {
            match change {
                Change::Live { gained6 } => {
                    if let Some(v6) = &gained6 {
                        tracing::info!(addr = %v6.tunnel_addr, "the hub gave this spoke IPv6: taking it");
                        let (interface, dp) = (self.interface.clone(), self.dataplane.clone());
                        tokio::spawn(crate::ipv6::take(interface, v6.clone(), dp));
                    }
                    // Before the TUN is up, its start routes as this one says.
                    if let Some(routed) = routed.as_mut() {
                        routed.follow(&config, gained6.is_some()).await;
                    }
                }
                Change::Restart => {
                    tracing::warn!(
                        "the hub changed this spoke's configuration; restart to apply it (its routes are taken now)"
                    );
                    if let Some(routed) = routed.as_mut() {
                        routed.follow(&config, false).await;
                    }
                }
                Change::First => {}
            }
            self.config.send_replace(Some(config));
        }
        drop(routed);
        session.config_saved(saved.is_ok());
    }

    /// Stores a delivered epoch; only a stored one is used and acknowledged.
    fn store_epoch(
        &self,
        session: &mut SpokeSession,
        now: u64,
        held: tasuki_core::spoke_keys::HeldEpoch,
    ) {
        let number = held.epoch.number;
        let stored = self.store.save_epoch(&held);
        match &stored {
            Ok(()) => tracing::info!(epoch = number, "key epoch received"),
            Err(e) => {
                tracing::error!(epoch = number, error = %format!("{e:#}"), "cannot store a delivered key; the hub sends it again")
            }
        }
        session.epoch_stored(now, number, stored.is_ok());
    }

    /// Does what the session asks, in order; a store that fails is told to
    /// the session (the hub sends the key again), a write that fails ends it.
    async fn carry_out(
        &self,
        session: &mut SpokeSession,
        ch: &mut tasuki_core::channel::Channel,
        w: &mut tokio::net::tcp::OwnedWriteHalf,
        pending: &mut HashMap<u32, oneshot::Sender<Result<UserReply, ApiError>>>,
        now: impl Fn() -> u64,
    ) -> Result<()> {
        while let Some(action) = session.poll_action() {
            match action {
                SessionAction::Send(msg) => write_frame(w, &ch.seal(&msg)?).await?,
                // Whether it changed is the routes' business to say.
                SessionAction::SaveConfig { config, .. } => self.save_config(session, config).await,
                SessionAction::StoreEpoch(held) => self.store_epoch(session, now(), held),
                SessionAction::Plane(cmd) => {
                    if let PlaneCommand::SwitchTo(epoch) = cmd {
                        tracing::info!(epoch, "update notification: switching");
                    }
                    self.dataplane
                        .send(plane_command(cmd))
                        .await
                        .context("data plane stopped")?;
                }
                SessionAction::Reply { id, result } => {
                    let delivered = pending.remove(&id).map(|reply| reply.send(result));
                    if !matches!(delivered, Some(Ok(()))) {
                        tracing::debug!(id, "a user's answer came after the caller left");
                    }
                }
                SessionAction::Session(SessionFacts { users, carrying }) => {
                    tracing::info!(?users, carrying, "session");
                    self.session_info.send_modify(|s| {
                        s.approvals_waiting.retain(|u, _| users.contains(u));
                        s.users = users;
                        s.carrying = carrying;
                    });
                }
                SessionAction::DeviceWaiting(DeviceWaiting {
                    user,
                    name,
                    from,
                    hostname,
                }) => {
                    tracing::warn!(
                        %user, device = %name, %from, %hostname,
                        "a new device waits for confirmation: tasuki-spoke approve-device {name}"
                    );
                    self.session_info.send_modify(|s| {
                        if !s.devices_waiting.contains(&name) {
                            s.devices_waiting.push(name);
                        }
                    });
                }
                SessionAction::ApprovalsWaiting(w) => self.on_approvals_waiting(w),
                SessionAction::Pair(msg) => {
                    self.on_pair_message(msg);
                    self.carry_out_pairs(session, now()).await?;
                }
                SessionAction::Group(msg) => {
                    self.on_group_message(msg);
                    self.carry_out_groups(session, now()).await?;
                    // What the group's epochs changed in the pairs it keys.
                    self.carry_out_pairs(session, now()).await?;
                }
            }
        }
        Ok(())
    }
}

/// Resolves when what a child hub's branch serves changes (false once
/// nothing can change it any more); never for a device.
async fn serves_changed(serves: Option<&mut watch::Receiver<ServedNets>>) -> bool {
    match serves {
        Some(serves) => serves.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// The data plane's command for what the session asks.
fn plane_command(cmd: PlaneCommand) -> DpCommand {
    match cmd {
        PlaneCommand::Hold(held) => DpCommand::Hold(held),
        PlaneCommand::SwitchTo(epoch) => DpCommand::SwitchTo(epoch),
        PlaneCommand::Rehandshake => DpCommand::Rehandshake,
        PlaneCommand::Carrying(carrying) => DpCommand::Carrying(carrying),
    }
}

/// A session's end as the run loop reads it (a refusal keeps its code).
fn session_end(end: SessionEnd) -> anyhow::Error {
    match end {
        SessionEnd::Refused(refusal) => crate::enrol::HubRefused {
            endpoint: None,
            refusal,
        }
        .into(),
        other => other.into(),
    }
}
