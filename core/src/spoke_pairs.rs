//! A spoke's pairs (direct mode, claim 10) without I/O: what to store,
//! report and tell the data plane for each pair message from the hub, and
//! when to ask the hub for a pair.
//!
//! The rules for the epochs themselves are [`PairKeys`]'s; this adds the
//! order around them. A delivered epoch is stored (flushed) before the
//! data plane gets it and before its receipt is reported; a switch is
//! stored before it is used and reported. The hub re-sends every offer
//! and switch until it hears of it, so a store that fails is simply not
//! answered. The daemon carries out [`PairAction`]s in order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};

use crate::access::PairRules;
use crate::control::{DirectFacts, HubPair, PairHeld, PairPeer, PairUsage, SpokePair};
use crate::keys::{KeyEpoch, PublicKey};
use crate::pair::PairId;
use crate::pair_keys::{PairKeys, PairReceived, PairSwitch};
use crate::routing::SpokeId;

/// Seconds between two requests for a pair with the same peer.
pub const ASK_EVERY_SECS: u64 = 10;
/// Seconds a refused peer is not asked for again.
pub const REFUSED_SECS: u64 = 60;
/// Seconds an epoch both holders left is kept (a datagram still on its
/// way under it opens).
pub const PAIR_GRACE_SECS: u64 = 30;

/// What a pair's store holds, for [`SpokePairs::restore`].
#[derive(Clone, Debug)]
pub struct StoredPair {
    /// The pair.
    pub pair: PairId,
    /// The peer as the last offer described it.
    pub peer: PairPeer,
    /// Its epochs.
    pub epochs: Vec<KeyEpoch>,
    /// The epoch switched to (0: none yet).
    pub current: u64,
    /// The access rules last heard for it.
    pub rules: Option<PairRules>,
    /// The keyed group whose epochs key it, if one does (its epochs are
    /// then derived, not stored).
    pub via: Option<String>,
}

/// What the data plane is to do for a pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PairCommand {
    /// A held epoch: build its tunnel to the peer.
    Hold {
        /// The pair.
        pair: PairId,
        /// The peer.
        peer: PairPeer,
        /// The epoch.
        epoch: KeyEpoch,
    },
    /// New handshakes use this epoch; probe these candidates now.
    Use {
        /// The pair.
        pair: PairId,
        /// The epoch.
        epoch: u64,
        /// The peer's candidate endpoints.
        candidates: Vec<SocketAddr>,
    },
    /// An ended epoch's tunnel goes.
    Erase {
        /// The pair.
        pair: PairId,
        /// The epoch.
        epoch: u64,
    },
    /// The access rules for the pair's direct traffic.
    Rules {
        /// The pair.
        pair: PairId,
        /// The rules.
        rules: PairRules,
    },
    /// The pair is over: its traffic goes through the relay.
    End(PairId),
}

/// One thing for the daemon to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PairAction {
    /// Send this to the hub.
    Send(SpokePair),
    /// Store the epoch and the peer (flushed), then [`SpokePairs::stored`].
    Store {
        /// The pair.
        pair: PairId,
        /// The peer.
        peer: PairPeer,
        /// The epoch.
        epoch: KeyEpoch,
    },
    /// Store the epoch switched to, then [`SpokePairs::switch_stored`].
    StoreCurrent {
        /// The pair.
        pair: PairId,
        /// The epoch.
        epoch: u64,
    },
    /// Erase these epochs of the pair from the store.
    Erase {
        /// The pair.
        pair: PairId,
        /// The epochs.
        epochs: Vec<u64>,
    },
    /// Store a pair keyed by a group (its peer and group; flushed), then
    /// [`SpokePairs::via_stored`].
    StoreVia {
        /// The pair.
        pair: PairId,
        /// The peer.
        peer: PairPeer,
        /// The keyed group.
        group: String,
    },
    /// Store the pair's access rules (not secret, nothing waits for it).
    StoreRules {
        /// The pair.
        pair: PairId,
        /// The rules.
        rules: PairRules,
    },
    /// Erase everything stored for the pair.
    Forget(PairId),
    /// Tell the data plane.
    Plane(PairCommand),
}

/// A switch waiting for its store.
#[derive(Clone, Debug)]
struct Switching {
    epoch: u64,
    settled: u64,
    candidates: Vec<SocketAddr>,
}

/// Every pair a spoke holds, and its requests.
#[derive(Debug)]
pub struct SpokePairs {
    me: SpokeId,
    grace: u64,
    keys: PairKeys,
    peers: BTreeMap<PairId, PairPeer>,
    current: BTreeMap<PairId, u64>,
    rules: BTreeMap<PairId, PairRules>,
    switching: BTreeMap<PairId, Switching>,
    /// Pairs keyed by a group's epochs, and the group.
    via: BTreeMap<PairId, String>,
    /// Per peer tunnel address: not asked again before this time.
    quiet_until: HashMap<Ipv4Addr, u64>,
    /// Messages that did not fit (another spoke's pair, a box that would
    /// not open): dropped and counted.
    rejected: u64,
    actions: VecDeque<PairAction>,
}

impl SpokePairs {
    /// The pairs of spoke `me` as its store holds them; old epochs go
    /// `grace` seconds after the hub says both holders left them. The
    /// data plane is told about every held epoch and the one in use.
    pub fn restore(me: SpokeId, grace: u64, stored: Vec<StoredPair>) -> Self {
        let mut s = Self {
            me,
            grace,
            keys: PairKeys::default(),
            peers: BTreeMap::new(),
            current: BTreeMap::new(),
            rules: BTreeMap::new(),
            switching: BTreeMap::new(),
            via: BTreeMap::new(),
            quiet_until: HashMap::new(),
            rejected: 0,
            actions: VecDeque::new(),
        };
        for p in stored {
            if p.pair.peer_of(me) != Some(p.peer.spoke_id) {
                continue;
            }
            if let Some(group) = p.via {
                // Its epochs come when the group's are fed in.
                if let Some(rules) = p.rules {
                    s.plane(PairCommand::Rules {
                        pair: p.pair,
                        rules: rules.clone(),
                    });
                    s.rules.insert(p.pair, rules);
                }
                s.via.insert(p.pair, group);
                s.peers.insert(p.pair, p.peer);
                continue;
            }
            for epoch in p.epochs {
                s.keys.hold(p.pair, epoch.clone());
                s.plane(PairCommand::Hold {
                    pair: p.pair,
                    peer: p.peer.clone(),
                    epoch,
                });
            }
            if let Some(rules) = p.rules {
                s.plane(PairCommand::Rules {
                    pair: p.pair,
                    rules: rules.clone(),
                });
                s.rules.insert(p.pair, rules);
            }
            if p.current > 0 && s.keys.held(&p.pair).contains(&p.current) {
                // Current since the store said so; `settled` 0 erases nothing.
                s.keys.switch(&p.pair, p.current, 0, 0, grace);
                s.current.insert(p.pair, p.current);
                s.plane(PairCommand::Use {
                    pair: p.pair,
                    epoch: p.current,
                    candidates: p.peer.candidates.clone(),
                });
            }
            s.peers.insert(p.pair, p.peer);
        }
        s
    }

    /// This spoke's id, once the hub's configuration says (a fresh spoke
    /// restores its pairs before it knows it).
    pub fn set_me(&mut self, me: SpokeId) {
        self.me = me;
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<PairAction> {
        self.actions.pop_front()
    }

    /// Messages dropped because they did not fit.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Every pair held, with its epochs, for the hub's [`DirectFacts`].
    pub fn held(&self) -> Vec<PairHeld> {
        self.peers
            .keys()
            .map(|pair| PairHeld {
                pair: *pair,
                current: self.current.get(pair).copied().unwrap_or(0),
                stored: self.keys.held(pair).last().copied().unwrap_or(0),
            })
            .collect()
    }

    /// The facts the hub hears after each attach: local addresses and pairs held.
    pub fn facts(&mut self, local: Vec<SocketAddr>) {
        let pairs = self.held();
        self.send(SpokePair::Facts(DirectFacts { local, pairs }));
    }

    /// Every pair's path and counters, for the hub (which counts an
    /// active pair as used).
    pub fn usage(&mut self, usage: Vec<PairUsage>) {
        if !usage.is_empty() {
            self.send(SpokePair::Usage(usage));
        }
    }

    /// The data plane sends traffic to the spoke at `peer` through the
    /// relay: ask the hub for the pair, unless asked lately, refused
    /// lately, or held already.
    pub fn ask(&mut self, now: u64, peer: Ipv4Addr) {
        if self.peers.values().any(|p| p.tunnel_addr == peer) {
            return;
        }
        if self.quiet_until.get(&peer).is_some_and(|t| now < *t) {
            return;
        }
        self.quiet_until.insert(peer, now + ASK_EVERY_SECS);
        self.send(SpokePair::Request { peer });
    }

    /// A pair message from the hub; `links` are the link epochs held now
    /// (an offer is sealed under one of them).
    pub fn handle(&mut self, now: u64, msg: HubPair, links: &[KeyEpoch]) {
        match msg {
            HubPair::Offer(offer) => {
                let pair = offer.delivery.pair;
                if pair.peer_of(self.me) != Some(offer.peer.spoke_id) {
                    self.reject("an offer for a pair this spoke is not in");
                    return;
                }
                match self.keys.receive(&offer.delivery, links) {
                    Ok(PairReceived::Again) => self.send(SpokePair::Receipt {
                        pair,
                        epoch: offer.delivery.epoch,
                    }),
                    Ok(PairReceived::New(epoch)) => self.actions.push_back(PairAction::Store {
                        pair,
                        peer: offer.peer,
                        epoch,
                    }),
                    // Sealed under a link epoch no longer held: the hub
                    // seals it again under the current one.
                    Err(e) => {
                        tracing::debug!(%pair, error = %e, "pair epoch not opened");
                        self.reject("a pair epoch that does not open");
                    }
                }
            }
            HubPair::Switch {
                pair,
                epoch,
                settled,
                candidates,
            } => self.on_switch(now, pair, epoch, settled, candidates),
            HubPair::Ended { pair } => self.end(now, pair),
            HubPair::Keyed { pair, peer, group } => self.on_keyed(pair, peer, group),
            HubPair::Rules { pair, rules } => {
                if !pair.has(self.me) {
                    self.reject("rules for a pair this spoke is not in");
                    return;
                }
                if self.peers.contains_key(&pair) {
                    self.plane(PairCommand::Rules {
                        pair,
                        rules: rules.clone(),
                    });
                    self.actions.push_back(PairAction::StoreRules {
                        pair,
                        rules: rules.clone(),
                    });
                }
                self.rules.insert(pair, rules);
            }
            HubPair::Reconsider => self.quiet_until.clear(),
            HubPair::Refused { peer, reason } => {
                tracing::info!(%peer, %reason, "no direct path: the hub refused the pair");
                self.quiet_until.insert(peer, now + REFUSED_SECS);
            }
        }
    }

    /// The hub keys a pair by a group's epochs: stored first, then its
    /// epochs are derived as the group's are fed in. Heard again (new
    /// candidates, or the hub lost track): the path is probed anew.
    fn on_keyed(&mut self, pair: PairId, peer: PairPeer, group: String) {
        if pair.peer_of(self.me) != Some(peer.spoke_id) {
            self.reject("a keyed pair this spoke is not in");
            return;
        }
        if self.via.get(&pair) == Some(&group) {
            let current = self.current.get(&pair).copied().unwrap_or(0);
            let candidates = peer.candidates.clone();
            self.peers.insert(pair, peer);
            if current > 0 {
                self.plane(PairCommand::Use {
                    pair,
                    epoch: current,
                    candidates,
                });
            }
            return;
        }
        self.actions
            .push_back(PairAction::StoreVia { pair, peer, group });
    }

    /// Whether the pair of the last [`PairAction::StoreVia`] is on disk:
    /// only then is it held (the caller feeds in its group's epochs next).
    pub fn via_stored(&mut self, pair: PairId, peer: PairPeer, group: String, ok: bool) {
        if !ok {
            return;
        }
        self.peers.insert(pair, peer);
        self.via.insert(pair, group);
        if let Some(rules) = self.rules.get(&pair).cloned() {
            self.plane(PairCommand::Rules { pair, rules });
        }
    }

    /// The pairs keyed by `group`.
    fn pairs_via(&self, group: &str) -> Vec<PairId> {
        self.via
            .iter()
            .filter(|(_, g)| g.as_str() == group)
            .map(|(p, _)| *p)
            .collect()
    }

    /// The keyed groups some held pair is keyed by.
    pub fn via_groups(&self) -> std::collections::BTreeSet<String> {
        self.via.values().cloned().collect()
    }

    /// Group `group`'s epochs held now, and the one in use: every pair
    /// keyed by it holds the keys derived from them (`me` is this spoke's
    /// static key) and uses the one derived from `current`; keys of epochs
    /// the group no longer holds go.
    pub fn group_epochs(&mut self, group: &str, me: &PublicKey, epochs: &[KeyEpoch], current: u64) {
        let pairs = self.pairs_via(group);
        for pair in pairs {
            let Some(peer) = self.peers.get(&pair).cloned() else {
                continue;
            };
            let held = self.keys.held(&pair);
            for e in epochs.iter().filter(|e| !held.contains(&e.number)) {
                let derived = crate::group_keys::pair_key(group, e, me, &peer.public_key);
                self.keys.hold(pair, derived.clone());
                self.plane(PairCommand::Hold {
                    pair,
                    peer: peer.clone(),
                    epoch: derived,
                });
            }
            for k in held
                .iter()
                .filter(|k| !epochs.iter().any(|e| e.number == **k))
            {
                self.keys.drop_epoch(&pair, *k);
                self.plane(PairCommand::Erase { pair, epoch: *k });
            }
            let was = self.current.get(&pair).copied().unwrap_or(0);
            if current > 0 && current != was && epochs.iter().any(|e| e.number == current) {
                self.current.insert(pair, current);
                self.plane(PairCommand::Use {
                    pair,
                    epoch: current,
                    candidates: peer.candidates.clone(),
                });
            }
        }
    }

    /// This spoke left group `group` (or it is no longer keyed): the pairs
    /// it keyed end here; traffic goes through the relay, which may ask
    /// for a pair of the hub's again.
    pub fn group_ended(&mut self, now: u64, group: &str) {
        let pairs = self.pairs_via(group);
        for pair in pairs {
            self.end(now, pair);
        }
    }

    fn on_switch(
        &mut self,
        now: u64,
        pair: PairId,
        epoch: u64,
        settled: u64,
        candidates: Vec<SocketAddr>,
    ) {
        let current = self.current.get(&pair).copied().unwrap_or(0);
        if epoch <= current && self.peers.contains_key(&pair) {
            // Heard again (our report was lost): settle, report, re-probe.
            self.keys.switch(&pair, epoch, settled, now, self.grace);
            self.send(SpokePair::Switched {
                pair,
                epoch: current,
            });
            self.plane(PairCommand::Use {
                pair,
                epoch: current,
                candidates,
            });
            return;
        }
        if !self.keys.held(&pair).contains(&epoch) {
            // Not held yet: the offer comes again, then the switch.
            return;
        }
        self.switching.insert(
            pair,
            Switching {
                epoch,
                settled,
                candidates,
            },
        );
        self.actions
            .push_back(PairAction::StoreCurrent { pair, epoch });
    }

    /// Whether the epoch of the last [`PairAction::Store`] of `pair` is on
    /// disk: only then is it used and its receipt reported.
    pub fn stored(&mut self, pair: PairId, peer: PairPeer, epoch: KeyEpoch, ok: bool) {
        if !ok {
            return;
        }
        let number = epoch.number;
        self.keys.hold(pair, epoch.clone());
        self.peers.insert(pair, peer.clone());
        self.plane(PairCommand::Hold { pair, peer, epoch });
        if let Some(rules) = self.rules.get(&pair).cloned() {
            self.plane(PairCommand::Rules {
                pair,
                rules: rules.clone(),
            });
            self.actions
                .push_back(PairAction::StoreRules { pair, rules });
        }
        self.send(SpokePair::Receipt {
            pair,
            epoch: number,
        });
    }

    /// Whether the switch of the last [`PairAction::StoreCurrent`] of
    /// `pair` is on disk: only then is it used and reported.
    pub fn switch_stored(&mut self, now: u64, pair: PairId, epoch: u64, ok: bool) {
        let Some(s) = self.switching.remove(&pair).filter(|s| s.epoch == epoch) else {
            return;
        };
        if !ok {
            return;
        }
        if self.keys.switch(&pair, epoch, s.settled, now, self.grace) != PairSwitch::Switched {
            return;
        }
        self.current.insert(pair, epoch);
        self.plane(PairCommand::Use {
            pair,
            epoch,
            candidates: s.candidates,
        });
        self.send(SpokePair::Switched { pair, epoch });
    }

    /// Erases the epochs whose grace has passed.
    pub fn handle_timeout(&mut self, now: u64) {
        let mut by_pair: BTreeMap<PairId, Vec<u64>> = BTreeMap::new();
        for (pair, epoch) in self.keys.take_erasable(now) {
            by_pair.entry(pair).or_default().push(epoch);
        }
        for (pair, epochs) in by_pair {
            for epoch in &epochs {
                self.plane(PairCommand::Erase {
                    pair,
                    epoch: *epoch,
                });
            }
            self.actions.push_back(PairAction::Erase { pair, epochs });
        }
    }

    /// Ends a pair here (the hub said so): its tunnels and keys go.
    pub fn end(&mut self, now: u64, pair: PairId) {
        self.keys.end(&pair);
        self.via.remove(&pair);
        self.current.remove(&pair);
        self.rules.remove(&pair);
        self.switching.remove(&pair);
        if let Some(peer) = self.peers.remove(&pair) {
            // Asking again at once would make the pair the hub just ended.
            self.quiet_until
                .insert(peer.tunnel_addr, now.saturating_add(ASK_EVERY_SECS));
        }
        self.plane(PairCommand::End(pair));
        self.actions.push_back(PairAction::Forget(pair));
    }

    /// Ends every pair (the spoke was revoked).
    pub fn end_all(&mut self, now: u64) {
        let pairs: Vec<PairId> = self.peers.keys().copied().collect();
        for pair in pairs {
            self.end(now, pair);
        }
    }

    fn reject(&mut self, what: &'static str) {
        self.rejected += 1;
        tracing::debug!(what, "pair message dropped");
    }

    fn send(&mut self, msg: SpokePair) {
        self.actions.push_back(PairAction::Send(msg));
    }

    fn plane(&mut self, cmd: PairCommand) {
        self.actions.push_back(PairAction::Plane(cmd));
    }
}

#[cfg(test)]
#[path = "spoke_pairs_tests.rs"]
mod tests;
