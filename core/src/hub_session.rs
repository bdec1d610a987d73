//! The hub's side of one control connection, without I/O: which exchange
//! a spoke may start, the order of an enrolment and an attach, and what each
//! message of an attached spoke asks for.
//!
//! The daemon owns the channel and the hub's state. It asks [`accept`]
//! whether to take the connection, feeds the session each message, carries
//! out the [`HubAction`]s in order, and hands back the state's answers
//! ([`HubSession::enrolled`], [`HubSession::attached`], [`HubSession::answer`]).

use std::collections::VecDeque;

use crate::control::{
    Hello, HubMessage, KeyDelivery, Purpose, Refusal, RefusalCode, SpokeConfig, SpokeMessage,
    SpokePair, UserRequest,
};
use crate::invitation::InvitationId;
use crate::rotation::Trigger;

/// The exchange a connection is for, once accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exchange {
    /// A new spoke enrolling with this invitation.
    Enrol(InvitationId),
    /// An enrolled spoke attaching again.
    Attach,
}

/// Whether the hub takes a connection that says `hello` for `purpose`:
/// the same protocol version, and an invitation for an enrolment.
pub fn accept(purpose: Purpose, hello: &Hello) -> Result<Exchange, Refusal> {
    if hello.version != crate::PROTOCOL_VERSION {
        return Err(Refusal::new(
            RefusalCode::VersionMismatch,
            format!(
                "protocol version {} is not supported (hub speaks {})",
                hello.version,
                crate::PROTOCOL_VERSION
            ),
        ));
    }
    match (purpose, &hello.invitation) {
        (Purpose::Enrol, Some(id)) => Ok(Exchange::Enrol(*id)),
        (Purpose::Enrol, None) => Err(Refusal::new(
            RefusalCode::ProtocolViolation,
            "enrolment without an invitation",
        )),
        (Purpose::Attach, _) => Ok(Exchange::Attach),
    }
}

/// One thing for the daemon to do, in the order they come.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubAction {
    /// Seal and send this message.
    Send(HubMessage),
    /// Enrol the spoke (then [`HubSession::enrolled`]).
    Enrol {
        /// Its host name.
        hostname: String,
        /// The user it enrols for as another device.
        as_user: Option<String>,
        /// For a child hub: what its branch serves.
        serves: Option<crate::hierarchy::ServedNets>,
    },
    /// Attach the spoke (then [`HubSession::attached`]).
    Attach,
    /// Receipt report: the spoke stored this epoch (then send what the
    /// state answers, an update notification, with [`HubSession::send`]).
    Receipt(u64),
    /// Update report: this epoch carries the spoke's traffic (acknowledged already).
    Report(u64),
    /// A user's request (then [`HubSession::answer`]).
    User {
        /// The request's number, for the answer.
        id: u32,
        /// The request.
        request: UserRequest,
    },
    /// Distribution request: send what the spoke should hold.
    Distribute,
    /// Update request: rotate the spoke's link.
    Rotate(Trigger),
    /// Direct mode: a pair request or report, for the hub's pairs.
    Pair(SpokePair),
    /// Keyed groups: a member's receipt or switch report.
    Group(crate::control::SpokeGroup),
    /// A child hub's branch serves these subnets now.
    Serves(crate::hierarchy::ServedNets),
    /// The exchange is over: close the connection.
    Close,
}

/// Local addresses of a spoke the hub keeps as candidates (more are ignored).
pub const MAX_LOCAL_ADDRS: usize = 8;
/// Pairs one report may name (more than a spoke may hold are ignored).
pub const MAX_PAIRS_REPORTED: usize = 256;

/// A spoke's direct-mode message cut to the bounds the hub keeps.
fn bounded(mut pair: SpokePair) -> SpokePair {
    match &mut pair {
        SpokePair::Facts(facts) => {
            facts.local.truncate(MAX_LOCAL_ADDRS);
            facts.pairs.truncate(MAX_PAIRS_REPORTED);
        }
        SpokePair::Used(pairs) => pairs.truncate(MAX_PAIRS_REPORTED),
        SpokePair::Usage(usage) => usage.truncate(MAX_PAIRS_REPORTED),
        _ => {}
    }
    pair
}

/// What came of an enrolment in the hub's state.
#[derive(Clone, Debug)]
pub enum Enrolled {
    /// Enrolled: the configuration, and its first key unless it waits for approval.
    Done {
        /// The spoke's configuration.
        config: Box<SpokeConfig>,
        /// The first epoch, when it may carry traffic at once.
        first_key: Option<KeyDelivery>,
    },
    /// Refused (a used invitation, say).
    Refused(Refusal),
    /// Nothing was stored (the disk is full): the spoke may try again.
    NotStored,
}

/// A message the session does not take where it is.
#[derive(Debug, thiserror::Error)]
#[error("unexpected {got} {during}")]
pub struct Violation {
    /// What came.
    pub got: String,
    /// Where the exchange was.
    pub during: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    EnrolRequest,
    Enrolling,
    EnrolReceipt,
    AttachRequest,
    Attaching,
    Attached,
    Closed,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::EnrolRequest => "before the enrolment request",
            Phase::Enrolling => "while enrolling",
            Phase::EnrolReceipt => "before the first key's receipt",
            Phase::AttachRequest => "before the attach request",
            Phase::Attaching => "while attaching",
            Phase::Attached => "from an attached spoke",
            Phase::Closed => "after the end",
        }
    }
}

/// One control connection of the hub after its Noise handshake.
#[derive(Debug)]
pub struct HubSession {
    phase: Phase,
    actions: VecDeque<HubAction>,
}

impl HubSession {
    /// The session of an accepted exchange.
    pub fn new(exchange: &Exchange) -> Self {
        let phase = match exchange {
            Exchange::Enrol(_) => Phase::EnrolRequest,
            Exchange::Attach => Phase::AttachRequest,
        };
        Self {
            phase,
            actions: VecDeque::new(),
        }
    }

    /// Whether the spoke is attached (its traffic and key messages flow).
    pub fn is_attached(&self) -> bool {
        self.phase == Phase::Attached
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<HubAction> {
        self.actions.pop_front()
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.actions.push_back(HubAction::Close);
    }

    /// Sends a message; a refusal ends the session after it.
    pub fn send(&mut self, msg: HubMessage) {
        if self.phase == Phase::Closed {
            return;
        }
        let refused = matches!(msg, HubMessage::Refused(_));
        self.actions.push_back(HubAction::Send(msg));
        if refused {
            self.close();
        }
    }

    /// A message from the spoke.
    pub fn handle(&mut self, msg: SpokeMessage) -> Result<(), Violation> {
        let during = self.phase.name();
        let action = match (self.phase, msg) {
            (Phase::EnrolRequest, SpokeMessage::EnrolRequest { hostname, as_user }) => {
                self.phase = Phase::Enrolling;
                HubAction::Enrol {
                    hostname,
                    as_user,
                    serves: None,
                }
            }
            (Phase::EnrolRequest, SpokeMessage::EnrolHub { hostname, serves }) => {
                self.phase = Phase::Enrolling;
                HubAction::Enrol {
                    hostname,
                    as_user: None,
                    serves: Some(serves),
                }
            }
            (Phase::EnrolReceipt, SpokeMessage::KeyReceipt { epoch }) => {
                // The spoke closes after enrolment; it switches when it attaches.
                self.actions.push_back(HubAction::Receipt(epoch));
                self.close();
                return Ok(());
            }
            (Phase::AttachRequest, SpokeMessage::Attach) => {
                self.phase = Phase::Attaching;
                HubAction::Attach
            }
            (Phase::Attached, msg) => match msg {
                SpokeMessage::Keepalive => HubAction::Send(HubMessage::Keepalive),
                SpokeMessage::KeyReceipt { epoch } => HubAction::Receipt(epoch),
                SpokeMessage::UpdateReport { epoch } => {
                    self.send(HubMessage::ReportAck { epoch });
                    HubAction::Report(epoch)
                }
                SpokeMessage::User { id, request } => HubAction::User { id, request },
                SpokeMessage::DistributionRequest => HubAction::Distribute,
                SpokeMessage::UpdateRequest { reason } => {
                    HubAction::Rotate(Trigger::SpokeRequest(reason))
                }
                SpokeMessage::Pair(pair) => HubAction::Pair(bounded(pair)),
                SpokeMessage::Group(group) => HubAction::Group(group),
                SpokeMessage::Serves(nets) => HubAction::Serves(nets),
                other => return Err(self.violation(&other, during)),
            },
            (_, other) => return Err(self.violation(&other, during)),
        };
        self.actions.push_back(action);
        Ok(())
    }

    fn violation(&mut self, got: &SpokeMessage, during: &'static str) -> Violation {
        self.phase = Phase::Closed;
        let got = format!("{got:?}");
        let got = got.split([' ', '(', '{']).next().unwrap_or_default().into();
        Violation { got, during }
    }

    /// The state's answer to [`HubAction::Enrol`]: welcome and first key, or
    /// the reason it waits or is refused.
    pub fn enrolled(&mut self, outcome: Enrolled) {
        match outcome {
            Enrolled::Done { config, first_key } => {
                self.send(HubMessage::Welcome(*config));
                match first_key {
                    Some(delivery) => {
                        self.phase = Phase::EnrolReceipt;
                        self.send(HubMessage::KeyDistribution(delivery));
                    }
                    None => self.send(HubMessage::Refused(Refusal::new(
                        RefusalCode::Pending,
                        "enrolled; this spoke waits for an admin's approval",
                    ))),
                }
            }
            Enrolled::Refused(refusal) => self.send(HubMessage::Refused(refusal)),
            Enrolled::NotStored => self.send(HubMessage::Refused(Refusal::new(
                RefusalCode::Internal,
                "the hub could not store this enrolment; nothing was kept, try again later",
            ))),
        }
    }

    /// The state's answer to [`HubAction::Attach`]: the configuration, what
    /// the spoke still needs to hear (deliveries, a notification, who is
    /// logged in), or `None` when no first key could be stored.
    pub fn attached(&mut self, answer: Option<(SpokeConfig, Vec<HubMessage>)>) {
        let Some((config, pending)) = answer else {
            self.send(HubMessage::Refused(Refusal::new(
                RefusalCode::Internal,
                "the hub could not store a key for this spoke; try again later",
            )));
            return;
        };
        self.phase = Phase::Attached;
        self.send(HubMessage::Welcome(config));
        for msg in pending {
            self.send(msg);
        }
    }

    /// The answer to a user's request numbered `id`.
    pub fn answer(
        &mut self,
        id: u32,
        result: Result<crate::control::UserReply, crate::api_error::ApiError>,
    ) {
        self.send(HubMessage::UserReply { id, result });
    }
}

#[cfg(test)]
#[path = "hub_session_tests.rs"]
mod tests;
