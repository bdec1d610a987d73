//! `tasuki-spoke enrol` (and a child hub's enrolment at its parent, see
//! [`crate::uplink::enrol_hub`]): one Noise handshake keyed by the
//! invitation, with the hub's key pinned; stores identity, enrolment,
//! configuration and first key.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use tasuki_core::channel::{Channel, ChannelError, Initiator};
use tasuki_core::control::{
    Hello, HubMessage, KeyDelivery, Purpose, Refusal, RefusalCode, SpokeConfig, SpokeMessage,
};
use tasuki_core::hierarchy::ServedNets;
use tasuki_core::invitation::Invitation;
use tasuki_core::keys::StaticKey;
use tasuki_shell::frames::{write_frame, FrameReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::state::{Enrolment, SpokeStore};

const TIMEOUT: Duration = Duration::from_secs(15);

/// The hub said no: one sentence for the person ("the hub at HOST refused:
/// DETAIL"), the refusal kept for the code that decides what to do next.
#[derive(Debug)]
pub(crate) struct HubRefused {
    /// The hub's endpoint, when the refusal came on a connection to it.
    pub(crate) endpoint: Option<String>,
    /// What the hub sent.
    pub(crate) refusal: Refusal,
}

impl std::fmt::Display for HubRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.endpoint {
            Some(e) => write!(f, "the hub at {e} refused: {}", self.refusal.detail),
            None => write!(f, "the hub refused: {}", self.refusal.detail),
        }
    }
}

// No `source`: the detail is said once, not again as the cause.
impl std::error::Error for HubRefused {}

/// How the enrolment ended.
pub(crate) enum Outcome {
    /// Enrolled and holding keys.
    Active {
        name: String,
        address: Ipv4Net,
        epoch: u64,
    },
    /// Enrolled; an admin must approve.
    Pending { name: String },
}

/// What enrols: the first message of the enrolment says it.
pub(crate) enum EnrolAs {
    /// A device (perhaps another device of a user, who confirms it).
    Device {
        /// The user it is another device of.
        as_user: Option<String>,
    },
    /// A child hub, serving these subnets.
    Hub {
        /// What its branch serves.
        serves: ServedNets,
    },
}

impl EnrolAs {
    /// The enrolment's first message, from the machine named `hostname`.
    fn first_message(self, hostname: String) -> SpokeMessage {
        match self {
            Self::Device { as_user } => SpokeMessage::EnrolRequest { hostname, as_user },
            Self::Hub { serves } => SpokeMessage::EnrolHub { hostname, serves },
        }
    }

    /// What to do instead when the state directory is enrolled already.
    fn hint_when_enrolled(&self) -> &'static str {
        match self {
            Self::Device { .. } => "; use another --state-dir",
            Self::Hub { .. } => "; a hub joins one parent",
        }
    }
}

/// Explains a failed handshake in terms of what the user can check.
pub(crate) fn explain(err: ChannelError, endpoint: &str, fingerprint: &str) -> anyhow::Error {
    match err {
        ChannelError::Refused(r) if r.code == RefusalCode::HandshakeFailed => anyhow::anyhow!(
            "the hub at {endpoint} does not hold the pinned key {fingerprint}: \
             wrong hub, or an invitation for another hub"
        ),
        ChannelError::Refused(refusal) => anyhow::Error::new(HubRefused {
            endpoint: Some(endpoint.to_owned()),
            refusal,
        }),
        ChannelError::Handshake(_) => anyhow::anyhow!(
            "the hub at {endpoint} did not prove it holds the pinned key {fingerprint} \
             and the invitation secret: wrong hub, or a damaged invitation"
        ),
        other => anyhow::anyhow!("control channel to {endpoint}: {other}"),
    }
}

/// `tasuki-spoke enrol`: enrols this device (or child hub, as `what`
/// says) with the hub named in the invitation and stores what the hub
/// grants in `dir`.
pub(crate) async fn enrol(text: &str, dir: &Path, what: EnrolAs) -> Result<Outcome> {
    let invitation = read_invitation(text)?;
    let store = open_unenrolled(dir, what.hint_when_enrolled())?;
    let key = store.key_or_create()?;
    let mut link = HubLink::open(&invitation, &key).await?;
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    link.send(&what.first_message(hostname)).await?;

    // Once the hub answers with a configuration or "pending", it has enrolled
    // us: record that before anything else. If we crash before, the same key
    // may retry the same invitation.
    let enrolment = Enrolment {
        name: invitation.name,
        hub_endpoint: invitation.hub_endpoint,
        hub_key: invitation.hub_key,
    };
    await_outcome(&mut link, &store, &enrolment).await
}

/// The invitation in `text`, with a warning when this machine's clock says
/// it has expired.
fn read_invitation(text: &str) -> Result<Invitation> {
    let invitation = Invitation::decode(text)?;
    // The hub's clock decides whether the invitation is still valid (it
    // refuses an expired one); this machine's clock may be off by hours.
    let now = tasuki_shell::unix_now();
    if invitation.is_expired(now) {
        tracing::warn!(
            expired_secs_ago = now - invitation.expires_at,
            "by this machine's clock the invitation has expired; asking the hub anyway \
             (if this clock is right, ask the admin for a new invitation)"
        );
    }
    Ok(invitation)
}

/// The store in `dir`, refused (with `hint`) when it already belongs to
/// an enrolled spoke.
fn open_unenrolled(dir: &Path, hint: &str) -> Result<SpokeStore> {
    let store = SpokeStore::open(dir)?;
    if let Some(e) = store.enrolment()? {
        bail!(
            "{} is already enrolled as {:?} with the hub at {}{hint}",
            dir.display(),
            e.name,
            e.hub_endpoint
        );
    }
    Ok(store)
}

/// The hub's answers to the enrolment request, until it grants a key, says
/// "pending" or refuses; stores each grant as it comes.
async fn await_outcome(
    link: &mut HubLink,
    store: &SpokeStore,
    enrolment: &Enrolment,
) -> Result<Outcome> {
    let mut config = None;
    loop {
        match link.recv().await? {
            HubMessage::Welcome(c) => {
                store.save_enrolment(enrolment)?;
                store.save_config(&c)?;
                config = Some(c);
            }
            HubMessage::KeyDistribution(d) => {
                let c = config.context("the hub sent a key before the configuration")?;
                return take_first_key(link, store, c, &d).await;
            }
            HubMessage::Refused(r) if r.code == RefusalCode::Pending => {
                store.save_enrolment(enrolment)?;
                return Ok(Outcome::Pending {
                    name: enrolment.name.clone(),
                });
            }
            HubMessage::Refused(refusal) => {
                return Err(HubRefused {
                    endpoint: Some(enrolment.hub_endpoint.clone()),
                    refusal,
                }
                .into())
            }
            _ => {}
        }
    }
}

/// The first key epoch: stored, and its receipt told to the hub.
async fn take_first_key(
    link: &mut HubLink,
    store: &SpokeStore,
    config: SpokeConfig,
    delivery: &KeyDelivery,
) -> Result<Outcome> {
    let epoch = tasuki_core::rotation::open_delivery(config.spoke_id, delivery, &[])?;
    store.save_epoch(&tasuki_core::spoke_keys::HeldEpoch {
        epoch: epoch.clone(),
        lifetime: delivery.lifetime.clone(),
    })?;
    link.send(&SpokeMessage::KeyReceipt {
        epoch: epoch.number,
    })
    .await?;
    Ok(Outcome::Active {
        name: config.name,
        address: config.tunnel_addr,
        epoch: epoch.number,
    })
}

/// The Noise channel to the hub during enrolment.
struct HubLink {
    reader: FrameReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    channel: Channel,
}

impl HubLink {
    /// Connects to the invitation's hub over a channel keyed by the
    /// invitation, with the hub's key pinned.
    async fn open(invitation: &Invitation, key: &StaticKey) -> Result<Self> {
        // One hub, or the members of a hub cluster, tried in turn.
        let members = tasuki_shell::connect::endpoints(&invitation.hub_endpoint);
        let fingerprint = invitation.hub_key.fingerprint();
        let (stream, answered) = tasuki_shell::connect::connect_first(&members, 0, TIMEOUT)
            .await
            .context("cannot reach the hub")?;
        let endpoint = &members[answered];
        let _ = stream.set_nodelay(true);
        let (r, mut writer) = stream.into_split();
        let mut reader = FrameReader::new(r);
        let hello = Hello {
            version: tasuki_core::PROTOCOL_VERSION,
            invitation: Some(invitation.id),
        };
        let (init, first) = Initiator::start(
            Purpose::Enrol,
            key,
            &invitation.hub_key,
            Some(&invitation.secret),
            &hello,
        )?;
        write_frame(&mut writer, &first).await?;
        let reply = reader.next(TIMEOUT).await?.with_context(|| {
            format!(
                "the hub at {endpoint} closed the connection: it does not hold the pinned key {fingerprint}"
            )
        })?;
        let channel = init
            .finish(&reply)
            .map_err(|e| explain(e, endpoint, &fingerprint))?;
        Ok(Self {
            reader,
            writer,
            channel,
        })
    }

    /// Sends one message to the hub.
    async fn send(&mut self, msg: &SpokeMessage) -> Result<()> {
        write_frame(&mut self.writer, &self.channel.seal(msg)?).await
    }

    /// The hub's next message.
    async fn recv(&mut self) -> Result<HubMessage> {
        let body = self
            .reader
            .next(TIMEOUT)
            .await?
            .context("the hub closed the connection during enrolment")?;
        Ok(self.channel.open::<HubMessage>("hub message", &body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal reads as one sentence naming the hub, its detail said once
    /// and no internal code, also through anyhow's chain formatting.
    #[test]
    fn a_refusal_is_said_once() {
        let err = anyhow::Error::new(HubRefused {
            endpoint: Some("vpn.example.com:51820".into()),
            refusal: Refusal::new(
                RefusalCode::InvitationUsed,
                "that invitation was already used; ask the admin for a new one",
            ),
        });
        assert_eq!(
            format!("{err:#}"),
            "the hub at vpn.example.com:51820 refused: that invitation was already used; ask the admin for a new one"
        );
        let code = err.downcast_ref::<HubRefused>().map(|r| r.refusal.code);
        assert_eq!(code, Some(RefusalCode::InvitationUsed));
    }
}
