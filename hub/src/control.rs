//! The hub's control-plane listener: Noise over TCP, one task per spoke.
//!
//! A connection must finish its handshake within [`HANDSHAKE_TIMEOUT`], stay
//! under [`MAX_CONNECTIONS`] in total, and say something at least every
//! [`IDLE_TIMEOUT`]; anything malformed closes it without touching others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tasuki_core::channel::{refusal_reply, Accepting, Channel};
use tasuki_core::control::{
    DeliveryBody, HubMessage, KeyDelivery, Purpose, Refusal, RefusalCode, SpokeMessage,
};
use tasuki_core::keys::StaticKey;
use tasuki_shell::frames::{write_frame, FrameReader};
use tasuki_shell::unix_now;
use tokio::io::AsyncWrite;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex, Semaphore};

use crate::state::HubState;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const MAX_CONNECTIONS: usize = 4096;

/// Accepts control connections until the listener fails.
pub(crate) async fn serve(listener: TcpListener, state: Arc<Mutex<HubState>>, key: Arc<StaticKey>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "control accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many control connections; refusing");
            continue;
        };
        let state = state.clone();
        let key = key.clone();
        tokio::spawn(async move {
            state.lock().await.control_connections += 1;
            if let Err(e) = connection(stream, peer, &state, &key).await {
                tracing::info!(%peer, error = %format!("{e:#}"), "control connection closed");
            }
            state.lock().await.control_connections -= 1;
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
    state: &Arc<Mutex<HubState>>,
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
    if accepting.hello.version != tasuki_core::PROTOCOL_VERSION {
        tracing::info!(%peer, version = accepting.hello.version, "control connection refused: protocol version");
        return refuse(
            &mut w,
            Refusal::new(
                RefusalCode::VersionMismatch,
                format!(
                    "protocol version {} is not supported (hub speaks {})",
                    accepting.hello.version,
                    tasuki_core::PROTOCOL_VERSION
                ),
            ),
        )
        .await;
    }
    match accepting.purpose {
        Purpose::Enrol => enrol(accepting, reader, w, peer, state).await,
        Purpose::Attach => attach(accepting, reader, w, peer, state).await,
    }
}

async fn enrol(
    accepting: Accepting,
    mut reader: FrameReader<tokio::net::tcp::OwnedReadHalf>,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    peer: SocketAddr,
    state: &Arc<Mutex<HubState>>,
) -> Result<()> {
    let Some(invitation) = accepting.hello.invitation else {
        tracing::info!(%peer, "enrolment refused: no invitation");
        return refuse(
            &mut w,
            Refusal::new(
                RefusalCode::ProtocolViolation,
                "enrolment without an invitation",
            ),
        )
        .await;
    };
    let spoke_key = accepting.remote;
    let secret = state
        .lock()
        .await
        .registry
        .enrolment_secret(&invitation, &spoke_key, unix_now());
    let secret = match secret {
        Ok(s) => s,
        Err(refusal) => {
            tracing::info!(%peer, %invitation, reason = %refusal, "enrolment refused");
            return refuse(&mut w, refusal).await;
        }
    };
    let (mut ch, reply) = accepting.complete(Some(&secret))?;
    write_frame(&mut w, &reply).await?;
    // The spoke proves it holds the invitation secret with its first message.
    let body = reader
        .next(HANDSHAKE_TIMEOUT)
        .await?
        .context("closed before the enrolment request")?;
    let (hostname, as_user) = match ch.open::<SpokeMessage>("enrol request", &body)? {
        SpokeMessage::EnrolRequest { hostname, as_user } => (hostname, as_user),
        other => bail!("expected an enrolment request, got {other:?}"),
    };
    let outcome = state
        .lock()
        .await
        .enrol(
            &invitation,
            spoke_key,
            &peer.to_string(),
            &hostname,
            as_user.as_deref(),
            unix_now(),
        )
        .await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            // Nothing was kept (the store logged why: a full disk, say); the
            // spoke hears it can try again, not the hub's paths and errors.
            tracing::error!(%peer, %invitation, error = %format!("{e:#}"), "enrolment not stored");
            let refusal = Refusal::new(
                RefusalCode::Internal,
                "the hub could not store this enrolment; nothing was kept, try again later",
            );
            send(&mut w, &mut ch, &HubMessage::Refused(refusal.clone())).await?;
            bail!("enrolment not stored: {refusal}");
        }
    };
    let (enrolled, epoch) = match outcome {
        Ok(x) => x,
        Err(refusal) => {
            send(&mut w, &mut ch, &HubMessage::Refused(refusal.clone())).await?;
            bail!("enrolment refused: {refusal}");
        }
    };
    let config = state.lock().await.registry.spoke_config(&enrolled.spoke);
    send(&mut w, &mut ch, &HubMessage::Welcome(config)).await?;
    match epoch {
        Some(epoch) => {
            send(
                &mut w,
                &mut ch,
                &HubMessage::KeyDistribution(KeyDelivery {
                    epoch: epoch.number,
                    body: DeliveryBody::Channel(epoch),
                    lifetime: state.lock().await.policy_for(enrolled.spoke.id).lifetime(),
                }),
            )
            .await?;
            // Wait for the receipt report so the spoke has stored the key.
            if let Some(body) = reader.next(HANDSHAKE_TIMEOUT).await? {
                if let SpokeMessage::KeyReceipt { epoch } = ch.open("receipt", &body)? {
                    tracing::info!(spoke = %enrolled.spoke.name, epoch, "key receipt");
                    // The spoke closes after enrolment; it switches when it attaches.
                    let _ = state
                        .lock()
                        .await
                        .on_receipt(enrolled.spoke.id, epoch)
                        .await?;
                }
            }
        }
        None => {
            send(
                &mut w,
                &mut ch,
                &HubMessage::Refused(Refusal::new(
                    RefusalCode::Pending,
                    "enrolled; this spoke waits for an admin's approval",
                )),
            )
            .await?;
        }
    }
    Ok(())
}

async fn attach(
    accepting: Accepting,
    mut reader: FrameReader<tokio::net::tcp::OwnedReadHalf>,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    peer: SocketAddr,
    state: &Arc<Mutex<HubState>>,
) -> Result<()> {
    let spoke = {
        let st = state.lock().await;
        st.registry.attach(&accepting.remote).cloned()
    };
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
    match ch.open::<SpokeMessage>("attach", &body)? {
        SpokeMessage::Attach => {}
        other => bail!("expected attach, got {other:?}"),
    }
    // The hub's state holds the only sender: once it forgets this session
    // (the spoke was cut off, or attached again elsewhere), the queue
    // closes and this connection ends, even when the queue was full.
    let (tx, mut rx) = mpsc::channel::<HubMessage>(16);
    let registered = tx.downgrade();
    let attached = {
        let mut st = state.lock().await;
        match st.ensure_schedule(spoke.id, unix_now()).await {
            Ok(pending) => {
                st.attach_session(spoke.id, tx);
                Ok((st.registry.spoke_config(&spoke), pending))
            }
            Err(e) => Err(e),
        }
    };
    let (config, pending) = match attached {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(spoke = %spoke.name, error = %format!("{e:#}"), "cannot issue a first key");
            let refusal = Refusal::new(
                RefusalCode::Internal,
                "the hub could not store a key for this spoke; try again later",
            );
            send(&mut w, &mut ch, &HubMessage::Refused(refusal.clone())).await?;
            bail!("attach not completed: {refusal}");
        }
    };
    tracing::info!(spoke = %spoke.name, %peer, "spoke attached");
    let result = async {
        send(&mut w, &mut ch, &HubMessage::Welcome(config)).await?;
        for msg in pending {
            send(&mut w, &mut ch, &msg).await?;
        }
        let session = state.lock().await.session_message(spoke.id);
        send(&mut w, &mut ch, &session).await?;
        loop {
            tokio::select! {
                frame = reader.next(IDLE_TIMEOUT) => {
                    let Some(body) = frame? else { return Ok(()) };
                    match ch.open::<SpokeMessage>("spoke message", &body)? {
                        SpokeMessage::Keepalive => send(&mut w, &mut ch, &HubMessage::Keepalive).await?,
                        SpokeMessage::KeyReceipt { epoch } => {
                            let note = state.lock().await.on_receipt(spoke.id, epoch).await?;
                            if let Some(note) = note {
                                send(&mut w, &mut ch, &note).await?;
                            }
                        }
                        SpokeMessage::UpdateReport { epoch } => {
                            tracing::info!(spoke = %spoke.name, epoch, "update report");
                            send(&mut w, &mut ch, &HubMessage::ReportAck { epoch }).await?;
                        }
                        SpokeMessage::User { id, request } => {
                            let result = state
                                .lock()
                                .await
                                .user_request(spoke.id, request, unix_now())
                                .await
                                .unwrap_or_else(|e| {
                                    tracing::error!(spoke = %spoke.name, error = %format!("{e:#}"), "user request failed");
                                    Err("the hub could not complete this request (its disk may be full); try again later".into())
                                });
                            send(&mut w, &mut ch, &HubMessage::UserReply { id, result }).await?;
                        }
                        SpokeMessage::DistributionRequest => {
                            tracing::info!(spoke = %spoke.name, "distribution request");
                            let pending = state.lock().await.ensure_schedule(spoke.id, unix_now()).await?;
                            for msg in pending {
                                send(&mut w, &mut ch, &msg).await?;
                            }
                        }
                        SpokeMessage::UpdateRequest { reason } => {
                            tracing::info!(spoke = %spoke.name, %reason, "update request");
                            let asked = state.lock().await.request_rotation(
                                Some(&spoke.name),
                                tasuki_core::rotation::Trigger::SpokeRequest(reason),
                            );
                            if let Err(e) = asked {
                                // The spoke asks again when it still needs
                                // the key; the admin sees why it waits.
                                tracing::warn!(spoke = %spoke.name, error = %format!("{e:#}"), "update request not taken");
                            }
                        }
                        other => bail!("unexpected message {other:?}"),
                    }
                }
                msg = rx.recv() => {
                    let Some(msg) = msg else {
                        bail!("session ended by the hub (the spoke was cut off or attached again)");
                    };
                    send(&mut w, &mut ch, &msg).await?;
                    if let HubMessage::Refused(r) = msg {
                        bail!("cut off: {r}");
                    }
                }
            }
        }
    }
    .await;
    state.lock().await.detach_session(spoke.id, &registered);
    result
}
