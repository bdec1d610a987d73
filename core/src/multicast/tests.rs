//! Group multicast case by case: envelopes, receivers' checks, the hub's
//! fan-out and its limits.

use rand::{rngs::StdRng, SeedableRng};

use super::*;
use crate::group_keys::multicast_key;
use crate::keys::KeyEpoch;

const RANGE: &str = "239.77.1.0/24";

fn addr(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, last)
}

fn udp(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 1)
        .udp(5353, 5353)
        .write(&mut out, payload)
        .expect("packet");
    out
}

fn keys(epochs: &[u64], seed: u64) -> Vec<KeyEpoch> {
    let mut rng = StdRng::seed_from_u64(seed);
    epochs
        .iter()
        .map(|n| multicast_key("staff", &KeyEpoch::issue(*n, 0, &mut rng)))
        .collect()
}

fn member(own: u8, members: &[u8], current: u64, seed: u64) -> Membership {
    let mut m = Membership::new();
    m.seed([own; 12], 1_000);
    m.set_own(addr(own));
    m.set(MemberGroup {
        name: "staff".into(),
        ranges: vec![RANGE.parse().unwrap()],
        members: members.iter().map(|b| addr(*b)).collect(),
        keys: keys(&[1, 2], seed),
        current,
        rate_pps: DEFAULT_RATE_PPS,
    });
    m
}

fn group_dst() -> Ipv4Addr {
    Ipv4Addr::new(239, 77, 1, 5)
}

#[test]
fn a_member_opens_what_another_sealed_once() {
    let (mut a, mut b) = (member(2, &[2, 3, 4], 1, 9), member(3, &[2, 3, 4], 1, 9));
    let packet = udp(addr(2), group_dst(), b"hello board");
    let mut out = vec![0; 2048];
    let sent = a
        .seal(&packet, group_dst(), 0, |m| m == addr(4), &mut out)
        .expect("sealed");
    assert_eq!(sent.direct, vec![addr(4)]);
    assert!(sent.via_hub, "member 3 is not direct: the hub carries it");
    let envelope = out[..sent.len].to_vec();
    assert_eq!(envelope[9], ENVELOPE_PROTOCOL);
    assert!(
        !envelope.windows(11).any(|w| w == b"hello board"),
        "sealed: the payload is not readable on the way"
    );
    let mut inner = vec![0; 2048];
    let n = b.open(&envelope, &mut inner).expect("opened");
    assert_eq!(&inner[..n], &packet[..]);
    assert_eq!(
        b.open(&envelope, &mut inner),
        Err(DropReason::MulticastReplayed),
        "the second copy (through the hub and straight) is refused"
    );
}

#[test]
fn outsiders_leavers_and_forgers_are_refused() {
    let mut a = member(2, &[2, 3], 1, 9);
    let packet = udp(addr(2), group_dst(), b"x");
    let mut out = vec![0; 2048];
    let sent = a
        .seal(&packet, group_dst(), 0, |_| false, &mut out)
        .unwrap();
    let envelope = out[..sent.len].to_vec();
    let mut inner = vec![0; 2048];
    // Another group's keys (a spoke that is no member, or holds other epochs).
    let mut outsider = member(3, &[2, 3], 1, 77);
    assert_eq!(
        outsider.open(&envelope, &mut inner),
        Err(DropReason::MulticastForged)
    );
    // A member that no longer lists the sender (it left).
    let mut b = member(3, &[3], 1, 9);
    assert_eq!(
        b.open(&envelope, &mut inner),
        Err(DropReason::MulticastNotMember)
    );
    // One flipped bit anywhere in the sealed part.
    let mut b = member(3, &[2, 3], 1, 9);
    for at in [25, 40, envelope.len() - 1] {
        let mut bad = envelope.clone();
        bad[at] ^= 1;
        assert!(
            b.open(&bad, &mut inner).is_err(),
            "flipped byte {at} opened"
        );
    }
    // Truncated at every length: refused, never a panic.
    for len in 0..envelope.len() {
        let mut cut = envelope[..len].to_vec();
        if cut.len() >= 4 {
            cut[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        }
        assert!(b.open(&cut, &mut inner).is_err());
    }
    // An epoch it does not hold.
    let mut c = member(3, &[2, 3], 1, 9);
    let held = c.groups().next().unwrap().clone();
    c.set(MemberGroup {
        keys: keys(&[2], 9),
        ..held
    });
    assert_eq!(
        c.open(&envelope, &mut inner),
        Err(DropReason::MulticastEpoch)
    );
    b.open(&envelope, &mut inner)
        .expect("the genuine one still opens");
}

#[test]
fn a_spoke_seals_only_into_its_groups_ranges_with_an_epoch_in_use() {
    let mut out = vec![0; 2048];
    let mut a = member(2, &[2, 3], 0, 9);
    let other = Ipv4Addr::new(239, 1, 1, 1);
    assert_eq!(
        a.seal(&udp(addr(2), other, b"x"), other, 0, |_| false, &mut out),
        Err(DropReason::MulticastNoGroup)
    );
    let p = udp(addr(2), group_dst(), b"x");
    assert_eq!(
        a.seal(&p, group_dst(), 0, |_| false, &mut out),
        Err(DropReason::MulticastEpoch),
        "no epoch in use yet"
    );
    let mut a = member(2, &[2, 3], 1, 9);
    let forged = udp(addr(7), group_dst(), b"x");
    assert_eq!(
        a.seal(&forged, group_dst(), 0, |_| false, &mut out),
        Err(DropReason::MulticastForged),
        "another source is not sealed"
    );
    let mut unlisted = member(2, &[3], 1, 9);
    assert_eq!(
        unlisted.seal(&p, group_dst(), 0, |_| false, &mut out),
        Err(DropReason::MulticastNotMember),
        "not listed yet by the hub"
    );
    let big = udp(addr(2), group_dst(), &[0u8; 1400]);
    assert_eq!(
        a.seal(&big, group_dst(), 0, |_| false, &mut out[..1420]),
        Err(DropReason::MulticastTooBig)
    );
}

#[test]
fn the_replay_window_takes_each_counter_once_in_any_order() {
    let mut w = ReplayWindow::default();
    assert!(w.accept(1000));
    assert!(w.accept(1002));
    assert!(w.accept(1001), "late but new");
    assert!(!w.accept(1001));
    assert!(w.accept(1300));
    assert!(!w.accept(1100), "older than the window");
    assert!(!w.accept(1300));
}

#[test]
fn the_bucket_bounds_a_sender_and_refills_with_time() {
    let mut b = RateBucket::new(100, 0);
    let burst = (0..1000).take_while(|_| b.take(100, 0)).count();
    assert_eq!(burst, 20, "a fifth of a second's worth");
    assert!(!b.take(100, 0));
    assert!(b.take(100, 10), "10 ms at 100/s is one packet");
    assert!(!b.take(100, 10));
}

fn fanout(members: &[(u32, u8)], rate: u32) -> Fanout {
    let mut f = Fanout::default();
    f.set(FanoutGroup {
        tag: group_tag("staff"),
        ranges: vec![RANGE.parse().unwrap()],
        members: members.iter().map(|(id, a)| (*id, addr(*a))).collect(),
        rate_pps: rate,
    });
    f
}

#[test]
fn the_hub_copies_to_every_other_member_not_reached_directly() {
    let mut a = member(2, &[2, 3, 4, 5], 1, 9);
    let mut out = vec![0; 2048];
    let sent = a
        .seal(
            &udp(addr(2), group_dst(), b"x"),
            group_dst(),
            0,
            |m| m == addr(5),
            &mut out,
        )
        .unwrap();
    let envelope = &out[..sent.len];
    let mut f = fanout(&[(1, 2), (2, 3), (3, 4), (4, 5)], 1000);
    let mut to = Vec::new();
    f.plan(1, group_dst(), envelope, 0, &mut to)
        .expect("fanned out");
    to.sort();
    assert_eq!(
        to,
        vec![2, 3],
        "not the sender, not the member it reached directly"
    );
    to.clear();
    assert_eq!(
        f.plan(9, group_dst(), envelope, 0, &mut to),
        Err(DropReason::MulticastNotMember)
    );
    let elsewhere = Ipv4Addr::new(239, 9, 9, 9);
    assert_eq!(
        f.plan(1, elsewhere, envelope, 0, &mut to),
        Err(DropReason::MulticastNoGroup)
    );
    let plain = udp(addr(2), group_dst(), b"not sealed");
    assert_eq!(
        f.plan(1, group_dst(), &plain, 0, &mut to),
        Err(DropReason::MulticastForged)
    );
    assert!(to.is_empty());
    f.remove(&group_tag("staff"));
    assert!(f.is_empty());
}

#[test]
fn fan_out_is_bounded_by_members_times_rate() {
    let members: Vec<(u32, u8)> = (0..10).map(|i| (i, 2 + i as u8)).collect();
    let mut f = fanout(&members, 100);
    let mut a = member(2, &(2..12).collect::<Vec<u8>>(), 1, 9);
    let mut out = vec![0; 2048];
    let mut copies = 0;
    let mut refused = 0;
    // One second of a sender trying 10 000 packets per second.
    for ms in 0..1000u64 {
        for _ in 0..10 {
            let packet = udp(addr(2), group_dst(), b"x");
            let Ok(sent) = a.seal(&packet, group_dst(), ms, |_| false, &mut out) else {
                continue;
            };
            let mut to = Vec::new();
            match f.plan(0, group_dst(), &out[..sent.len], ms, &mut to) {
                Ok(()) => copies += to.len(),
                Err(DropReason::MulticastOverRate) => refused += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
    }
    // The sender's own bucket (at its 2000/s) and the hub's (100/s here):
    // at most a second's rate and the burst, to 9 members each.
    assert!(copies <= 9 * (100 + 20), "{copies} copies");
    assert!(copies >= 9 * 90, "the rate is carried: {copies}");
    assert!(refused > 0);
}
