//! A spoke's keyed groups (claim 11) without I/O: what to store and report
//! for each group message from the hub. The epochs' rules are
//! [`GroupKeys`]'s; this adds the order around them: a delivered epoch is
//! stored (flushed) before its receipt is reported, a switch is stored
//! before it is reported, and an ended membership erases everything. The
//! hub re-sends every offer and switch until it hears of it, so a store
//! that fails is simply not answered. The daemon carries out
//! [`GroupAction`]s in order.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::control::{GroupMulticast, HubGroup, SpokeGroup};
use crate::keys::KeyEpoch;
use crate::pair_keys::{GroupKeys, PairReceived, PairSwitch};

/// Seconds an epoch every member left is kept (a datagram still on its
/// way under it opens).
pub const GROUP_GRACE_SECS: u64 = 30;

/// What a group's store holds, for [`SpokeGroups::restore`].
#[derive(Clone, Debug)]
pub struct StoredGroup {
    /// The group.
    pub group: String,
    /// Its epochs.
    pub epochs: Vec<KeyEpoch>,
    /// The epoch switched to (0: none yet).
    pub current: u64,
}

/// One thing for the daemon to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupAction {
    /// Send this to the hub.
    Send(SpokeGroup),
    /// Store the epoch (flushed), then [`SpokeGroups::stored`].
    Store {
        /// The group.
        group: String,
        /// The epoch.
        epoch: KeyEpoch,
    },
    /// Store the epoch switched to, then [`SpokeGroups::switch_stored`].
    StoreCurrent {
        /// The group.
        group: String,
        /// The epoch.
        epoch: u64,
    },
    /// Erase these epochs of the group from the store.
    Erase {
        /// The group.
        group: String,
        /// The epochs.
        epochs: Vec<u64>,
    },
    /// Erase everything stored for the group.
    Forget(String),
    /// The group's multicast changed ([`SpokeGroups::multicast_of`]):
    /// hand it to the data plane, and route its ranges.
    Multicast(String),
}

/// A group as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupHeld {
    /// The group.
    pub group: String,
    /// The epoch in use (0: none yet).
    pub current: u64,
    /// Every epoch held, oldest first.
    pub held: Vec<u64>,
    /// Its multicast ranges (none: no multicast).
    pub multicast: Vec<String>,
    /// Members online, as the hub last told them with its multicast.
    pub members_online: usize,
}

/// Every keyed group this spoke is a member of, and what to do next.
#[derive(Debug, Default)]
pub struct SpokeGroups {
    keys: GroupKeys,
    actions: VecDeque<GroupAction>,
    grace: u64,
    /// Switches waiting for their store: the settled epoch that came with.
    settling: HashMap<String, u64>,
    /// The groups' multicast, as the hub last told it.
    multicast: BTreeMap<String, GroupMulticast>,
}

impl SpokeGroups {
    /// The groups as stored, keeping ended epochs `grace` seconds.
    pub fn restore(grace: u64, stored: Vec<StoredGroup>) -> Self {
        let mut s = Self {
            grace,
            ..Self::default()
        };
        for g in stored {
            for e in g.epochs {
                s.keys.hold(g.group.clone(), e);
            }
            s.keys.restore_current(g.group, g.current);
        }
        s
    }

    /// A message from the hub; `links` are the link epochs held (a
    /// delivery is sealed under one of them).
    pub fn handle(&mut self, now: u64, msg: HubGroup, links: &[KeyEpoch]) {
        match msg {
            HubGroup::Offer(d) => match self.keys.receive(&d, links) {
                Ok(PairReceived::Again) => self.send(SpokeGroup::Receipt {
                    group: d.group,
                    epoch: d.epoch,
                }),
                Ok(PairReceived::New(epoch)) => self.actions.push_back(GroupAction::Store {
                    group: d.group,
                    epoch,
                }),
                // The hub seals it again under the link epoch it sees in use.
                Err(e) => {
                    tracing::warn!(group = %d.group, epoch = d.epoch, error = %e, "a group epoch did not open")
                }
            },
            HubGroup::Switch {
                group,
                epoch,
                settled,
            } => {
                let current = self.keys.current(&group).map_or(0, |e| e.number);
                if epoch <= current {
                    // On it already: the hub lost the report, or says who
                    // else is on it now (what is older may go).
                    self.keys.switch(&group, epoch, settled, now, self.grace);
                    self.send(SpokeGroup::Switched { group, epoch });
                } else if self.keys.held(&group).contains(&epoch) {
                    self.settling.insert(group.clone(), settled);
                    self.actions
                        .push_back(GroupAction::StoreCurrent { group, epoch });
                }
            }
            HubGroup::Ended { group } => self.forget(group),
            HubGroup::Multicast(m) => {
                let group = m.group.clone();
                if m.ranges.is_empty() {
                    self.multicast.remove(&group);
                } else if self.multicast.get(&group) == Some(&m) {
                    return;
                } else {
                    self.multicast.insert(group.clone(), m);
                }
                self.actions.push_back(GroupAction::Multicast(group));
            }
            HubGroup::Only { groups } => {
                let stale: Vec<String> = self
                    .keys
                    .all()
                    .into_iter()
                    .map(|(g, _, _)| g)
                    .filter(|g| !groups.contains(g))
                    .collect();
                for group in stale {
                    self.forget(group);
                }
            }
        }
    }

    fn forget(&mut self, group: String) {
        self.keys.end(&group);
        self.settling.remove(&group);
        self.multicast.remove(&group);
        self.actions.push_back(GroupAction::Forget(group));
    }

    /// The epoch of [`GroupAction::Store`] is stored: hold it, report it.
    pub fn stored(&mut self, group: String, epoch: KeyEpoch) {
        let number = epoch.number;
        self.keys.hold(group.clone(), epoch);
        self.send(SpokeGroup::Receipt {
            group,
            epoch: number,
        });
    }

    /// The switch of [`GroupAction::StoreCurrent`] is stored: use it, report it.
    pub fn switch_stored(&mut self, now: u64, group: String, epoch: u64) {
        let settled = self.settling.remove(&group).unwrap_or(0);
        if self.keys.switch(&group, epoch, settled, now, self.grace) == PairSwitch::NotHeld {
            return;
        }
        self.send(SpokeGroup::Switched { group, epoch });
    }

    /// Erases the epochs whose grace has passed.
    pub fn handle_timeout(&mut self, now: u64) {
        let mut gone: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (group, k) in self.keys.take_erasable(now) {
            gone.entry(group).or_default().push(k);
        }
        for (group, epochs) in gone {
            self.actions.push_back(GroupAction::Erase { group, epochs });
        }
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<GroupAction> {
        self.actions.pop_front()
    }

    /// The group's epoch in use, if any.
    pub fn current(&self, group: &str) -> Option<&KeyEpoch> {
        self.keys.current(&group.to_owned())
    }

    /// A group's epochs held and the one in use (0: none yet), for the
    /// pairs it keys.
    pub fn epochs_of(&self, group: &str) -> (Vec<KeyEpoch>, u64) {
        let group = group.to_owned();
        let current = self.keys.current(&group).map_or(0, |e| e.number);
        (self.keys.epochs(&group), current)
    }

    /// The group's multicast as the hub last told it (`None`: it has none).
    pub fn multicast_of(&self, group: &str) -> Option<&GroupMulticast> {
        self.multicast.get(group)
    }

    /// Every group held, for `status`.
    pub fn views(&self) -> Vec<GroupHeld> {
        self.keys
            .all()
            .into_iter()
            .map(|(group, current, held)| {
                let m = self.multicast.get(&group);
                GroupHeld {
                    multicast: m.map_or_else(Vec::new, |m| {
                        m.ranges.iter().map(ToString::to_string).collect()
                    }),
                    members_online: m.map_or(0, |m| m.members.len()),
                    group,
                    current,
                    held,
                }
            })
            .collect()
    }

    fn send(&mut self, msg: SpokeGroup) {
        self.actions.push_back(GroupAction::Send(msg));
    }
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, SeedableRng};

    use super::*;
    use crate::control::Lifetime;
    use crate::group::{seal_group, GroupDelivery};

    fn offer(link: &KeyEpoch, epoch: &KeyEpoch, rng: &mut StdRng) -> HubGroup {
        HubGroup::Offer(GroupDelivery {
            group: "staff".into(),
            epoch: epoch.number,
            under: link.number,
            sealed: seal_group(link, "staff", epoch, rng).expect("seal"),
            lifetime: Lifetime::default(),
        })
    }

    fn drain(g: &mut SpokeGroups) -> Vec<GroupAction> {
        std::iter::from_fn(|| g.poll_action()).collect()
    }

    #[test]
    fn an_epoch_is_stored_before_its_receipt_and_a_switch_before_its_report() {
        let mut rng = StdRng::seed_from_u64(1);
        let link = KeyEpoch::issue(3, 0, &mut rng);
        let e1 = KeyEpoch::issue(1, 0, &mut rng);
        let mut g = SpokeGroups::restore(GROUP_GRACE_SECS, vec![]);
        g.handle(10, offer(&link, &e1, &mut rng), std::slice::from_ref(&link));
        let actions = drain(&mut g);
        let [GroupAction::Store { group, epoch }] = actions.as_slice() else {
            panic!("a store first: {actions:?}")
        };
        let (group, epoch) = (group.clone(), epoch.clone());
        assert_eq!(epoch, e1);
        // Nothing is reported until the store is done.
        g.stored(group, epoch);
        assert_eq!(
            drain(&mut g),
            vec![GroupAction::Send(SpokeGroup::Receipt {
                group: "staff".into(),
                epoch: 1
            })]
        );
        // The same offer again: a receipt again, no second store.
        g.handle(11, offer(&link, &e1, &mut rng), std::slice::from_ref(&link));
        assert!(matches!(drain(&mut g)[..], [GroupAction::Send(_)]));
        let switch = HubGroup::Switch {
            group: "staff".into(),
            epoch: 1,
            settled: 0,
        };
        g.handle(12, switch.clone(), &[]);
        assert_eq!(
            drain(&mut g),
            vec![GroupAction::StoreCurrent {
                group: "staff".into(),
                epoch: 1
            }]
        );
        g.switch_stored(12, "staff".into(), 1);
        assert_eq!(g.current("staff").map(|e| e.number), Some(1));
        assert!(matches!(
            drain(&mut g)[..],
            [GroupAction::Send(SpokeGroup::Switched { epoch: 1, .. })]
        ));
        // A repeated switch is reported again, not stored again.
        g.handle(13, switch, &[]);
        assert!(matches!(drain(&mut g)[..], [GroupAction::Send(_)]));
    }

    #[test]
    fn a_switch_to_an_epoch_not_held_waits_and_an_end_forgets_everything() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut g = SpokeGroups::restore(
            GROUP_GRACE_SECS,
            vec![StoredGroup {
                group: "staff".into(),
                epochs: vec![KeyEpoch::issue(1, 0, &mut rng)],
                current: 1,
            }],
        );
        let ahead = HubGroup::Switch {
            group: "staff".into(),
            epoch: 2,
            settled: 1,
        };
        g.handle(5, ahead, &[]);
        assert!(drain(&mut g).is_empty(), "its delivery comes again first");
        g.handle(
            6,
            HubGroup::Ended {
                group: "staff".into(),
            },
            &[],
        );
        assert_eq!(drain(&mut g), vec![GroupAction::Forget("staff".into())]);
        assert!(g.views().is_empty());
    }

    #[test]
    fn old_epochs_go_a_grace_after_the_hub_says_every_member_left_them() {
        let mut rng = StdRng::seed_from_u64(3);
        let stored = StoredGroup {
            group: "staff".into(),
            epochs: (1..=2).map(|k| KeyEpoch::issue(k, 0, &mut rng)).collect(),
            current: 1,
        };
        let mut g = SpokeGroups::restore(10, vec![stored]);
        g.handle(
            100,
            HubGroup::Switch {
                group: "staff".into(),
                epoch: 2,
                settled: 1,
            },
            &[],
        );
        drain(&mut g);
        g.switch_stored(100, "staff".into(), 2);
        drain(&mut g);
        g.handle_timeout(1_000);
        assert!(drain(&mut g).is_empty(), "others may still be on 1");
        g.handle(
            200,
            HubGroup::Switch {
                group: "staff".into(),
                epoch: 2,
                settled: 2,
            },
            &[],
        );
        drain(&mut g);
        g.handle_timeout(209);
        assert!(drain(&mut g).is_empty());
        g.handle_timeout(210);
        assert_eq!(
            drain(&mut g),
            vec![GroupAction::Erase {
                group: "staff".into(),
                epochs: vec![1]
            }]
        );
    }
}
