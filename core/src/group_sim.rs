//! A keyed group of 50 member spokes run through joins, leaves, members
//! going offline and back, and rotations, with the hub's group schedule
//! and members that open every delivery with their own link key, store
//! it, and report as a spoke does. After every step: the online members
//! agree on the epoch in use, and on each pair's derived key; nobody ever
//! holds an epoch issued after it left, or one issued before it joined.

use std::collections::{BTreeMap, BTreeSet};

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::*;
use crate::group_keys::pair_key;
use crate::keys::{PublicKey, StaticKey};

const GRACE: u64 = 10;

struct Member {
    link: KeyEpoch,
    public: PublicKey,
    /// Group epochs held, by number.
    held: BTreeMap<u64, KeyEpoch>,
    current: u64,
    online: bool,
    in_group: bool,
}

struct Sim {
    rng: StdRng,
    hub: GroupSchedule,
    members: BTreeMap<SpokeId, Member>,
    now: u64,
    /// Per member: the latest epoch issued when it joined, and each epoch
    /// issued after it left for good.
    joined_after: BTreeMap<SpokeId, u64>,
    barred: BTreeMap<SpokeId, BTreeSet<u64>>,
    deliveries: usize,
    /// The first epoch issued after each leave: the ones in use from then.
    floors: Vec<u64>,
}

impl Sim {
    fn new(n: u32) -> Self {
        let mut rng = StdRng::seed_from_u64(50);
        let (hub, _) = GroupSchedule::start("staff", 0, 1_000, &mut rng);
        let mut sim = Self {
            rng,
            hub,
            members: BTreeMap::new(),
            now: 1_000,
            joined_after: BTreeMap::new(),
            barred: BTreeMap::new(),
            deliveries: 0,
            floors: Vec::new(),
        };
        for id in 1..=n {
            sim.add(id);
        }
        sim.settle();
        sim
    }

    fn add(&mut self, id: SpokeId) {
        let link = KeyEpoch::issue(u64::from(id) % 7 + 1, 0, &mut self.rng);
        let public = StaticKey::generate(&mut self.rng).public();
        let m = Member {
            link,
            public,
            held: BTreeMap::new(),
            current: 0,
            online: true,
            in_group: true,
        };
        self.members.insert(id, m);
        self.joined_after
            .insert(id, self.hub.scope().meta().notified.saturating_sub(1));
        self.hub.join(id);
    }

    fn leave(&mut self, id: SpokeId) {
        self.hub.leave(id);
        if let Some(m) = self.members.get_mut(&id) {
            m.in_group = false;
        }
        // Everything issued from now on is barred to it, and so is being
        // told to use anything it may hold.
        let from = self.hub.scope().latest() + 1;
        self.barred
            .entry(id)
            .or_default()
            .extend(from..from + 1_000);
        self.floors.push(from);
    }

    /// One tick of the hub; online members answer what they get.
    fn round(&mut self) {
        self.now += 1;
        let links: BTreeMap<SpokeId, KeyEpoch> = self
            .members
            .iter()
            .filter(|(_, m)| m.online)
            .map(|(id, m)| (*id, m.link.clone()))
            .collect();
        let plan = self
            .hub
            .tick(
                &RotationPolicy::default(),
                self.now,
                Usage::default(),
                |id| links.get(&id),
                &mut self.rng,
            )
            .expect("sealing works");
        for (id, d) in plan.deliveries {
            self.deliveries += 1;
            let m = self.members.get_mut(&id).expect("a known member");
            let epoch = open_group(&m.link, &d).expect("the member's link opens it");
            assert_eq!(epoch.number, d.epoch);
            m.held.insert(epoch.number, epoch);
            self.hub.on_receipt(id, d.epoch);
        }
        for (id, k) in plan.walk.notify {
            let m = self.members.get_mut(&id).expect("a known member");
            assert!(m.held.contains_key(&k), "told to switch to {k} it lacks");
            if let Some(floor) = self.floors.last() {
                assert!(k >= *floor, "told to switch to {k}, which a leaver holds");
            }
            m.current = k;
            self.hub.on_switched(id, k, self.now, GRACE);
        }
    }

    fn settle(&mut self) {
        for _ in 0..20 {
            self.round();
            self.now += crate::rotation::RESEND_SECS;
            if !self.hub.scope().in_flight() {
                self.check();
                return;
            }
        }
        panic!("the group never settled: {:?}", self.hub.scope().meta());
    }

    fn check(&self) {
        let current = self.hub.scope().current();
        if let Some(floor) = self.floors.last() {
            assert!(
                current >= *floor,
                "epoch {current} in use after a leave at {floor}"
            );
        }
        let online: Vec<(&SpokeId, &Member)> = self
            .members
            .iter()
            .filter(|(_, m)| m.online && m.in_group)
            .collect();
        for (id, m) in &online {
            assert_eq!(m.current, current, "member {id} is on another epoch");
        }
        for (id, m) in &self.members {
            let barred = self.barred.get(id);
            for k in m.held.keys() {
                assert!(
                    barred.is_none_or(|b| !b.contains(k)),
                    "{id} got epoch {k} after it left"
                );
                assert!(
                    *k >= self.joined_after[id],
                    "{id} got epoch {k}, older than the one in use when it joined"
                );
            }
        }
        // Any two online members compute the same key for their pair.
        if let [(_, a), (_, b), ..] = online.as_slice() {
            let ka = pair_key("staff", &a.held[&current], &a.public, &b.public);
            let kb = pair_key("staff", &b.held[&current], &b.public, &a.public);
            assert_eq!(ka.key, kb.key);
        }
    }
}

#[test]
fn fifty_members_through_joins_leaves_offline_spells_and_rotations() {
    let mut sim = Sim::new(50);
    assert_eq!(sim.hub.scope().current(), 1);
    let mut next_id = 51;
    for step in 0..60 {
        let pick = sim.rng.gen_range(1..next_id);
        match step % 5 {
            0 => {
                sim.hub.request(Trigger::Admin);
            }
            1 => {
                if sim.members[&pick].in_group {
                    // Half the time it leaves while a rotation is on its
                    // way, with the new epoch already in hand.
                    if step % 2 == 1 {
                        sim.hub.request(Trigger::Admin);
                        sim.round();
                    }
                    sim.leave(pick);
                }
            }
            2 => {
                sim.add(next_id);
                next_id += 1;
            }
            3 => {
                let m = sim.members.get_mut(&pick).expect("picked a member");
                if m.in_group && m.online {
                    m.online = false;
                    sim.hub.offline(pick);
                }
            }
            _ => {
                let back: Vec<SpokeId> = sim
                    .members
                    .iter()
                    .filter(|(_, m)| m.in_group && !m.online)
                    .map(|(id, _)| *id)
                    .collect();
                for id in back {
                    if let Some(m) = sim.members.get_mut(&id) {
                        m.online = true;
                    }
                    sim.hub.join(id);
                }
            }
        }
        sim.settle();
    }
    // Leaves rotated at once; old epochs were erased after their grace.
    sim.now += GRACE;
    sim.hub.take_erasable(sim.now);
    assert!(sim.hub.scope().epochs().len() <= 2);
    assert!(sim.hub.scope().meta().rotations >= 20);
}

#[test]
fn a_group_rotation_costs_one_delivery_per_member_not_one_per_pair() {
    let mut sim = Sim::new(50);
    let before = sim.deliveries;
    sim.hub.request(Trigger::Admin);
    sim.settle();
    assert_eq!(
        sim.deliveries - before,
        50,
        "N deliveries, not N(N−1)/2 = 1225"
    );
}
