//! Direct mode in the spoke's control loop: carries out what
//! [`SpokePairs`] asks (stores first, then the data plane, then the hub),
//! and feeds it what the data plane reports.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};
use tasuki_core::control::{HubPair, SpokeMessage};
use tasuki_core::spoke_pairs::{PairAction, SpokePairs};
use tasuki_core::spoke_session::SpokeSession;

use crate::control::Control;
use crate::dataplane::{DpCommand, SpokeEvent};

/// Local addresses offered to the hub as candidates.
const MAX_LOCAL: usize = 8;

impl Control {
    /// A plain call on the pairs (the lock is never held across an await).
    pub(crate) fn with_pairs<R>(&self, f: impl FnOnce(&mut SpokePairs) -> R) -> R {
        let mut pairs = self
            .pairs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut pairs)
    }

    /// A pair message from the hub, opened with the link epochs stored
    /// (an offer is sealed under one of them).
    pub(crate) fn on_pair_message(&self, msg: HubPair) {
        // Unreadable: the hub offers it again.
        let Some(links) = self.link_epochs("a pair offer") else {
            return;
        };
        self.with_pairs(|p| p.handle(tasuki_shell::boot_secs(), msg, &links));
    }

    /// The link epochs stored (a pair's or group's epoch is sealed under
    /// one of them); `None`, logged, when the store cannot be read.
    pub(crate) fn link_epochs(&self, what: &str) -> Option<Vec<tasuki_core::keys::KeyEpoch>> {
        match self.store.epochs() {
            Ok(held) => Some(held.into_iter().map(|h| h.epoch).collect()),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot read the link epochs for {what}");
                None
            }
        }
    }

    /// What the data plane reports: for the session, or for the pairs.
    pub(crate) fn on_event(&self, session: &mut SpokeSession, now: u64, event: SpokeEvent) {
        match event {
            SpokeEvent::Report(report) => session.handle_report(now, report),
            SpokeEvent::AskPair(peer) => {
                self.with_pairs(|p| p.ask(tasuki_shell::boot_secs(), peer))
            }
            SpokeEvent::PairsUsage(usage) => self.with_pairs(|p| p.usage(usage)),
            SpokeEvent::Listening(port) => {
                *self
                    .dp_port
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(port);
                self.send_facts();
            }
        }
    }

    /// Tells the hub where the data-plane socket is on our own networks
    /// and which pairs we hold (after each attach, and once it listens).
    pub(crate) fn send_facts(&self) {
        let port = *self
            .dp_port
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let local = port.map(|p| self.local_candidates(p)).unwrap_or_default();
        if let Some(config) = self.config.borrow().as_ref() {
            let me = config.spoke_id;
            self.with_pairs(|p| p.set_me(me));
        }
        self.with_pairs(|p| p.facts(local));
    }

    /// Gives the pairs keyed by `group` the group's epochs held now (they
    /// derive their keys from them) and the one in use.
    pub(crate) fn feed_group(&self, group: &str) {
        let (epochs, current) = self.with_groups(|g| g.epochs_of(group));
        let me = self.key.public();
        self.with_pairs(|p| p.group_epochs(group, &me, &epochs, current));
    }

    /// Every group some held pair is keyed by, fed (after a start).
    pub(crate) fn feed_all_groups(&self) {
        for group in self.with_pairs(|p| p.via_groups()) {
            self.feed_group(&group);
        }
    }

    /// This machine's IPv4 addresses outside the tunnel network, with the
    /// data-plane port.
    fn local_candidates(&self, port: u16) -> Vec<SocketAddr> {
        let tunnel = self.config.borrow().as_ref().map(|c| c.tunnel_addr.trunc());
        let addrs = match nix::ifaddrs::getifaddrs() {
            Ok(addrs) => addrs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list local addresses for direct mode");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for ifa in addrs {
            let Some(ip) = ifa
                .address
                .as_ref()
                .and_then(|a| a.as_sockaddr_in())
                .map(|a| a.ip())
            else {
                continue;
            };
            if ip.is_loopback() || ip.is_unspecified() || tunnel.is_some_and(|t| t.contains(&ip)) {
                continue;
            }
            let at = SocketAddr::new(IpAddr::V4(ip), port);
            if !out.contains(&at) && out.len() < MAX_LOCAL {
                out.push(at);
            }
        }
        out
    }

    /// Does what the pairs ask, in order, until they ask nothing more:
    /// stores (and tells the pairs whether they worked), the data plane,
    /// messages for the hub (through the session, which sends them next).
    pub(crate) async fn carry_out_pairs(&self, session: &mut SpokeSession, now: u64) -> Result<()> {
        while let Some(action) = self.with_pairs(SpokePairs::poll_action) {
            match action {
                PairAction::Send(msg) => session.send_other(now, SpokeMessage::Pair(msg)),
                PairAction::Store { pair, peer, epoch } => {
                    let stored = self.store.save_pair_epoch(pair, &peer, &epoch);
                    match &stored {
                        Ok(()) => {
                            tracing::info!(%pair, epoch = epoch.number, peer = %peer.name, "pair epoch received")
                        }
                        Err(e) => {
                            tracing::error!(%pair, error = %format!("{e:#}"), "cannot store a pair epoch; the hub sends it again")
                        }
                    }
                    let ok = stored.is_ok();
                    self.with_pairs(|p| p.stored(pair, peer, epoch, ok));
                }
                PairAction::StoreCurrent { pair, epoch } => {
                    let stored = self.store.save_pair_current(pair, epoch);
                    if let Err(e) = &stored {
                        tracing::error!(%pair, epoch, error = %format!("{e:#}"), "cannot store a pair switch; the hub sends it again");
                    }
                    let ok = stored.is_ok();
                    let boot = tasuki_shell::boot_secs();
                    self.with_pairs(|p| p.switch_stored(boot, pair, epoch, ok));
                }
                PairAction::Erase { pair, epochs } => {
                    if let Err(e) = self.store.erase_pair_epochs(pair, &epochs) {
                        tracing::error!(%pair, ?epochs, error = %format!("{e:#}"), "cannot erase pair epochs");
                    }
                }
                PairAction::StoreVia { pair, peer, group } => {
                    let stored = self.store.save_pair_via(pair, &peer, &group);
                    match &stored {
                        Ok(()) => {
                            tracing::info!(%pair, peer = %peer.name, group, "pair keyed by its group")
                        }
                        Err(e) => {
                            tracing::error!(%pair, error = %format!("{e:#}"), "cannot store a keyed pair; the hub sends it again when asked")
                        }
                    }
                    let ok = stored.is_ok();
                    self.with_pairs(|p| p.via_stored(pair, peer, group.clone(), ok));
                    self.feed_group(&group);
                }
                PairAction::StoreRules { pair, rules } => {
                    // The data plane has them already; a restart before
                    // they are stored starts with none (nothing direct
                    // passes) until the hub sends them again.
                    if let Err(e) = self.store.save_pair_rules(pair, &rules) {
                        tracing::error!(%pair, error = %format!("{e:#}"), "cannot store a pair's access rules");
                    }
                }
                PairAction::Forget(pair) => {
                    tracing::info!(%pair, "pair ended");
                    if let Err(e) = self.store.forget_pair(pair) {
                        tracing::error!(%pair, error = %format!("{e:#}"), "cannot erase an ended pair");
                    }
                }
                PairAction::Plane(cmd) => self
                    .dataplane
                    .send(DpCommand::Pair(cmd))
                    .await
                    .context("data plane stopped")?,
            }
        }
        Ok(())
    }
}
