//! An IPv6 packet's extension headers, walked by hand with every length
//! checked: the access gate needs the transport protocol and its header,
//! the fragment header and any source route still to follow. (etherparse
//! 0.21's extension iterator reads past the slice on a later fragment
//! whose next header is another extension header, so the gate does not
//! use it.)

/// The fixed IPv6 header's length.
const FIXED: usize = 40;
/// Most extension headers walked; a longer chain is refused.
const MAX_HEADERS: usize = 8;

/// What the chain of one IPv6 packet says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Chain<'a> {
    /// The protocol after the extension headers (or where the walk
    /// stopped: a later fragment's data is no header).
    pub proto: u8,
    /// What follows the headers walked.
    pub payload: &'a [u8],
    /// The fragment header's identification and offset (8-byte units),
    /// when the payload is fragmented.
    pub fragment: Option<(u32, u16)>,
}

/// Why a chain is refused outright.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// Shorter than its headers say, or too many of them.
    Malformed,
    /// A routing header with segments left: the packet does not stop at
    /// the destination the rules would judge.
    SourceRoute,
}

/// Walks the extension headers of `packet` (a whole IPv6 packet, its
/// fixed header included; shorter than its payload length is fine, as
/// the packet inside an ICMP error is).
pub(super) fn walk(packet: &[u8]) -> Result<Chain<'_>, Refused> {
    if packet.len() < FIXED {
        return Err(Refused::Malformed);
    }
    // What the payload length covers (0: a jumbogram, taken as all).
    let declared = FIXED + usize::from(u16::from_be_bytes([packet[4], packet[5]]));
    let packet = match declared {
        FIXED => packet,
        n => &packet[..n.min(packet.len())],
    };
    let mut next = packet[6];
    let mut at = FIXED;
    let mut fragment = None;
    for _ in 0..MAX_HEADERS {
        let rest = &packet[at..];
        let len = match next {
            // Hop-by-hop, routing, destination options: (len + 1) × 8.
            0 | 43 | 60 => {
                let len = (usize::from(*rest.get(1).ok_or(Refused::Malformed)?) + 1) * 8;
                if next == 43 && rest.get(3).is_some_and(|&left| left > 0) {
                    return Err(Refused::SourceRoute);
                }
                len
            }
            // Fragment: 8 bytes; past the first fragment nothing is a header.
            44 => {
                let h = rest.get(..8).ok_or(Refused::Malformed)?;
                let offset = u16::from_be_bytes([h[2], h[3]]);
                let more = offset & 1 == 1;
                let units = offset >> 3;
                let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                if units != 0 || more {
                    fragment = Some((id, units));
                }
                if units != 0 {
                    return Ok(Chain {
                        proto: h[0],
                        payload: &rest[8..],
                        fragment,
                    });
                }
                8
            }
            // Authentication header: (len + 2) × 4.
            51 => (usize::from(*rest.get(1).ok_or(Refused::Malformed)?) + 2) * 4,
            proto => {
                return Ok(Chain {
                    proto,
                    payload: rest,
                    fragment,
                })
            }
        };
        if rest.len() < len {
            return Err(Refused::Malformed);
        }
        next = rest[0];
        at += len;
    }
    Err(Refused::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(next: u8, exts: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 0, next, 64];
        p.extend_from_slice(&[0; 32]);
        p.extend_from_slice(exts);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn headers_are_walked_to_the_transport() {
        let p = packet(17, &[], &[1, 2, 3, 4]);
        let c = walk(&p).unwrap();
        assert_eq!(
            (c.proto, c.payload, c.fragment),
            (17, &[1, 2, 3, 4][..], None)
        );
        // Hop-by-hop (8 bytes) then a first fragment then UDP.
        let exts = [44, 0, 0, 0, 0, 0, 0, 0, 17, 0, 0, 1, 0, 0, 0, 9];
        let p = packet(0, &exts, &[5, 6, 7, 8]);
        let c = walk(&p).unwrap();
        assert_eq!(c.proto, 17);
        assert_eq!(c.fragment, Some((9, 0)));
        assert_eq!(c.payload, &[5, 6, 7, 8]);
    }

    #[test]
    fn a_later_fragment_stops_the_walk_whatever_it_names() {
        // Offset 2 (16 bytes), next header "destination options".
        let exts = [60, 0, 0, 16, 0, 0, 0, 7];
        let p = packet(44, &exts, &[0xff; 3]);
        let c = walk(&p).unwrap();
        assert_eq!(c.fragment, Some((7, 2)));
        assert_eq!(c.payload, &[0xff; 3]);
    }

    #[test]
    fn short_long_and_routed_chains_are_refused() {
        assert_eq!(walk(&[0x60; 39]), Err(Refused::Malformed));
        assert_eq!(
            walk(&packet(0, &[17, 1, 0, 0], &[])),
            Err(Refused::Malformed)
        );
        let routing = [17, 0, 4, 1, 0, 0, 0, 0];
        assert_eq!(walk(&packet(43, &routing, &[])), Err(Refused::SourceRoute));
        let done = [17, 0, 4, 0, 0, 0, 0, 0];
        assert_eq!(walk(&packet(43, &done, &[1])).unwrap().proto, 17);
        let mut many = Vec::new();
        for _ in 0..MAX_HEADERS {
            many.extend_from_slice(&[60, 0, 0, 0, 0, 0, 0, 0]);
        }
        assert_eq!(walk(&packet(60, &many, &[])), Err(Refused::Malformed));
        // Every prefix of a good chain: no panic.
        let good = packet(
            0,
            &[44, 0, 0, 0, 0, 0, 0, 0, 17, 0, 0, 1, 0, 0, 0, 9],
            &[1; 8],
        );
        for n in 0..good.len() {
            let _ = walk(&good[..n]);
        }
    }
}
