//! The path rules, one test each.

use super::*;

fn addr(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, last], port))
}

fn config() -> PathConfig {
    PathConfig {
        probe_every_ms: 1_000,
        probe_for_ms: 5_000,
        trust_ms: 3_000,
        backoff_min_ms: 2_000,
        backoff_max_ms: 8_000,
        settle_ms: 2_000,
    }
}

fn probing() -> PeerPath {
    let mut p = PeerPath::new(config());
    p.probe_now(0, vec![addr(1, 4000), addr(2, 51820)]);
    p
}

#[test]
fn the_relay_carries_until_a_packet_comes_back_direct() {
    let mut p = PeerPath::new(config());
    assert_eq!(p.path(), Path::Relay);
    assert!(p.poll_probe(0).is_empty(), "no candidates, no probes");
    p.probe_now(0, vec![addr(1, 4000), addr(2, 51820)]);
    assert_eq!(p.path(), Path::Relay, "probing is not carrying");
    assert_eq!(p.poll_probe(0), vec![addr(1, 4000), addr(2, 51820)]);
    assert!(p.poll_probe(500).is_empty(), "one round a second");
    assert_eq!(p.poll_probe(1_000).len(), 2);
    assert_eq!(
        p.on_authenticated(addr(2, 51820), 0),
        Some(PathChange::Upgraded(addr(2, 51820)))
    );
    assert_eq!(
        p.path(),
        Path::Direct(addr(2, 51820)),
        "the first that answered"
    );
    assert!(p.poll_probe(2_000).is_empty(), "no probes once direct");
    assert_eq!(p.counters().upgrades, 1);
}

#[test]
fn unanswered_traffic_falls_back_at_once_and_retries_with_growing_back_off() {
    let mut p = probing();
    p.on_authenticated(addr(1, 4000), 0);
    p.on_sent(10_000);
    p.on_sent(11_000);
    assert_eq!(p.tick(12_999), None, "inside the trust window");
    assert_eq!(p.tick(13_000), Some(PathChange::FellBack));
    assert_eq!(p.path(), Path::Relay);
    assert_eq!(
        p.poll_timeout(),
        Some(15_000),
        "retry after the first back-off"
    );
    assert_eq!(p.tick(15_000), None);
    assert_eq!(p.poll_probe(15_000).len(), 2, "probing again");
    // Nobody answers this round: the next wait is twice as long.
    assert_eq!(p.tick(20_000), Some(PathChange::PunchFailed));
    assert_eq!(p.poll_timeout(), Some(24_000));
    assert_eq!(p.counters().fallbacks, 1);
    assert_eq!(p.counters().punch_failures, 1);
}

#[test]
fn answers_keep_the_direct_path() {
    let mut p = probing();
    p.on_authenticated(addr(1, 4000), 0);
    for t in (0..60_000).step_by(1_000) {
        p.on_sent(t);
        assert_eq!(p.tick(t + 500), None);
        p.on_authenticated(addr(1, 4000), 0);
    }
    assert_eq!(p.path(), Path::Direct(addr(1, 4000)));
    // Idle (nothing sent): no answer is needed.
    assert_eq!(p.tick(1_000_000), None);
    assert_eq!(p.poll_timeout(), None);
}

#[test]
fn a_packet_from_a_new_address_moves_the_path_there() {
    let mut p = probing();
    p.on_authenticated(addr(1, 4000), 0);
    assert_eq!(
        p.on_authenticated(addr(1, 4001), 0),
        Some(PathChange::Roamed(addr(1, 4001)))
    );
    assert_eq!(p.path(), Path::Direct(addr(1, 4001)));
    assert_eq!(p.counters().upgrades, 1, "roaming is no upgrade");
}

#[test]
fn the_back_off_stops_growing_and_an_offer_resets_it() {
    let mut p = probing();
    let mut now = 0;
    let mut waits = Vec::new();
    for _ in 0..5 {
        now += 5_000;
        assert_eq!(p.tick(now), Some(PathChange::PunchFailed));
        let at = p.poll_timeout().unwrap();
        waits.push(at - now);
        now = at;
        p.tick(now);
    }
    assert_eq!(waits, vec![2_000, 4_000, 8_000, 8_000, 8_000]);
    p.probe_now(now, vec![addr(3, 1)]);
    assert_eq!(p.poll_probe(now), vec![addr(3, 1)]);
    assert_eq!(p.tick(now + 5_000), Some(PathChange::PunchFailed));
    assert_eq!(
        p.poll_timeout(),
        Some(now + 5_000 + 2_000),
        "back to the first wait"
    );
}

#[test]
fn an_ended_pair_stays_on_the_relay() {
    let mut p = probing();
    p.on_authenticated(addr(1, 4000), 0);
    p.end();
    assert_eq!(p.path(), Path::Relay);
    assert!(p.candidates().is_empty());
    assert_eq!(p.tick(1_000_000), None);
    assert!(p.poll_probe(1_000_000).is_empty());
    assert_eq!(p.poll_timeout(), None);
}

#[test]
fn an_offer_while_direct_keeps_the_working_path() {
    let mut p = probing();
    p.on_authenticated(addr(1, 4000), 0);
    p.probe_now(9_000, vec![addr(1, 4000), addr(9, 9)]);
    assert_eq!(p.path(), Path::Direct(addr(1, 4000)));
    assert!(p.poll_probe(9_000).is_empty());
}

#[test]
fn the_peers_traffic_on_the_relay_ends_a_settled_direct_path_at_once() {
    let mut p = PeerPath::new(PathConfig::default());
    p.probe_now(0, vec![addr(1, 4000)]);
    p.on_authenticated(addr(1, 4000), 1_000);
    // Just upgraded: the peer may not have moved yet.
    assert_eq!(p.on_peer_relayed(1_500), None);
    assert_eq!(p.path(), Path::Direct(addr(1, 4000)));
    // Settled: the peer sends through the hub, so it lost the direct path.
    assert_eq!(p.on_peer_relayed(3_100), Some(PathChange::FellBack));
    assert_eq!(p.path(), Path::Relay);
    assert_eq!(p.counters().fallbacks, 1);
    assert_eq!(p.on_peer_relayed(3_200), None, "on the relay already");
}
