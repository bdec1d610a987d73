//! The spoke's control loop: attach to the hub over Noise, receive the
//! configuration and keys, store them, report receipt, stay connected, and
//! reconnect with backoff when the channel drops.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use tasuki_core::channel::Initiator;

use tasuki_core::control::{
    Hello, HubMessage, Purpose, RefusalCode, SpokeConfig, SpokeMessage, UserReply, UserRequest,
};
use tasuki_core::keys::StaticKey;
use tasuki_shell::frames::{write_frame, FrameReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::dataplane::{DpCommand, SpokeEvent};
use crate::state::{Enrolment, SpokeStore};
use tasuki_core::rotation::Received;
use tasuki_core::spoke_keys::HeldEpoch;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE: Duration = Duration::from_secs(20);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const PENDING_RETRY: Duration = Duration::from_secs(2);

/// What the control loop reports for `status`.
#[derive(Clone, Debug, Default)]
pub(crate) struct ControlState {
    pub(crate) connected: bool,
    pub(crate) last_error: Option<String>,
}

/// A user's request from the local socket, with where to send the answer.
pub(crate) type UserCall = (UserRequest, oneshot::Sender<Result<UserReply, String>>);

/// Who is logged in here, as the hub last said.
#[derive(Clone, Debug, Default)]
pub(crate) struct SessionInfo {
    pub(crate) users: Vec<String>,
    pub(crate) carrying: bool,
    pub(crate) devices_waiting: Vec<String>,
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
            match refusal {
                // Waiting for an admin or the owner: ask again soon, without growing.
                Some(RefusalCode::Pending) => {
                    tokio::time::sleep(PENDING_RETRY).await;
                    continue;
                }
                // Cut off for good: no key of ours may stay usable.
                Some(RefusalCode::Revoked) => {
                    match self.store.erase_epochs_below(u64::MAX) {
                        Ok(gone) if !gone.is_empty() => {
                            tracing::warn!(epochs = ?gone, "this spoke was revoked: its keys are erased");
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot erase keys"),
                    }
                    let _ = self.dataplane.send(DpCommand::Revoked).await;
                }
                _ => {}
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn session(&self) -> Result<()> {
        let endpoint = &self.enrolment.hub_endpoint;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint))
            .await
            .context("timed out connecting")?
            .with_context(|| format!("cannot connect to {endpoint}"))?;
        let _ = stream.set_nodelay(true);
        // The name is resolved anew on every connection: if the hub moved,
        // the data plane follows it (UDP on the same address and port).
        let hub_at = stream.peer_addr().ok();
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
        let mut ch = init
            .finish(&reply)
            .map_err(|e| crate::enrol::explain(e, endpoint, &fingerprint))?;
        write_frame(&mut w, &ch.seal(&SpokeMessage::Attach)?).await?;
        self.state.send_modify(|s| {
            s.connected = true;
            s.last_error = None;
        });
        tracing::info!(hub = %endpoint, "control channel up");
        if let Some(addr) = hub_at {
            let _ = self.dataplane.send(DpCommand::HubAt(addr)).await;
        }
        // The hub may have restarted and lost our session: start a fresh one.
        let _ = self.dataplane.send(DpCommand::Rehandshake).await;
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        let mut events = self.events.lock().await;
        let mut calls = self.calls.lock().await;
        let mut pending: HashMap<u32, oneshot::Sender<Result<UserReply, String>>> = HashMap::new();
        let mut next_id = 0u32;
        loop {
            tokio::select! {
                Some((request, reply)) = calls.recv() => {
                    next_id = next_id.wrapping_add(1);
                    pending.insert(next_id, reply);
                    let msg = SpokeMessage::User { id: next_id, request };
                    write_frame(&mut w, &ch.seal(&msg)?).await?;
                }
                Some(event) = events.recv() => {
                    let msg = match event {
                        SpokeEvent::Confirmed(epoch) => SpokeMessage::UpdateReport { epoch },
                        SpokeEvent::RequestUpdate => SpokeMessage::UpdateRequest {
                            reason: "lifetime-over".into(),
                        },
                        SpokeEvent::NeedKeys => SpokeMessage::DistributionRequest,
                    };
                    write_frame(&mut w, &ch.seal(&msg)?).await?;
                }
                frame = reader.next(IDLE_TIMEOUT) => {
                    let Some(body) = frame? else { bail!("the hub closed the control channel") };
                    let msg = ch.open::<HubMessage>("hub message", &body)?;
                    if let HubMessage::UserReply { id, result } = msg {
                        if let Some(reply) = pending.remove(&id) {
                            let _ = reply.send(result);
                        }
                        continue;
                    }
                    self.on_message(msg, &mut ch, &mut w).await?;
                }
                _ = keepalive.tick() => {
                    write_frame(&mut w, &ch.seal(&SpokeMessage::Keepalive)?).await?;
                }
            }
        }
    }

    async fn on_message(
        &self,
        msg: HubMessage,
        ch: &mut tasuki_core::channel::Channel,
        w: &mut tokio::net::tcp::OwnedWriteHalf,
    ) -> Result<()> {
        match msg {
            HubMessage::Welcome(config) => {
                let old = self.config.borrow().clone();
                if old.as_ref() != Some(&config) {
                    self.store.save_config(&config)?;
                    if old.is_some() {
                        tracing::warn!(
                            "the hub changed this spoke's configuration; restart to apply it"
                        );
                    }
                    self.config.send_replace(Some(config));
                }
            }
            HubMessage::KeyDistribution(delivery) => {
                let link = self
                    .config
                    .borrow()
                    .as_ref()
                    .map(|c| c.spoke_id)
                    .context("key before configuration")?;
                let held: Vec<_> = self.store.epochs()?.into_iter().map(|h| h.epoch).collect();
                let current = self.store.current()?;
                let received =
                    tasuki_core::rotation::receive_delivery(link, &delivery, &held, current)
                        .context("cannot open the delivered key")?;
                let epoch = match received {
                    Received::Again => {
                        // A re-delivery (the hub lost our receipt): acknowledge again.
                        write_frame(
                            w,
                            &ch.seal(&SpokeMessage::KeyReceipt {
                                epoch: delivery.epoch,
                            })?,
                        )
                        .await?;
                        return Ok(());
                    }
                    Received::New(epoch) => epoch,
                };
                let number = epoch.number;
                let held = HeldEpoch {
                    epoch,
                    lifetime: delivery.lifetime,
                };
                // Durable before acknowledged or used.
                self.store.save_epoch(&held)?;
                self.dataplane
                    .send(DpCommand::Hold(held))
                    .await
                    .context("data plane stopped")?;
                tracing::info!(epoch = number, "key epoch received");
                write_frame(w, &ch.seal(&SpokeMessage::KeyReceipt { epoch: number })?).await?;
            }
            HubMessage::UpdateNotification { epoch } => {
                tracing::info!(epoch, "update notification: switching");
                self.dataplane
                    .send(DpCommand::SwitchTo(epoch))
                    .await
                    .context("data plane stopped")?;
            }
            HubMessage::Refused(refusal) => {
                return Err(crate::enrol::HubRefused {
                    endpoint: None,
                    refusal,
                }
                .into());
            }
            HubMessage::Session { users, carrying } => {
                tracing::info!(?users, carrying, "session");
                self.session_info.send_modify(|s| {
                    s.users = users;
                    s.carrying = carrying;
                });
                let _ = self.dataplane.send(DpCommand::Carrying(carrying)).await;
            }
            HubMessage::DeviceWaiting {
                user,
                name,
                from,
                hostname,
            } => {
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
            HubMessage::Keepalive | HubMessage::ReportAck { .. } | HubMessage::UserReply { .. } => {
            }
        }
        Ok(())
    }
}
