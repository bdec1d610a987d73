//! The spoke's side of an attached control session, without I/O: what to
//! send, store and tell the data plane for each message from the hub, each
//! report of the data plane and each tick of the clock.
//!
//! The daemon owns the Noise channel, the store and the data plane; it
//! feeds this machine what arrives and carries out [`SessionAction`]s in
//! order. Two actions need an answer before the session goes on: a key is
//! acknowledged only after [`SpokeSession::epoch_stored`] says it is on
//! disk, and a configuration is in effect only after
//! [`SpokeSession::config_saved`]. Time is any monotonic clock in seconds.

use std::collections::{BTreeSet, VecDeque};

use crate::control::{
    DeviceWaiting, HubMessage, HubPair, Refusal, RefusalCode, SessionFacts, SpokeConfig,
    SpokeMessage, UserReply, UserRequest,
};
use crate::keys::KeyEpoch;
use crate::rotation::{receive_delivery, Received, RESEND_SECS};
use crate::seal::SealError;
use crate::spoke_keys::HeldEpoch;

/// Seconds of silence from the spoke before it sends a keepalive.
pub const KEEPALIVE_SECS: u64 = 20;
/// Seconds of silence from the hub before the session is given up.
pub const IDLE_SECS: u64 = 60;

/// What the spoke's data plane reports for the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlaneReport {
    /// This epoch now carries traffic (update report).
    Confirmed(u64),
    /// The current epoch is over and the spoke may not move on alone (update request).
    RequestUpdate,
    /// A hard limit stopped traffic (distribution request).
    NeedKeys,
}

/// What the session asks of the spoke's data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlaneCommand {
    /// A delivered epoch, stored and about to be acknowledged.
    Hold(HeldEpoch),
    /// Update notification: switch to this epoch now.
    SwitchTo(u64),
    /// Start a fresh handshake (the hub may have restarted and lost its session).
    Rehandshake,
    /// Whether the hub carries this spoke's traffic (a user is logged in).
    Carrying(bool),
}

/// One thing for the daemon to do, in the order they come.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionAction {
    /// Seal and send this message.
    Send(SpokeMessage),
    /// Store this configuration, then call [`SpokeSession::config_saved`].
    /// `changed` is true when it replaces another one (a restart applies it).
    SaveConfig {
        /// The configuration.
        config: SpokeConfig,
        /// Whether an older one was in effect.
        changed: bool,
    },
    /// Store this epoch durably, then call [`SpokeSession::epoch_stored`].
    StoreEpoch(HeldEpoch),
    /// Hand this to the data plane.
    Plane(PlaneCommand),
    /// The answer to the user request [`SpokeSession::call`] numbered `id`.
    Reply {
        /// The request's number.
        id: u32,
        /// The hub's answer.
        result: Result<UserReply, crate::api_error::ApiError>,
    },
    /// Who is logged in here and whether the hub carries traffic, for `status`.
    Session(SessionFacts),
    /// A new device of a user logged in here waits for their confirmation.
    DeviceWaiting(DeviceWaiting),
    /// A direct-mode message, for the spoke's pairs ([`crate::spoke_pairs`]).
    Pair(HubPair),
    /// A keyed group's message, for the spoke's groups ([`crate::spoke_groups`]).
    Group(crate::control::HubGroup),
    /// What waits for the approval of a user logged in here.
    ApprovalsWaiting(crate::requests::ApprovalsWaiting),
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    /// The hub refused this spoke; [`after_refusal`] says what to do next.
    #[error("the hub refused: {0}")]
    Refused(Refusal),
    /// Nothing came from the hub for [`IDLE_SECS`].
    #[error("nothing heard from the hub for {IDLE_SECS} s")]
    Idle,
    /// A key arrived before the configuration that names the link.
    #[error("a key arrived before this spoke's configuration")]
    KeyBeforeConfig,
    /// A delivered key could not be opened with the epochs held here.
    #[error("cannot open the delivered key of epoch {epoch}: {source}")]
    Delivery {
        /// The epoch delivered.
        epoch: u64,
        /// Why it did not open.
        source: SealError,
    },
}

/// What the daemon does after a refusal, before it attaches again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterRefusal {
    /// Waiting for an admin or the owner: ask again soon, without backing off.
    RetrySoon,
    /// Cut off for good: erase every key held and stop the data plane, then back off.
    EraseKeys,
    /// Anything else: back off and try again.
    BackOff,
}

/// The spoke's rule for a refusal.
pub fn after_refusal(code: RefusalCode) -> AfterRefusal {
    match code {
        RefusalCode::Pending => AfterRefusal::RetrySoon,
        RefusalCode::Revoked => AfterRefusal::EraseKeys,
        _ => AfterRefusal::BackOff,
    }
}

/// What the spoke holds now, as its store says.
#[derive(Clone, Copy, Debug)]
pub struct Holding<'a> {
    /// The epochs stored and not erased.
    pub epochs: &'a [KeyEpoch],
    /// The epoch carrying traffic.
    pub current: u64,
}

/// One attached control session of a spoke.
#[derive(Debug)]
pub struct SpokeSession {
    config: Option<SpokeConfig>,
    /// A configuration waiting for [`Self::config_saved`].
    saving: Option<SpokeConfig>,
    /// An epoch waiting for [`Self::epoch_stored`].
    storing: Option<HeldEpoch>,
    /// The update report the hub has not acknowledged, and when it went.
    report: Option<(u64, u64)>,
    calls: BTreeSet<u32>,
    next_call: u32,
    last_sent: u64,
    last_heard: u64,
    actions: VecDeque<SessionAction>,
}

impl SpokeSession {
    /// A session that starts now, with the configuration stored here (if
    /// any): it asks to attach and for a fresh data-plane handshake.
    pub fn new(now: u64, config: Option<SpokeConfig>) -> Self {
        let mut s = Self {
            config,
            saving: None,
            storing: None,
            report: None,
            calls: BTreeSet::new(),
            next_call: 0,
            last_sent: now,
            last_heard: now,
            actions: VecDeque::new(),
        };
        s.send(now, SpokeMessage::Attach);
        s.actions
            .push_back(SessionAction::Plane(PlaneCommand::Rehandshake));
        s
    }

    /// The configuration in effect.
    pub fn config(&self) -> Option<&SpokeConfig> {
        self.config.as_ref()
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<SessionAction> {
        self.actions.pop_front()
    }

    /// When [`Self::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> u64 {
        let mut at = (self.last_sent + KEEPALIVE_SECS).min(self.last_heard + IDLE_SECS);
        if let Some((_, sent)) = self.report {
            at = at.min(sent + RESEND_SECS);
        }
        at
    }

    fn send(&mut self, now: u64, msg: SpokeMessage) {
        self.last_sent = now;
        self.actions.push_back(SessionAction::Send(msg));
    }

    /// Sends a message the session has no rule for (direct mode's, from
    /// [`crate::spoke_pairs`]).
    pub fn send_other(&mut self, now: u64, msg: SpokeMessage) {
        self.send(now, msg);
    }

    /// A user's request from the local socket; returns the number its
    /// [`SessionAction::Reply`] will carry.
    pub fn call(&mut self, now: u64, request: UserRequest) -> u32 {
        self.next_call = self.next_call.wrapping_add(1);
        let id = self.next_call;
        self.calls.insert(id);
        self.send(now, SpokeMessage::User { id, request });
        id
    }

    /// The requests still waiting for the hub's answer (they fail when the
    /// session ends).
    pub fn waiting_calls(&self) -> impl Iterator<Item = u32> + '_ {
        self.calls.iter().copied()
    }

    /// A report of the data plane.
    pub fn handle_report(&mut self, now: u64, report: PlaneReport) {
        let msg = match report {
            PlaneReport::Confirmed(epoch) => {
                self.report = Some((epoch, now));
                SpokeMessage::UpdateReport { epoch }
            }
            PlaneReport::RequestUpdate => SpokeMessage::UpdateRequest {
                reason: "lifetime-over".into(),
            },
            PlaneReport::NeedKeys => SpokeMessage::DistributionRequest,
        };
        self.send(now, msg);
    }

    /// Keepalives, the unacknowledged update report, and the idle limit.
    pub fn handle_timeout(&mut self, now: u64) -> Result<(), SessionEnd> {
        if now >= self.last_heard + IDLE_SECS {
            return Err(SessionEnd::Idle);
        }
        if let Some((epoch, sent)) = self.report {
            if now >= sent + RESEND_SECS {
                self.report = Some((epoch, now));
                self.send(now, SpokeMessage::UpdateReport { epoch });
            }
        }
        if now >= self.last_sent + KEEPALIVE_SECS {
            self.send(now, SpokeMessage::Keepalive);
        }
        Ok(())
    }

    /// A message from the hub; `holding` is what the store holds now.
    pub fn handle_message(
        &mut self,
        now: u64,
        msg: HubMessage,
        holding: Holding<'_>,
    ) -> Result<(), SessionEnd> {
        self.last_heard = now;
        match msg {
            HubMessage::Welcome(config) => {
                if self.config.as_ref() != Some(&config) {
                    let changed = self.config.is_some();
                    self.saving = Some(config.clone());
                    self.actions
                        .push_back(SessionAction::SaveConfig { config, changed });
                }
            }
            HubMessage::KeyDistribution(delivery) => {
                let link = self
                    .config
                    .as_ref()
                    .map(|c| c.spoke_id)
                    .ok_or(SessionEnd::KeyBeforeConfig)?;
                let received = receive_delivery(link, &delivery, holding.epochs, holding.current)
                    .map_err(|source| SessionEnd::Delivery {
                    epoch: delivery.epoch,
                    source,
                })?;
                match received {
                    // A re-delivery (the hub lost our receipt): acknowledge again.
                    Received::Again => self.send(
                        now,
                        SpokeMessage::KeyReceipt {
                            epoch: delivery.epoch,
                        },
                    ),
                    Received::New(epoch) => {
                        let held = HeldEpoch {
                            epoch,
                            lifetime: delivery.lifetime,
                        };
                        // Durable before acknowledged or used.
                        self.storing = Some(held.clone());
                        self.actions.push_back(SessionAction::StoreEpoch(held));
                    }
                }
            }
            HubMessage::UpdateNotification { epoch } => self
                .actions
                .push_back(SessionAction::Plane(PlaneCommand::SwitchTo(epoch))),
            HubMessage::ReportAck { epoch } => {
                if self.report.is_some_and(|(e, _)| e <= epoch) {
                    self.report = None;
                }
            }
            HubMessage::UserReply { id, result } => {
                if self.calls.remove(&id) {
                    self.actions.push_back(SessionAction::Reply { id, result });
                }
            }
            HubMessage::Session(facts) => {
                let carrying = facts.carrying;
                self.actions.push_back(SessionAction::Session(facts));
                self.actions
                    .push_back(SessionAction::Plane(PlaneCommand::Carrying(carrying)));
            }
            HubMessage::DeviceWaiting(device) => {
                self.actions.push_back(SessionAction::DeviceWaiting(device))
            }
            HubMessage::Refused(refusal) => return Err(SessionEnd::Refused(refusal)),
            HubMessage::Keepalive => {}
            HubMessage::Pair(pair) => self.actions.push_back(SessionAction::Pair(pair)),
            HubMessage::Group(group) => self.actions.push_back(SessionAction::Group(group)),
            HubMessage::ApprovalsWaiting(w) => {
                self.actions.push_back(SessionAction::ApprovalsWaiting(w))
            }
        }
        Ok(())
    }

    /// Whether the epoch of the last [`SessionAction::StoreEpoch`] is on
    /// disk. Only then does the data plane get it and the hub hear of it;
    /// otherwise the hub delivers it again and the spoke tries again.
    pub fn epoch_stored(&mut self, now: u64, number: u64, stored: bool) {
        let Some(held) = self.storing.take_if(|h| h.epoch.number == number) else {
            return;
        };
        if stored {
            self.actions
                .push_back(SessionAction::Plane(PlaneCommand::Hold(held)));
            self.send(now, SpokeMessage::KeyReceipt { epoch: number });
        }
    }

    /// Whether the configuration of the last [`SessionAction::SaveConfig`]
    /// is stored; only then is it in effect (else the next welcome tries again).
    pub fn config_saved(&mut self, saved: bool) {
        if let Some(config) = self.saving.take() {
            if saved {
                self.config = Some(config);
            }
        }
    }
}

#[cfg(test)]
#[path = "spoke_session_tests.rs"]
mod tests;
