//! The hub's control-plane listener: Noise over TCP, one task per spoke.
//!
//! A connection must finish its handshake within [`HANDSHAKE_TIMEOUT`], stay
//! under [`MAX_CONNECTIONS`] in total, and say something at least every
//! [`IDLE_TIMEOUT`]; anything malformed closes it without touching others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tasuki_core::api_error::{ApiError, ErrorCode};
use tasuki_core::channel::{refusal_reply, Accepting, Channel};
use tasuki_core::control::{
    DeliveryBody, HubMessage, KeyDelivery, Refusal, RefusalCode, SpokeConfig, SpokeMessage,
};
use tasuki_core::hub_session::{accept, Enrolled, Exchange, HubAction, HubSession};
use tasuki_core::invitation::InvitationId;
use tasuki_core::keys::StaticKey;
use tasuki_core::registry::SpokeRecord;
use tasuki_core::routing::SpokeId;
use tasuki_shell::frames::{write_frame, FrameReader};
use tasuki_shell::unix_now;
use tokio::io::AsyncWrite;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use crate::state::{HubState, SharedState};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const MAX_CONNECTIONS: usize = 4096;

/// Accepts control connections until the listener fails.
pub(crate) async fn serve(listener: TcpListener, state: SharedState, key: Arc<StaticKey>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok((stream, peer)) => (stream, tasuki_shell::dual_stack::canonical(peer)),
            Err(e) => {
                tracing::warn!(error = %e, "control accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !state.with(|st| st.control_open) {
            // An orphaned cluster member: the spoke tries the next one.
            tracing::debug!(%peer, "control channels are closed; turning a spoke away");
            continue;
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many control connections; refusing");
            continue;
        };
        let state = state.clone();
        let key = key.clone();
        tokio::spawn(async move {
            state.with(|st| st.control_connections += 1);
            if let Err(e) = connection(stream, peer, &state, &key).await {
                tracing::info!(%peer, error = %format!("{e:#}"), "control connection closed");
            }
            state.with(|st| st.control_connections -= 1);
            drop(permit);
        });
    }
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, ch: &mut Channel, msg: &HubMessage) -> Result<()> {
    let body = ch.seal(msg)?;
    write_frame(w, &body).await
}

/// Tells the spoke why it is refused and ends the connection; the caller
/// has logged the refusal with what it knows (so it is logged once).
async fn refuse<W: AsyncWrite + Unpin>(w: &mut W, refusal: Refusal) -> Result<()> {
    write_frame(w, &refusal_reply(&refusal))
        .await
        .context("the refusal could not be sent")
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: &SharedState,
    key: &StaticKey,
) -> Result<()> {
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut reader = FrameReader::new(r);
    let first = reader
        .next(HANDSHAKE_TIMEOUT)
        .await?
        .context("closed before the handshake")?;
    let accepting = match Accepting::read(key, &first) {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(%peer, error = %e, "control handshake failed");
            return refuse(
                &mut w,
                Refusal::new(
                    RefusalCode::HandshakeFailed,
                    "handshake failed: the spoke pinned another hub key, or sent a malformed handshake",
                ),
            )
            .await;
        }
    };
    let exchange = match accept(accepting.purpose, &accepting.hello) {
        Ok(x) => x,
        Err(refusal) => {
            tracing::info!(%peer, reason = %refusal, "control connection refused");
            return refuse(&mut w, refusal).await;
        }
    };
    match exchange {
        Exchange::Enrol(invitation) => enrol(accepting, invitation, reader, w, peer, state).await,
        Exchange::Attach => attach(accepting, reader, w, peer, state).await,
    }
}

type Reader = FrameReader<tokio::net::tcp::OwnedReadHalf>;
type Writer = tokio::net::tcp::OwnedWriteHalf;

async fn enrol(
    accepting: Accepting,
    invitation: InvitationId,
    mut reader: Reader,
    mut w: Writer,
    peer: SocketAddr,
    state: &SharedState,
) -> Result<()> {
    let spoke_key = accepting.remote;
    let secret = state.with(|st| {
        st.registry
            .enrolment_secret(&invitation, &spoke_key, unix_now())
    });
    let secret = match secret {
        Ok(s) => s,
        Err(refusal) => {
            tracing::info!(%peer, %invitation, reason = %refusal, "enrolment refused");
            return refuse(&mut w, refusal).await;
        }
    };
    let (mut ch, reply) = accepting.complete(Some(&secret))?;
    write_frame(&mut w, &reply).await?;
    let mut session = HubSession::new(&Exchange::Enrol(invitation));
    let mut enrolled_as: Option<(SpokeId, String)> = None;
    loop {
        // The spoke proves it holds the invitation secret with its first message.
        let body = reader
            .next(HANDSHAKE_TIMEOUT)
            .await?
            .context("closed during the enrolment")?;
        session.handle(ch.open::<SpokeMessage>("enrolment", &body)?)?;
        while let Some(action) = session.poll_action() {
            match action {
                HubAction::Send(msg) => send(&mut w, &mut ch, &msg).await?,
                HubAction::Enrol {
                    hostname,
                    as_user,
                    serves,
                } => {
                    let (outcome, enrolled) = with_dataplane(state, |st| {
                        let outcome = st.enrol(
                            &invitation,
                            spoke_key,
                            &peer.to_string(),
                            crate::state::EnrolAsk {
                                hostname: &hostname,
                                as_user: as_user.as_deref(),
                                serves: serves.as_ref(),
                            },
                            unix_now(),
                        );
                        enrolment_outcome(st, outcome, peer, &invitation)
                    })
                    .await;
                    enrolled_as = enrolled;
                    session.enrolled(outcome);
                }
                HubAction::Receipt(epoch) => {
                    if let Some((id, name)) = &enrolled_as {
                        tracing::info!(spoke = %name, epoch, "key receipt");
                        // Not stored: the spoke reports it again when it attaches.
                        if let Err(e) = state.with(|st| st.on_receipt(*id, epoch)) {
                            tracing::warn!(spoke = %name, error = %format!("{e:#}"), "receipt not stored");
                        }
                    }
                }
                HubAction::Close => return Ok(()),
                other => bail!("{other:?} during an enrolment"),
            }
        }
    }
}

async fn attach(
    accepting: Accepting,
    mut reader: Reader,
    mut w: Writer,
    peer: SocketAddr,
    state: &SharedState,
) -> Result<()> {
    let spoke = state.with(|st| st.registry.attach(&accepting.remote).cloned());
    let spoke = match spoke {
        Ok(s) => s,
        Err(refusal) => {
            tracing::info!(%peer, key = %accepting.remote.fingerprint(), reason = %refusal, "attach refused");
            return refuse(&mut w, refusal).await;
        }
    };
    let (mut ch, reply) = accepting.complete(None)?;
    write_frame(&mut w, &reply).await?;
    let body = reader
        .next(HANDSHAKE_TIMEOUT)
        .await?
        .context("closed before the attach request")?;
    let mut session = HubSession::new(&Exchange::Attach);
    session.handle(ch.open::<SpokeMessage>("attach", &body)?)?;
    // The hub's state holds the only sender: once it forgets this session
    // (the spoke was cut off, or attached again elsewhere), the queue
    // closes and this connection ends, even when the queue was full.
    let (tx, mut rx) = mpsc::channel::<HubMessage>(16);
    let registered = tx.downgrade();
    let mut link = Link {
        spoke: &spoke,
        state,
        session: &mut session,
        ch: &mut ch,
        w: &mut w,
        tx: Some(tx),
    };
    let result = async {
        if link.carry_out().await? {
            return Ok(());
        }
        tracing::info!(spoke = %spoke.name, %peer, "spoke attached");
        loop {
            tokio::select! {
                frame = reader.next(IDLE_TIMEOUT) => {
                    let Some(body) = frame? else { return Ok(()) };
                    link.session.handle(link.ch.open::<SpokeMessage>("spoke message", &body)?)?;
                }
                msg = rx.recv() => {
                    let Some(msg) = msg else {
                        bail!("session ended by the hub (the spoke was cut off or attached again)");
                    };
                    if let HubMessage::Refused(r) = &msg {
                        tracing::info!(spoke = %spoke.name, reason = %r, "cut off");
                    }
                    link.session.send(msg);
                }
            }
            if link.carry_out().await? {
                return Ok(());
            }
        }
    }
    .await;
    state.with(|st| st.detach_session(spoke.id, &registered));
    result
}

/// An attached spoke's connection: its session and where its actions go.
struct Link<'a> {
    spoke: &'a SpokeRecord,
    state: &'a SharedState,
    session: &'a mut HubSession,
    ch: &'a mut Channel,
    w: &'a mut Writer,
    /// The session's queue, until the state holds it.
    tx: Option<mpsc::Sender<HubMessage>>,
}

impl Link<'_> {
    /// Does what the session asks, in order; true when it is over. A state
    /// that cannot store something is logged and the spoke asks again (a
    /// receipt, a distribution) or hears why (a user's request).
    async fn carry_out(&mut self) -> Result<bool> {
        let (id, name) = (self.spoke.id, &self.spoke.name);
        while let Some(action) = self.session.poll_action() {
            match action {
                HubAction::Send(msg) => send(self.w, self.ch, &msg).await?,
                HubAction::Attach => {
                    let answer = self.attach().await;
                    self.session.attached(answer);
                }
                HubAction::Receipt(epoch) => {
                    let note = with_dataplane(self.state, |st| st.on_receipt(id, epoch)).await;
                    match note {
                        Ok(Some(note)) => self.session.send(note),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(spoke = %name, error = %format!("{e:#}"), "receipt not stored; the key goes again")
                        }
                    }
                }
                HubAction::Report(epoch) => tracing::info!(spoke = %name, epoch, "update report"),
                HubAction::Pair(pair) => {
                    let done = self
                        .state
                        .with(|st| st.on_pair_message(id, pair, unix_now()));
                    if let Err(e) = done {
                        // Memory was put back; the spoke's report or request comes again.
                        tracing::warn!(spoke = %name, error = %format!("{e:#}"), "pair message not stored");
                    }
                }
                HubAction::Serves(nets) => {
                    let done = self.state.with(|st| st.on_serves(id, nets, unix_now()));
                    if let Err(e) = done {
                        // Kept as it was; the child hub announces again at its next attach.
                        tracing::warn!(spoke = %name, error = %format!("{e:#}"), "announcement refused");
                    }
                }
                HubAction::Group(group) => {
                    let done = self
                        .state
                        .with(|st| st.on_group_message(id, group, unix_now()));
                    if let Err(e) = done {
                        // The member reports again when the hub sends again.
                        tracing::warn!(spoke = %name, error = %format!("{e:#}"), "group report not stored");
                    }
                }
                HubAction::User { id: call, request } => {
                    let result = with_dataplane(self.state, |st| {
                        st.user_request(id, request, unix_now())
                    })
                    .await
                    .map_err(|e| {
                        if e.code() == ErrorCode::Storage {
                            tracing::error!(spoke = %name, error = %format!("{e:#}"), "user request not stored");
                        }
                        ApiError::from(&e)
                    });
                    self.session.answer(call, result);
                }
                HubAction::Distribute => {
                    tracing::info!(spoke = %name, "distribution request");
                    let pending =
                        with_dataplane(self.state, |st| st.ensure_schedule(id, unix_now())).await;
                    match pending {
                        Ok(pending) => pending.into_iter().for_each(|m| self.session.send(m)),
                        Err(e) => {
                            tracing::warn!(spoke = %name, error = %format!("{e:#}"), "distribution not stored; the spoke asks again")
                        }
                    }
                }
                HubAction::Rotate(trigger) => {
                    tracing::info!(spoke = %name, trigger = %trigger.name(), "update request");
                    let asked = self
                        .state
                        .with(|st| st.request_rotation(Some(name), trigger));
                    if let Err(e) = asked {
                        // The spoke asks again when it still needs the key;
                        // the admin sees why it waits.
                        tracing::warn!(spoke = %name, error = %format!("{e:#}"), "update request not taken");
                    }
                }
                HubAction::Close => return Ok(true),
                HubAction::Enrol { .. } => bail!("an enrolment request on an attach"),
            }
        }
        Ok(false)
    }

    /// Registers the session and answers its attach: the configuration and
    /// what the spoke still needs to hear, or `None` when no first key
    /// could be stored.
    async fn attach(&mut self) -> Option<(SpokeConfig, Vec<HubMessage>)> {
        let (spoke, tx) = (self.spoke, self.tx.take());
        let answer = with_dataplane(self.state, |st| match st.ensure_schedule(spoke.id, unix_now()) {
            Ok(mut pending) => {
                if let Some(tx) = tx {
                    st.attach_session(spoke.id, tx);
                }
                pending.extend(st.session_messages(spoke.id));
                Some((st.spoke_config(spoke), pending))
            }
            Err(e) => {
                tracing::error!(spoke = %spoke.name, error = %format!("{e:#}"), "cannot issue a first key");
                None
            }
        })
        .await;
        answer
    }
}

/// Runs `f` on the state, then waits (unlocked) until the data plane has
/// taken the link changes `f` made: what the caller then sends straight on
/// its connection (a key, a configuration) never reaches the spoke before
/// the hub's data plane can answer a handshake under it.
async fn with_dataplane<R>(state: &SharedState, f: impl FnOnce(&mut HubState) -> R) -> R {
    let (result, wait) = state.with(|st| (f(st), st.dataplane_wait()));
    if let Some(wait) = wait {
        wait.done().await;
    }
    result
}

/// What the enrolment session hears of a stored (or not stored) enrolment,
/// and the spoke it enrolled.
fn enrolment_outcome(
    st: &HubState,
    outcome: crate::state::Result<
        Result<
            (
                tasuki_core::registry::Enrolled,
                Option<tasuki_core::keys::KeyEpoch>,
            ),
            Refusal,
        >,
    >,
    peer: SocketAddr,
    invitation: &InvitationId,
) -> (Enrolled, Option<(SpokeId, String)>) {
    match outcome {
        // Nothing was kept (the store logged why: a full disk, say); the
        // spoke hears it can try again.
        Err(e) => {
            tracing::error!(%peer, %invitation, error = %format!("{e:#}"), "enrolment not stored");
            (Enrolled::NotStored, None)
        }
        Ok(Err(refusal)) => {
            tracing::info!(%peer, %invitation, reason = %refusal, "enrolment refused");
            (Enrolled::Refused(refusal), None)
        }
        Ok(Ok((enrolled, epoch))) => {
            let first_key = epoch.map(|epoch| KeyDelivery {
                epoch: epoch.number,
                body: DeliveryBody::Channel(epoch),
                lifetime: st.policy_for(enrolled.spoke.id).lifetime(),
            });
            let config = Box::new(st.spoke_config(&enrolled.spoke));
            (
                Enrolled::Done { config, first_key },
                Some((enrolled.spoke.id, enrolled.spoke.name.clone())),
            )
        }
    }
}
