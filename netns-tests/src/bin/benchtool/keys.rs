//! `key-messages`: how many key messages one rotation costs the hub for a
//! group of N members, keyed as a group (claim 11: one epoch for all) and
//! with a pair epoch for each of the N(N−1)/2 member pairs (direct mode
//! without groups). Both run the hub's own schedules from `tasuki-core`
//! (the ones `tasuki-hub` runs), with members that answer every delivery
//! and switch at once, and count what each sends.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use rand_core::OsRng;
use serde_json::json;
use tasuki_core::group::GroupSchedule;
use tasuki_core::keys::KeyEpoch;
use tasuki_core::pair::PairId;
use tasuki_core::pair_schedule::PairSchedule;
use tasuki_core::rotation::{RotationPolicy, Trigger, Usage};

const GRACE: u64 = 10;

/// Messages one scope sent: epochs delivered, and switches.
#[derive(Default)]
struct Sent {
    deliveries: u64,
    switches: u64,
}

/// One member link epoch each, as the hub seals deliveries under them.
fn links(n: u32) -> BTreeMap<u32, KeyEpoch> {
    (1..=n)
        .map(|id| (id, KeyEpoch::issue(1, 0, &mut OsRng)))
        .collect()
}

/// Runs the group's schedule until nothing is in flight; what it sent.
fn settle_group(
    g: &mut GroupSchedule,
    links: &BTreeMap<u32, KeyEpoch>,
    now: &mut u64,
) -> Result<Sent> {
    let mut sent = Sent::default();
    for _ in 0..50 {
        *now += 1;
        let plan = g
            .tick(
                &RotationPolicy::default(),
                *now,
                Usage::default(),
                |id| links.get(&id),
                &mut OsRng,
            )
            .context("sealing a group epoch")?;
        sent.deliveries += plan.deliveries.len() as u64;
        sent.switches += plan.walk.notify.len() as u64;
        for (id, d) in plan.deliveries {
            g.on_receipt(id, d.epoch);
        }
        for (id, k) in plan.walk.notify {
            g.on_switched(id, k, *now, GRACE);
        }
        if !g.scope().in_flight() {
            return Ok(sent);
        }
    }
    anyhow::bail!("the group's schedule never settled")
}

fn settle_pair(p: &mut PairSchedule, links: [&KeyEpoch; 2], now: &mut u64) -> Result<Sent> {
    let mut sent = Sent::default();
    for _ in 0..50 {
        *now += 1;
        let plan = p
            .tick(
                &RotationPolicy::default(),
                u64::MAX,
                *now,
                Usage::default(),
                [Some(links[0]), Some(links[1])],
                &mut OsRng,
            )
            .context("sealing a pair epoch")?;
        sent.deliveries += plan.deliveries.len() as u64;
        sent.switches += plan.notify.len() as u64;
        for (id, d) in plan.deliveries {
            p.on_receipt(id, d.epoch);
        }
        for (id, k) in plan.notify {
            p.on_switched(id, k, *now, GRACE);
        }
        if !p.in_flight() {
            return Ok(sent);
        }
    }
    anyhow::bail!("a pair's schedule never settled")
}

/// Prints {"members":N,"group":{…},"pairs":{…}}: the messages of one
/// rotation (an admin's) once every member holds the first epoch.
pub(crate) fn key_messages(n: u32) -> Result<String> {
    let links = links(n);
    let mut now = 1_000;
    let (mut g, _) = GroupSchedule::start("bench", 0, now, &mut OsRng);
    for id in 1..=n {
        g.join(id);
    }
    settle_group(&mut g, &links, &mut now)?;
    g.request(Trigger::Admin);
    let group = settle_group(&mut g, &links, &mut now)?;
    let mut pairs = Sent::default();
    let mut count = 0u64;
    for a in 1..=n {
        for b in a + 1..=n {
            let id = PairId::new(a, b).context("a pair of two spokes")?;
            let (mut p, _) = PairSchedule::start(id, now, &mut OsRng);
            let l = [&links[&id.holders()[0]], &links[&id.holders()[1]]];
            settle_pair(&mut p, l, &mut now)?;
            p.request(Trigger::Admin);
            let s = settle_pair(&mut p, l, &mut now)?;
            pairs.deliveries += s.deliveries;
            pairs.switches += s.switches;
            count += 1;
        }
    }
    Ok(json!({
        "members": n,
        "group": {"deliveries": group.deliveries, "switches": group.switches},
        "pairs": {"pairs": count, "deliveries": pairs.deliveries, "switches": pairs.switches},
    })
    .to_string())
}
