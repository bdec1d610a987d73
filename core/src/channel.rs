//! The Noise control channel between a spoke and the hub (snow).
//!
//! Wire format, all frames length-prefixed ([`crate::codec`]):
//!
//! 1. spoke → hub: `[purpose byte] ++ Noise message 1` (payload: [`Hello`])
//! 2. hub → spoke: `[0] ++ Noise message 2`, or `[1] ++ postcard(Refusal)`
//!    when the hub will not go on (that refusal is not authenticated, so the
//!    spoke only shows it; it never acts on it beyond giving up)
//! 3. then Noise transport messages, each one control message.
//!
//! Enrolment uses `Noise_IKpsk2` keyed by the invitation's one-time secret;
//! attach uses `Noise_IK`. Both pin the hub's static key. snow draws the
//! ephemeral keys from the OS RNG itself; everything else here is pure.

use serde::{de::DeserializeOwned, Serialize};
use snow::{HandshakeState, TransportState};

use crate::codec::{self, CodecError};
use crate::control::{Hello, Purpose, Refusal};
use crate::keys::{PublicKey, SecretKey, StaticKey};

const ENROL_PATTERN: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
const ATTACH_PATTERN: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
const PROLOGUE: &[u8] = b"tasuki control v1";
const STATUS_OK: u8 = 0;
const STATUS_REFUSED: u8 = 1;
/// Largest plaintext in one Noise transport message.
const MAX_PLAINTEXT: usize = codec::MAX_FRAME - 16;

/// Errors on the control channel. Any of them closes the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The first frame did not name a known purpose.
    #[error("unknown control purpose byte {0}")]
    UnknownPurpose(u8),
    /// A frame was empty where bytes were needed.
    #[error("empty handshake frame")]
    Empty,
    /// The Noise handshake failed (wrong pinned key, wrong secret, garbage).
    #[error("Noise handshake failed: {0}")]
    Handshake(snow::Error),
    /// A transport message failed to decrypt: the channel must close.
    #[error("control message failed to decrypt")]
    Decrypt,
    /// The hub refused and said why.
    #[error("the hub refused: {0}")]
    Refused(Refusal),
    /// A message did not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The peer's static key was not available after the handshake.
    #[error("peer sent no static key")]
    NoRemoteStatic,
}

fn params(purpose: Purpose) -> snow::params::NoiseParams {
    let name = match purpose {
        Purpose::Enrol => ENROL_PATTERN,
        Purpose::Attach => ATTACH_PATTERN,
    };
    // The two pattern names are constants that snow parses.
    name.parse()
        .unwrap_or_else(|_| unreachable!("valid Noise pattern"))
}

fn prologue(purpose: Purpose) -> Vec<u8> {
    let mut p = PROLOGUE.to_vec();
    p.push(purpose as u8);
    p
}

/// The spoke's side of a handshake in progress.
pub struct Initiator {
    hs: HandshakeState,
}

impl Initiator {
    /// Starts a handshake; returns the state and the first frame's body.
    ///
    /// `psk` is the invitation secret for [`Purpose::Enrol`], `None` for attach.
    pub fn start(
        purpose: Purpose,
        own: &StaticKey,
        hub: &PublicKey,
        psk: Option<&SecretKey>,
        hello: &Hello,
    ) -> Result<(Self, Vec<u8>), ChannelError> {
        let secret = own.secret_bytes();
        let prologue = prologue(purpose);
        let mut builder = snow::Builder::new(params(purpose))
            .local_private_key(secret.as_ref())
            .and_then(|b| b.remote_public_key(&hub.0))
            .and_then(|b| b.prologue(&prologue))
            .map_err(ChannelError::Handshake)?;
        if let Some(psk) = psk {
            builder = builder
                .psk(2, psk.expose())
                .map_err(ChannelError::Handshake)?;
        }
        let mut hs = builder.build_initiator().map_err(ChannelError::Handshake)?;
        let payload = codec::to_bytes(hello)?;
        let mut buf = vec![0u8; codec::MAX_FRAME];
        let n = hs
            .write_message(&payload, &mut buf)
            .map_err(ChannelError::Handshake)?;
        let mut body = Vec::with_capacity(n + 1);
        body.push(purpose as u8);
        body.extend_from_slice(&buf[..n]);
        Ok((Self { hs }, body))
    }

    /// Reads the hub's reply and turns the handshake into a channel.
    pub fn finish(mut self, reply: &[u8]) -> Result<Channel, ChannelError> {
        let (&status, rest) = reply.split_first().ok_or(ChannelError::Empty)?;
        match status {
            STATUS_OK => {
                let mut payload = vec![0u8; codec::MAX_FRAME];
                self.hs
                    .read_message(rest, &mut payload)
                    .map_err(ChannelError::Handshake)?;
                Channel::from_handshake(self.hs)
            }
            STATUS_REFUSED => Err(ChannelError::Refused(codec::from_bytes("refusal", rest)?)),
            other => Err(ChannelError::UnknownPurpose(other)),
        }
    }
}

/// The hub's side after reading the first message: who is asking, and for what.
pub struct Accepting {
    hs: HandshakeState,
    /// Why the spoke connected.
    pub purpose: Purpose,
    /// The spoke's first-message payload.
    pub hello: Hello,
    /// The spoke's static public key (authenticated by the `ss` exchange).
    pub remote: PublicKey,
}

impl Accepting {
    /// Reads the spoke's first frame with the hub's static key.
    pub fn read(own: &StaticKey, first: &[u8]) -> Result<Self, ChannelError> {
        let (&byte, msg) = first.split_first().ok_or(ChannelError::Empty)?;
        let purpose = Purpose::from_byte(byte).ok_or(ChannelError::UnknownPurpose(byte))?;
        let secret = own.secret_bytes();
        let prologue = prologue(purpose);
        let mut hs = snow::Builder::new(params(purpose))
            .local_private_key(secret.as_ref())
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_responder())
            .map_err(ChannelError::Handshake)?;
        let mut payload = vec![0u8; codec::MAX_FRAME];
        let n = hs
            .read_message(msg, &mut payload)
            .map_err(ChannelError::Handshake)?;
        let hello = codec::from_bytes("hello", &payload[..n])?;
        let remote = hs
            .get_remote_static()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .map(PublicKey)
            .ok_or(ChannelError::NoRemoteStatic)?;
        Ok(Self {
            hs,
            purpose,
            hello,
            remote,
        })
    }

    /// Completes the handshake; `psk` is the invitation secret for enrolment.
    /// Returns the channel and the reply frame's body.
    pub fn complete(mut self, psk: Option<&SecretKey>) -> Result<(Channel, Vec<u8>), ChannelError> {
        if let Some(psk) = psk {
            self.hs
                .set_psk(2, psk.expose())
                .map_err(ChannelError::Handshake)?;
        }
        let mut buf = vec![0u8; codec::MAX_FRAME];
        let n = self
            .hs
            .write_message(&[], &mut buf)
            .map_err(ChannelError::Handshake)?;
        let mut body = Vec::with_capacity(n + 1);
        body.push(STATUS_OK);
        body.extend_from_slice(&buf[..n]);
        Ok((Channel::from_handshake(self.hs)?, body))
    }
}

/// The reply body that refuses a spoke before the handshake completes.
pub fn refusal_reply(refusal: &Refusal) -> Vec<u8> {
    let mut body = vec![STATUS_REFUSED];
    body.extend(codec::to_bytes(refusal).unwrap_or_default());
    body
}

/// An established control channel: seals and opens control messages.
pub struct Channel {
    transport: TransportState,
    remote: PublicKey,
}

impl Channel {
    fn from_handshake(hs: HandshakeState) -> Result<Self, ChannelError> {
        let transport = hs.into_transport_mode().map_err(ChannelError::Handshake)?;
        let remote = transport
            .get_remote_static()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .map(PublicKey)
            .ok_or(ChannelError::NoRemoteStatic)?;
        Ok(Self { transport, remote })
    }

    /// The peer's static key.
    pub fn remote(&self) -> PublicKey {
        self.remote
    }

    /// Encrypts one message into a frame body.
    pub fn seal<T: Serialize>(&mut self, msg: &T) -> Result<Vec<u8>, ChannelError> {
        let plain = zeroize::Zeroizing::new(codec::to_bytes(msg)?);
        if plain.len() > MAX_PLAINTEXT {
            return Err(CodecError::MessageTooLarge(plain.len()).into());
        }
        let mut out = vec![0u8; plain.len() + 16];
        let n = self
            .transport
            .write_message(&plain, &mut out)
            .map_err(ChannelError::Handshake)?;
        out.truncate(n);
        Ok(out)
    }

    /// Decrypts one frame body into a message. Any error means: close.
    pub fn open<T: DeserializeOwned>(
        &mut self,
        what: &'static str,
        body: &[u8],
    ) -> Result<T, ChannelError> {
        let mut plain = zeroize::Zeroizing::new(vec![0u8; body.len()]);
        let n = self
            .transport
            .read_message(body, &mut plain)
            .map_err(|_| ChannelError::Decrypt)?;
        Ok(codec::from_bytes(what, &plain[..n])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{HubMessage, RefusalCode, SpokeMessage};
    use crate::invitation::InvitationId;
    use rand::{rngs::StdRng, SeedableRng};

    fn keys() -> (StaticKey, StaticKey, SecretKey) {
        let mut rng = StdRng::seed_from_u64(3);
        (
            StaticKey::generate(&mut rng),
            StaticKey::generate(&mut rng),
            SecretKey::generate(&mut rng),
        )
    }

    fn hello(inv: Option<InvitationId>) -> Hello {
        Hello {
            version: crate::PROTOCOL_VERSION,
            invitation: inv,
        }
    }

    #[test]
    fn enrol_handshake_and_messages() {
        let (hub, spoke, psk) = keys();
        let id = InvitationId([5; 16]);
        let (init, first) = Initiator::start(
            Purpose::Enrol,
            &spoke,
            &hub.public(),
            Some(&psk),
            &hello(Some(id)),
        )
        .unwrap();
        let acc = Accepting::read(&hub, &first).unwrap();
        assert_eq!(acc.purpose, Purpose::Enrol);
        assert_eq!(acc.hello.invitation, Some(id));
        assert_eq!(acc.remote, spoke.public());
        let (mut hub_ch, reply) = acc.complete(Some(&psk)).unwrap();
        let mut spoke_ch = init.finish(&reply).unwrap();
        assert_eq!(spoke_ch.remote(), hub.public());

        let sealed = spoke_ch.seal(&SpokeMessage::Attach).unwrap();
        assert_eq!(
            hub_ch.open::<SpokeMessage>("m", &sealed).unwrap(),
            SpokeMessage::Attach
        );
        let sealed = hub_ch.seal(&HubMessage::Keepalive).unwrap();
        assert_eq!(
            spoke_ch.open::<HubMessage>("m", &sealed).unwrap(),
            HubMessage::Keepalive
        );
        // Replaying a message fails to decrypt.
        assert!(matches!(
            spoke_ch.open::<HubMessage>("m", &sealed),
            Err(ChannelError::Decrypt)
        ));
    }

    #[test]
    fn wrong_psk_fails_at_the_spoke() {
        let (hub, spoke, psk) = keys();
        let (init, first) = Initiator::start(
            Purpose::Enrol,
            &spoke,
            &hub.public(),
            Some(&psk),
            &hello(None),
        )
        .unwrap();
        let acc = Accepting::read(&hub, &first).unwrap();
        let (_, reply) = acc.complete(Some(&SecretKey::from_bytes([0; 32]))).unwrap();
        assert!(matches!(
            init.finish(&reply),
            Err(ChannelError::Handshake(_))
        ));
    }

    #[test]
    fn wrong_pinned_key_fails_at_the_hub() {
        let (hub, spoke, _) = keys();
        let impostor = StaticKey::generate(&mut StdRng::seed_from_u64(99));
        let (_, first) = Initiator::start(
            Purpose::Attach,
            &spoke,
            &impostor.public(),
            None,
            &hello(None),
        )
        .unwrap();
        assert!(matches!(
            Accepting::read(&hub, &first),
            Err(ChannelError::Handshake(_))
        ));
    }

    #[test]
    fn refusal_reaches_the_spoke() {
        let (hub, spoke, _) = keys();
        let (init, _) =
            Initiator::start(Purpose::Attach, &spoke, &hub.public(), None, &hello(None)).unwrap();
        let reply = refusal_reply(&Refusal::new(RefusalCode::Revoked, "gone"));
        match init.finish(&reply) {
            Err(ChannelError::Refused(r)) => assert_eq!(r.code, RefusalCode::Revoked),
            other => panic!("unexpected {:?}", other.err()),
        }
    }

    #[test]
    fn garbage_first_frames_are_errors() {
        let (hub, _, _) = keys();
        assert!(matches!(
            Accepting::read(&hub, &[]),
            Err(ChannelError::Empty)
        ));
        assert!(matches!(
            Accepting::read(&hub, &[9, 1, 2]),
            Err(ChannelError::UnknownPurpose(9))
        ));
        assert!(Accepting::read(&hub, &[1; 200]).is_err());
        assert!(Accepting::read(&hub, &[2]).is_err());
    }
}
