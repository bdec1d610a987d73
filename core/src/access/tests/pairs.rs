//! A pair's share of the policy, as the hub sends it to the pair's holders.

use super::*;

/// The rules a hub compiles for one pair decide the pair's packets the way
/// the hub's own gate does (rules both ways, replies, pings), and leave
/// out what concerns anyone else.
#[test]
fn a_pairs_rules_decide_like_the_hub() {
    let policy = enforcing(&[
        rule("user:alice", "group:servers", &["tcp/22"]),
        rule("spoke:server", "spoke:laptop", &["udp/53", "icmp"]),
        rule("spoke:laptop", "spoke:printer", &["tcp/631"]),
        rule("*", "hub", &["icmp"]),
    ]);
    let full = policy.compile(HUB, &spokes());
    let pair = full.for_pair((1, LAPTOP), (2, SERVER));
    assert!(pair.allows_any());
    assert_eq!(
        pair.rules.len(),
        2,
        "only the rules between laptop and server"
    );
    let wire = crate::codec::to_bytes(&pair).unwrap();
    let pair: PairRules = crate::codec::from_bytes("pair rules", &wire).unwrap();
    let mut hub = AccessGate::new(Arc::new(full));
    let mut holder = AccessGate::new(Arc::new(pair.compile()));
    let packets = [
        (1, tcp(LAPTOP, 40000, SERVER, 22)),
        (2, tcp(SERVER, 22, LAPTOP, 40000)),
        (2, tcp(SERVER, 40001, LAPTOP, 22)),
        (1, udp(LAPTOP, 5353, SERVER, 53)),
        (2, udp(SERVER, 5353, LAPTOP, 53)),
        (1, udp(LAPTOP, 53, SERVER, 5353)),
        (2, echo(SERVER, LAPTOP, 7, true)),
        (1, echo(LAPTOP, SERVER, 7, false)),
        (1, echo(LAPTOP, SERVER, 8, true)),
        (1, tcp(LAPTOP, 40002, SERVER, 80)),
    ];
    let verdicts: Vec<(bool, bool)> = packets
        .iter()
        .enumerate()
        .map(|(t, (from, p))| {
            let now = t as u64 * 10;
            (
                hub.check(Origin::Spoke(*from), p, now),
                holder.check(Origin::Spoke(*from), p, now),
            )
        })
        .collect();
    for (i, (h, s)) in verdicts.iter().enumerate() {
        assert_eq!(h, s, "packet {i}: hub {h}, holder {s}");
    }
    let passed: Vec<bool> = verdicts.iter().map(|v| v.0).collect();
    assert_eq!(
        passed,
        [true, true, false, false, true, true, true, true, false, false]
    );
    // No rule between laptop and printer's reverse, none at all between
    // server and printer: that pair is never issued.
    let full = policy.compile(HUB, &spokes());
    assert!(!full.for_pair((2, SERVER), (3, PRINTER)).allows_any());
    assert!(full.for_pair((1, LAPTOP), (3, PRINTER)).allows_any());
    // Open mode: everything passes, and an unknown pair's rules deny.
    let open = AccessPolicy::default().compile(HUB, &spokes());
    let rules = open.for_pair((2, SERVER), (3, PRINTER));
    assert!(rules.allows_any() && !rules.enforce);
    let mut deny = AccessGate::new(Arc::new(PairRules::deny_all().compile()));
    assert!(!deny.check(Origin::Spoke(1), &tcp(LAPTOP, 1, SERVER, 22), 0));
}
