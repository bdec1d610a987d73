//! Requests driven at random as the hub drives them: asks, approvals from
//! approvers and from who may not approve, denials, revocations, logouts,
//! the time, a store that refuses writes, and crashes that bring the
//! machine back from what was stored (with the hub's start-up steps:
//! tick, and the requests of users logged in nowhere end). After every
//! step: a grant is in force only with the approvals it needs, from
//! distinct approvers who are not the requester; no grant outlives its
//! time; what ended stays ended across crashes; and what is in memory
//! is what was stored, but for endings the hub keeps in memory when the
//! store refuses (those come again at the next start).

use std::collections::{BTreeMap, BTreeSet};

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::*;

const REQUESTERS: [&str; 2] = ["alice", "erin"];
const APPROVERS: [&str; 5] = ["alice", "bob", "carol", "dave", "mallory"];

struct Sim {
    rng: StdRng,
    machine: Requests,
    policies: Vec<RequestPolicy>,
    stored: BTreeMap<u64, Request>,
    store_fails: bool,
    /// Requests changed in memory whose records the store refused.
    unstored: BTreeSet<u64>,
    logged_in: BTreeSet<&'static str>,
    now: u64,
    /// Requests seen ended: never open again.
    ended: BTreeSet<u64>,
    granted: usize,
    crashes: usize,
}

fn sim_policy() -> RequestPolicy {
    RequestPolicy {
        name: "lan".into(),
        grant: Grant::Group("ops".into()),
        approvers: vec![
            ApproverSel::User("bob".into()),
            ApproverSel::User("carol".into()),
            ApproverSel::Group("leads".into()),
        ],
        required: 2,
        max_duration_secs: 600,
        decide_within_secs: 300,
        requesters: None,
    }
}

/// The groups each user is in: dave leads.
fn groups_of(user: &str) -> Vec<String> {
    if user == "dave" {
        vec!["leads".into()]
    } else {
        Vec::new()
    }
}

impl Sim {
    fn new(seed: u64) -> Self {
        let policies = vec![sim_policy()];
        Self {
            rng: StdRng::seed_from_u64(seed),
            machine: Requests::restore(policies.clone(), Vec::new()),
            policies,
            stored: BTreeMap::new(),
            store_fails: false,
            unstored: BTreeSet::new(),
            logged_in: REQUESTERS.into_iter().collect(),
            now: 1_000,
            ended: BTreeSet::new(),
            granted: 0,
            crashes: 0,
        }
    }

    /// A change on a copy, kept only if its records can be stored (as the
    /// hub's `change_requests`).
    fn change(&mut self, f: impl FnOnce(&mut Requests) -> Result<Outcome, RequestError>) {
        let mut after = self.machine.clone();
        let Ok(out) = f(&mut after) else {
            return;
        };
        if self.store_fails {
            return;
        }
        self.check_outcome(&out);
        self.store(std::slice::from_ref(&out));
        self.machine = after;
    }

    /// Endings the hub keeps in memory even when the store refuses.
    fn end_anyway(&mut self, outcomes: Vec<Outcome>) {
        for out in &outcomes {
            self.check_outcome(out);
        }
        if self.store_fails {
            self.unstored.extend(outcomes.iter().map(|o| o.request.id));
        } else {
            self.store(&outcomes);
        }
    }

    /// What the store refused is written again at each tick and before a
    /// login (the hub's `store_unsaved_requests`).
    fn store_again(&mut self) -> bool {
        if self.store_fails {
            return false;
        }
        for id in std::mem::take(&mut self.unstored) {
            match self.machine.request(id) {
                Some(r) => self.stored.insert(id, r.clone()),
                None => self.stored.remove(&id),
            };
        }
        true
    }

    fn store(&mut self, outcomes: &[Outcome]) {
        for out in outcomes {
            self.stored.insert(out.request.id, out.request.clone());
            for id in &out.forgotten {
                self.stored.remove(id);
            }
        }
    }

    fn check_outcome(&mut self, out: &Outcome) {
        let r = &out.request;
        if let RequestState::Granted { until } = r.state {
            assert!(out.grants_changed, "a grant began unannounced: {r:?}");
            assert_eq!(
                r.approvals.len(),
                r.required as usize,
                "granted early or late: {r:?}"
            );
            assert!(!r.approvals.contains(&format!("user:{}", r.requester)));
            assert!(r.approvals.iter().all(|a| a != "user:mallory"), "{r:?}");
            assert_eq!(until, self.now + r.duration_secs);
            self.granted += 1;
        }
        if !r.state.is_open() {
            self.ended.insert(r.id);
        }
    }

    fn step(&mut self) {
        let now = self.now;
        match self.rng.gen_range(0..100) {
            0..=19 => {
                let who = REQUESTERS[self.rng.gen_range(0..REQUESTERS.len())];
                if self.logged_in.contains(who) {
                    let secs = self.rng.gen_range(1..=600);
                    self.change(|m| m.ask("lan", (who, "laptop", &[]), secs, "work", now));
                }
            }
            20..=59 => {
                let id = self.random_id();
                let who = if self.rng.gen_bool(0.1) {
                    Approver::Admin
                } else {
                    let user = APPROVERS[self.rng.gen_range(0..APPROVERS.len())];
                    Approver::User {
                        id: user.into(),
                        spoke: format!("{user}-desk"),
                    }
                };
                let groups = match &who {
                    Approver::User { id, .. } => groups_of(id),
                    Approver::Admin => Vec::new(),
                };
                let deny = self.rng.gen_bool(0.05);
                self.change(|m| match deny {
                    true => m.deny(id, &who, &groups, now),
                    false => m.approve(id, &who, &groups, now),
                });
            }
            60..=62 => {
                let id = self.random_id();
                self.change(|m| m.revoke(id, now));
            }
            63..=64 => {
                let who = REQUESTERS[self.rng.gen_range(0..REQUESTERS.len())];
                if !self.logged_in.remove(who) {
                    // A login is stored, after what is still unstored.
                    if self.store_again() {
                        self.logged_in.insert(who);
                    }
                } else {
                    let outcomes = self.machine.requester_gone(who, now);
                    self.end_anyway(outcomes);
                }
            }
            65..=68 => self.store_fails = self.rng.gen_bool(0.3),
            69..=72 => self.crash(),
            _ => {
                self.now += self.rng.gen_range(0..120);
                self.store_again();
                self.tick();
            }
        }
        self.check();
    }

    /// Mostly a waiting request; now and then any number at all.
    fn random_id(&mut self) -> u64 {
        let waiting: Vec<u64> = self
            .machine
            .requests()
            .filter(|r| r.state == RequestState::Waiting)
            .map(|r| r.id)
            .collect();
        if !waiting.is_empty() && self.rng.gen_bool(0.8) {
            return waiting[self.rng.gen_range(0..waiting.len())];
        }
        let top = self.machine.requests().map(|r| r.id).max().unwrap_or(0);
        self.rng.gen_range(0..=top + 1)
    }

    fn tick(&mut self) {
        let outcomes = self.machine.tick(self.now);
        self.end_anyway(outcomes);
    }

    /// The hub stops and starts again from its store.
    fn crash(&mut self) {
        self.crashes += 1;
        self.unstored.clear();
        let stored = self.stored.values().cloned().collect();
        self.machine = Requests::restore(self.policies.clone(), stored);
        self.tick();
        let open: BTreeSet<String> = self
            .machine
            .requests()
            .filter(|r| r.state.is_open() && !self.logged_in.contains(r.requester.as_str()))
            .map(|r| r.requester.clone())
            .collect();
        for user in &open {
            let outcomes = self.machine.requester_gone(user, self.now);
            self.end_anyway(outcomes);
        }
    }

    fn check(&self) {
        for (r, _) in self.machine.grants() {
            if let RequestState::Granted { until } = r.state {
                assert!(until > self.now, "a grant past its time: {r:?}");
            }
            assert!(r.approvals.len() >= r.required as usize, "{r:?}");
            assert!(
                self.logged_in.contains(r.requester.as_str()),
                "a leaver's grant: {r:?}"
            );
        }
        for r in self.machine.requests() {
            if self.ended.contains(&r.id) {
                assert!(!r.state.is_open(), "ended, then open again: {r:?}");
            }
            // Memory is what was stored, or an ending not stored yet.
            match self.stored.get(&r.id) {
                Some(s) if s == r => {}
                Some(s) => assert!(!r.state.is_open() && s.state.is_open(), "{s:?} vs {r:?}"),
                None => assert!(!r.state.is_open(), "open and never stored: {r:?}"),
            }
        }
    }
}

#[test]
fn random_decisions_with_crashes_and_a_failing_store_keep_the_rules() {
    for seed in 0..10 {
        let mut sim = Sim::new(seed);
        for _ in 0..2_000 {
            sim.step();
        }
        assert!(sim.granted > 10, "seed {seed}: only {} grants", sim.granted);
        assert!(
            sim.crashes > 10,
            "seed {seed}: only {} crashes",
            sim.crashes
        );
    }
}
