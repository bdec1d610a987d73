//! Group multicast (claim 11's members-only bulletin board; what mDNS,
//! SSDP and service discovery need): a keyed group may own multicast
//! ranges, and a packet a member sends into one reaches every other member
//! and nobody else, sealed end to end under the group's epoch.
//!
//! The sender seals the whole multicast packet into an *envelope*: an IPv4
//! packet from its tunnel address to the same multicast address, of IP
//! protocol 253 (RFC 3692's experimental number, never a real protocol on
//! a tunnel), carrying the group's tag, the epoch, a counter and the
//! packet sealed with XChaCha20-Poly1305 under the group's multicast key
//! ([`crate::group_keys::multicast_key`]). Copies go straight to members
//! on a direct path (their addresses listed in the envelope, so the hub
//! skips them) and one goes to the hub, which fans it out to the other
//! members online ([`Fanout`]). A receiver ([`Membership`]) opens it with
//! the epoch it names, refuses a replayed counter (so a copy that came
//! both ways reaches the TUN once) and checks the sealed packet's
//! addresses against the envelope's.
//!
//! Layout after the 20-byte IPv4 header: version (1), skip count n (1),
//! n skipped member addresses (4 each), group tag (8), epoch (8), counter
//! (8), sender boot nonce (12), sealed packet and its tag (16). The nonce is
//! the sender's address, its boot nonce and the counter: unique for every
//! packet a sender seals under one key, across restarts too.

use std::net::Ipv4Addr;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};

use crate::keys::SecretKey;
use crate::routing::DropReason;

mod fanout;
mod member;
mod replay;
pub use fanout::{Fanout, FanoutGroup};
pub use member::{MemberGroup, Membership, Outgoing};
pub use replay::{RateBucket, ReplayWindow};

/// The IP protocol number of an envelope.
pub const ENVELOPE_PROTOCOL: u8 = 253;
/// Most members a sender lists as reached directly (the rest go through
/// the hub, and a duplicate is refused by the receiver's replay window).
pub const MAX_SKIP: usize = 16;
/// Multicast packets per second a member may send into one group unless
/// the admin sets another rate; each is copied to every other member.
pub const DEFAULT_RATE_PPS: u32 = 2_000;
const VERSION: u8 = 1;
const IPV4_HEADER: usize = 20;
/// Where the first member reached directly is listed in an envelope.
pub const SKIP_AT: usize = IPV4_HEADER + 2;
const AEAD_TAG: usize = 16;
/// Group tag, epoch, counter and boot nonce.
const FIXED: usize = 8 + 8 + 8 + 12;

/// The first 8 bytes of a group name's SHA-256: which group an envelope
/// belongs to, without naming it on the wire.
pub type GroupTag = [u8; 8];

/// The tag of `group`'s envelopes.
pub fn group_tag(group: &str) -> GroupTag {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"tasuki multicast v1\0");
    h.update(group.as_bytes());
    let digest = h.finalize();
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&digest[..8]);
    tag
}

/// Bytes an envelope adds to the packet it seals, with `skip` direct
/// members listed.
pub fn overhead(skip: usize) -> usize {
    IPV4_HEADER + 2 + 4 * skip + FIXED + AEAD_TAG
}

/// The destination of an IPv4 packet when it is a multicast address.
pub fn multicast_destination(packet: &[u8]) -> Option<Ipv4Addr> {
    if packet.first().map(|b| b >> 4) != Some(4) {
        return None;
    }
    let d = packet.get(16..20)?;
    let dst = Ipv4Addr::new(d[0], d[1], d[2], d[3]);
    dst.is_multicast().then_some(dst)
}

/// An IGMP packet: the kernel's membership reports, which stay on the
/// machine that sent them.
pub fn is_igmp(packet: &[u8]) -> bool {
    packet.get(9) == Some(&2)
}

/// An envelope read from an inner packet (nothing checked but its shape).
#[derive(Debug)]
pub struct Envelope<'a> {
    /// The sender's tunnel address (the outer source).
    pub sender: Ipv4Addr,
    /// The multicast address (the outer destination).
    pub dst: Ipv4Addr,
    skip: &'a [u8],
    /// Which group sealed it.
    pub tag: GroupTag,
    /// The group epoch it is sealed under.
    pub epoch: u64,
    /// The sender's counter (the replay window's number).
    pub counter: u64,
    boot: [u8; 12],
    /// Associated data: everything from the tag to the boot nonce.
    fixed: &'a [u8],
    sealed: &'a [u8],
}

/// What a sender seals an envelope with.
#[derive(Clone, Copy, Debug)]
pub struct Sealing<'a> {
    /// The sender's tunnel address.
    pub sender: Ipv4Addr,
    /// The group's tag.
    pub tag: GroupTag,
    /// The epoch's number.
    pub epoch: u64,
    /// The sender's counter.
    pub counter: u64,
    /// The sender's boot nonce.
    pub boot: [u8; 12],
    /// Members the sender reached directly (at most [`MAX_SKIP`] are listed).
    pub skip: &'a [Ipv4Addr],
}

/// Seals the multicast packet `inner` into an envelope in `out`; the
/// envelope's length, or `MulticastTooBig` when `out` cannot hold it.
pub fn seal(
    key: &SecretKey,
    s: &Sealing<'_>,
    inner: &[u8],
    out: &mut [u8],
) -> Result<usize, DropReason> {
    let dst = multicast_destination(inner).ok_or(DropReason::Malformed)?;
    let skip = &s.skip[..s.skip.len().min(MAX_SKIP)];
    let len = inner.len() + overhead(skip.len());
    if len > out.len() || len > usize::from(u16::MAX) {
        return Err(DropReason::MulticastTooBig);
    }
    write_ipv4_header(&mut out[..IPV4_HEADER], len, s.sender, dst);
    let mut at = IPV4_HEADER;
    out[at] = VERSION;
    out[at + 1] = skip.len() as u8;
    at += 2;
    for a in skip {
        out[at..at + 4].copy_from_slice(&a.octets());
        at += 4;
    }
    let fixed_at = at;
    out[at..at + 8].copy_from_slice(&s.tag);
    out[at + 8..at + 16].copy_from_slice(&s.epoch.to_be_bytes());
    out[at + 16..at + 24].copy_from_slice(&s.counter.to_be_bytes());
    out[at + 24..at + 36].copy_from_slice(&s.boot);
    at += FIXED;
    let body_end = at + inner.len();
    out[at..body_end].copy_from_slice(inner);
    let (head, body) = out.split_at_mut(at);
    let aad = associated(&head[fixed_at..], s.sender, dst);
    let nonce = nonce(s.sender, &s.boot, s.counter);
    let tag = cipher(key)
        .encrypt_in_place_detached(&nonce, &aad, &mut body[..inner.len()])
        .map_err(|_| DropReason::MulticastTooBig)?;
    out[body_end..body_end + AEAD_TAG].copy_from_slice(&tag);
    Ok(len)
}

impl<'a> Envelope<'a> {
    /// Reads an envelope; `Malformed` for anything of another shape.
    pub fn parse(packet: &'a [u8]) -> Result<Self, DropReason> {
        let bad = DropReason::MulticastForged;
        if packet.len() < IPV4_HEADER + 2 || packet[0] != 0x45 {
            return Err(bad);
        }
        if packet[9] != ENVELOPE_PROTOCOL {
            return Err(bad);
        }
        let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
        let packet = packet.get(..total).ok_or(bad)?;
        if packet.len() < IPV4_HEADER + 2 {
            return Err(bad);
        }
        let ip =
            |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
        let (sender, dst) = (ip(12), ip(16));
        let rest = &packet[IPV4_HEADER..];
        if rest[0] != VERSION {
            return Err(bad);
        }
        let n = usize::from(rest[1]);
        let skip_end = 2 + 4 * n;
        if n > MAX_SKIP || rest.len() < skip_end + FIXED + AEAD_TAG {
            return Err(bad);
        }
        let fixed = &rest[skip_end..skip_end + FIXED];
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&fixed[at..at + 8]);
            b
        };
        let mut boot = [0u8; 12];
        boot.copy_from_slice(&fixed[24..36]);
        Ok(Self {
            sender,
            dst,
            skip: &rest[2..skip_end],
            tag: word(0),
            epoch: u64::from_be_bytes(word(8)),
            counter: u64::from_be_bytes(word(16)),
            boot,
            fixed,
            sealed: &rest[skip_end + FIXED..],
        })
    }

    /// Whether the sender says it reached `member` directly.
    pub fn skips(&self, member: Ipv4Addr) -> bool {
        self.skip.chunks_exact(4).any(|c| c == member.octets())
    }

    /// Length of the sealed packet once opened.
    pub fn inner_len(&self) -> usize {
        self.sealed.len() - AEAD_TAG
    }

    /// Opens the sealed packet into `out` (at least [`Self::inner_len`]
    /// bytes) under `key`: `MulticastForged` unless it was sealed under it,
    /// or its addresses are not the envelope's.
    pub fn open(&self, key: &SecretKey, out: &mut [u8]) -> Result<usize, DropReason> {
        let len = self.inner_len();
        let body = out.get_mut(..len).ok_or(DropReason::MulticastTooBig)?;
        body.copy_from_slice(&self.sealed[..len]);
        let tag = Tag::from_slice(&self.sealed[len..]);
        let aad = associated(self.fixed, self.sender, self.dst);
        cipher(key)
            .decrypt_in_place_detached(
                &nonce(self.sender, &self.boot, self.counter),
                &aad,
                body,
                tag,
            )
            .map_err(|_| DropReason::MulticastForged)?;
        if multicast_destination(body) != Some(self.dst)
            || body.get(12..16) != Some(&self.sender.octets()[..])
        {
            return Err(DropReason::MulticastForged);
        }
        Ok(len)
    }
}

fn cipher(key: &SecretKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(Key::from_slice(key.expose()))
}

fn nonce(sender: Ipv4Addr, boot: &[u8; 12], counter: u64) -> XNonce {
    let mut n = [0u8; 24];
    n[..4].copy_from_slice(&sender.octets());
    n[4..16].copy_from_slice(boot);
    n[16..].copy_from_slice(&counter.to_be_bytes());
    XNonce::from(n)
}

fn associated(fixed: &[u8], sender: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut a = Vec::with_capacity(1 + FIXED + 8);
    a.push(VERSION);
    a.extend_from_slice(fixed);
    a.extend_from_slice(&sender.octets());
    a.extend_from_slice(&dst.octets());
    a
}

/// An IPv4 header with no options, of protocol [`ENVELOPE_PROTOCOL`].
fn write_ipv4_header(out: &mut [u8], total: usize, src: Ipv4Addr, dst: Ipv4Addr) {
    out.fill(0);
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    // Don't fragment: the tunnel carries it whole.
    out[6] = 0x40;
    out[8] = 64;
    out[9] = ENVELOPE_PROTOCOL;
    out[12..16].copy_from_slice(&src.octets());
    out[16..20].copy_from_slice(&dst.octets());
    let mut sum: u32 = out
        .chunks_exact(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    out[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

#[cfg(test)]
mod tests;
