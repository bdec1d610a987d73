//! Which way a spoke's traffic to one peer spoke goes (direct mode, claim
//! 10): through the hub's relay, or straight to the peer. The relay is
//! always there; the direct path is tried on top of it and used only while
//! it is proven to work.
//!
//! - **Probing.** When the hub tells both spokes to switch to a pair epoch
//!   (the same moment for both, so both NATs open for each other), the
//!   spoke sends handshake initiations under the pair epoch to every
//!   candidate endpoint of the peer, again every [`PathConfig::probe_every_ms`],
//!   for [`PathConfig::probe_for_ms`] at most.
//! - **Upgrade.** The first candidate a packet of the pair's session is
//!   decrypted from carries the traffic from then on (a completed
//!   handshake alone is not enough: the relay keeps carrying until the
//!   direct path has delivered something).
//! - **Fall-back.** While traffic goes direct, something authenticated must
//!   come back within [`PathConfig::trust_ms`] of sending (the receiving
//!   side answers data it cannot answer otherwise with a keepalive); if
//!   nothing does, traffic is back on the relay at once and direct is tried
//!   again after a back-off that doubles up to [`PathConfig::backoff_max_ms`].
//! - **Roaming.** A packet of the session from another address moves the
//!   direct path there, as WireGuard's endpoint roaming does.
//!
//! Time is milliseconds on any monotonic clock, passed in.

use std::net::SocketAddr;

/// Where traffic to the peer goes now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Through the hub.
    Relay,
    /// Straight to the peer at this address.
    Direct(SocketAddr),
}

/// What moved the path, for logs and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathChange {
    /// The direct path carries traffic now.
    Upgraded(SocketAddr),
    /// The peer answers from another address now.
    Roamed(SocketAddr),
    /// The direct path stopped answering: back on the relay.
    FellBack,
    /// No candidate answered the probes: the relay carries on.
    PunchFailed,
}

/// The timings of the path rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathConfig {
    /// Between rounds of probes to every candidate.
    pub probe_every_ms: u64,
    /// How long a round of probing lasts before it counts as failed.
    pub probe_for_ms: u64,
    /// How long sent traffic may go unanswered on the direct path.
    pub trust_ms: u64,
    /// The first wait before direct is tried again.
    pub backoff_min_ms: u64,
    /// The longest wait before direct is tried again.
    pub backoff_max_ms: u64,
    /// How long after an upgrade the peer's traffic may still come through
    /// the relay (it upgrades a moment later).
    pub settle_ms: u64,
}

impl Default for PathConfig {
    fn default() -> Self {
        Self {
            probe_every_ms: 1_000,
            probe_for_ms: 10_000,
            trust_ms: 5_000,
            backoff_min_ms: 2_000,
            backoff_max_ms: 120_000,
            settle_ms: 2_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// On the relay; direct is tried again at `retry_at` (never: `None`,
    /// until the hub gives candidates).
    Relay { retry_at: Option<u64> },
    /// Probing the candidates until `until`; the next round at `next`.
    Probing { until: u64, next: u64 },
    /// On the direct path; `unanswered_since` is when traffic was first
    /// sent after the last authenticated packet came back.
    Direct {
        endpoint: SocketAddr,
        unanswered_since: Option<u64>,
        since: u64,
    },
}

/// How often each thing happened on this peer's path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathCounters {
    /// Moves to the direct path.
    pub upgrades: u64,
    /// Moves back to the relay.
    pub fallbacks: u64,
    /// Rounds of probing nobody answered.
    pub punch_failures: u64,
}

/// The path to one peer spoke.
#[derive(Clone, Debug)]
pub struct PeerPath {
    config: PathConfig,
    state: State,
    candidates: Vec<SocketAddr>,
    backoff: u64,
    counters: PathCounters,
}

impl PeerPath {
    /// A peer reached through the relay, with no candidates yet.
    pub fn new(config: PathConfig) -> Self {
        Self {
            config,
            state: State::Relay { retry_at: None },
            candidates: Vec::new(),
            backoff: config.backoff_min_ms,
            counters: PathCounters::default(),
        }
    }

    /// Where traffic to the peer goes now.
    pub fn path(&self) -> Path {
        match self.state {
            State::Direct { endpoint, .. } => Path::Direct(endpoint),
            _ => Path::Relay,
        }
    }

    /// How often the path moved.
    pub fn counters(&self) -> PathCounters {
        self.counters
    }

    /// The peer's candidate endpoints, from the hub.
    pub fn candidates(&self) -> &[SocketAddr] {
        &self.candidates
    }

    /// The hub told both sides to go direct now, with the peer's
    /// candidates: probing starts at once (a path that works stays).
    pub fn probe_now(&mut self, now: u64, candidates: Vec<SocketAddr>) {
        self.candidates = candidates;
        self.backoff = self.config.backoff_min_ms;
        if !matches!(self.state, State::Direct { .. }) {
            self.start_probing(now);
        }
    }

    fn start_probing(&mut self, now: u64) {
        self.state = if self.candidates.is_empty() {
            State::Relay { retry_at: None }
        } else {
            State::Probing {
                until: now.saturating_add(self.config.probe_for_ms),
                next: now,
            }
        };
    }

    /// The candidates to send a handshake initiation to now (every one,
    /// once a round); empty between rounds and off the probing state.
    pub fn poll_probe(&mut self, now: u64) -> Vec<SocketAddr> {
        match &mut self.state {
            State::Probing { until, next } if now >= *next && now < *until => {
                *next = now.saturating_add(self.config.probe_every_ms);
                self.candidates.clone()
            }
            _ => Vec::new(),
        }
    }

    /// A packet of the pair's session (data or keepalive) was decrypted,
    /// coming from `from`.
    pub fn on_authenticated(&mut self, from: SocketAddr, now: u64) -> Option<PathChange> {
        match &mut self.state {
            State::Direct {
                endpoint,
                unanswered_since,
                ..
            } => {
                *unanswered_since = None;
                if *endpoint != from {
                    *endpoint = from;
                    return Some(PathChange::Roamed(from));
                }
                None
            }
            _ => {
                self.state = State::Direct {
                    endpoint: from,
                    unanswered_since: None,
                    since: now,
                };
                self.backoff = self.config.backoff_min_ms;
                self.counters.upgrades += 1;
                Some(PathChange::Upgraded(from))
            }
        }
    }

    /// A packet from the peer came through the relay: once the direct
    /// path has settled ([`PathConfig::settle_ms`] after the upgrade),
    /// that means the peer lost it (it fell back, or its address changed
    /// and it has not probed yet), so traffic goes back to the relay at
    /// once instead of into a path the peer no longer reads from.
    pub fn on_peer_relayed(&mut self, now: u64) -> Option<PathChange> {
        match self.state {
            State::Direct { since, .. } if now.saturating_sub(since) >= self.config.settle_ms => {
                self.counters.fallbacks += 1;
                self.back_off(now);
                Some(PathChange::FellBack)
            }
            _ => None,
        }
    }

    /// Traffic was sent on the direct path: something must come back
    /// within the trust window.
    pub fn on_sent(&mut self, now: u64) {
        if let State::Direct {
            unanswered_since, ..
        } = &mut self.state
        {
            unanswered_since.get_or_insert(now);
        }
    }

    /// Timeouts: a direct path that stopped answering falls back, a round
    /// of probes that nobody answered ends, a back-off that passed starts
    /// probing again.
    pub fn tick(&mut self, now: u64) -> Option<PathChange> {
        match self.state {
            State::Direct {
                unanswered_since: Some(since),
                ..
            } if now.saturating_sub(since) >= self.config.trust_ms => {
                self.counters.fallbacks += 1;
                self.back_off(now);
                Some(PathChange::FellBack)
            }
            State::Probing { until, .. } if now >= until => {
                self.counters.punch_failures += 1;
                self.back_off(now);
                Some(PathChange::PunchFailed)
            }
            State::Relay { retry_at: Some(at) } if now >= at => {
                self.start_probing(now);
                None
            }
            _ => None,
        }
    }

    /// Back on the relay; direct again after the back-off, which doubles.
    fn back_off(&mut self, now: u64) {
        self.state = State::Relay {
            retry_at: Some(now.saturating_add(self.backoff)),
        };
        self.backoff = (self.backoff.saturating_mul(2)).min(self.config.backoff_max_ms);
    }

    /// The pair ended (or its key): the relay carries everything, and
    /// nothing is tried until the hub offers a pair again.
    pub fn end(&mut self) {
        self.state = State::Relay { retry_at: None };
        self.candidates.clear();
    }

    /// When [`PeerPath::tick`] or [`PeerPath::poll_probe`] next has
    /// something to do, for the caller's timer.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            State::Direct {
                unanswered_since, ..
            } => unanswered_since.map(|s| s.saturating_add(self.config.trust_ms)),
            State::Probing { until, next } => Some(next.min(until)),
            State::Relay { retry_at } => retry_at,
        }
    }
}

#[cfg(test)]
#[path = "path_tests.rs"]
mod tests;
