//! Which of several hub processes sharing one replicated store may issue
//! keys: the holder of the election lease, and only while it knows the lease
//! is alive.
//!
//! The store's own fencing (every commit compares the leader record and the
//! revision it was based on) is what makes a second writer impossible; this
//! machine decides the rest: when to renew the lease, when a hub that cannot
//! reach the store must stop issuing (its lease may lapse on the servers
//! without it hearing), and when it has lost the lease for good and must
//! step down. Time is passed in.
//!
//! A renewal answered with `ttl` seconds left was renewed by the servers no
//! earlier than it was sent, so the lease lives at least until `sent + ttl`;
//! the hub stops issuing [`SAFETY_MARGIN`] before that. It was renewed no
//! later than its answer came, so past `answered + ttl` the lease is gone
//! unless renewed since: another hub may be active, and this one turns its
//! spokes' control channels away (so they move to it) while its data plane
//! carries on with the keys it holds.

use std::time::{Duration, Instant};

/// Stop issuing this long before the lease's earliest possible end (clock
/// rate differences, a commit in flight).
pub const SAFETY_MARGIN: Duration = Duration::from_millis(750);

/// Where this hub stands in the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Waiting for the lease; issues nothing, serves nothing.
    Standby,
    /// Holds the lease `lease`, alive at least until `alive_until`.
    Active {
        /// The store's lease id.
        lease: i64,
        /// The earliest moment the lease can end without a renewal.
        alive_until: Instant,
    },
    /// Lost the lease for good: must stop serving and campaign anew.
    SteppedDown(StepDown),
}

/// Why an active hub stepped down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepDown {
    /// The servers say the lease is gone (it lapsed while this hub could
    /// not renew it).
    LeaseExpired,
    /// Another hub holds the leader record.
    Replaced,
}

/// What an active hub can do right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Not the active hub.
    Standby,
    /// Active, lease renewed: changes and key issues go ahead.
    Active,
    /// Active, but the lease could not be renewed in time: the data plane
    /// carries on with the keys it holds; changes are refused until the
    /// store answers again.
    Degraded,
    /// Active, but the lease has lapsed unless the servers kept it (they
    /// do across their own restart): another hub may hold it now. The data
    /// plane carries on; spokes are turned away so that they find the
    /// active one, if any.
    Orphaned,
    /// Lost the lease; stopping.
    SteppedDown(StepDown),
}

/// The election state of one hub process.
#[derive(Debug)]
pub struct Leadership {
    ttl: Duration,
    role: Role,
    /// When the renewal in flight was sent.
    in_flight: Option<Instant>,
    /// When the last renewal was sent (answered or not).
    last_sent: Option<Instant>,
    /// The latest moment the lease can last without a renewal since.
    gone_after: Option<Instant>,
}

impl Leadership {
    /// A standby hub that will ask for leases of `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            role: Role::Standby,
            in_flight: None,
            last_sent: None,
            gone_after: None,
        }
    }

    /// The lease length asked for.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Where this hub stands.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Won the election with `lease`, granted for `ttl` by a request sent
    /// at `asked_at` and answered at `answered_at`.
    pub fn elected(&mut self, lease: i64, asked_at: Instant, answered_at: Instant, ttl: Duration) {
        self.role = Role::Active {
            lease,
            alive_until: asked_at + ttl,
        };
        self.in_flight = None;
        self.last_sent = Some(asked_at);
        self.gone_after = Some(answered_at + ttl);
    }

    /// Whether to send a renewal now (then it counts as in flight): a third
    /// of the lease after the last one, none while one is in flight unless
    /// it went unanswered for a third of the lease.
    pub fn poll_renewal(&mut self, now: Instant) -> bool {
        if !matches!(self.role, Role::Active { .. }) {
            return false;
        }
        let every = self.ttl / 3;
        if let Some(sent) = self.in_flight {
            if now.saturating_duration_since(sent) < every {
                return false;
            }
        } else if self
            .last_sent
            .is_some_and(|s| now.saturating_duration_since(s) < every)
        {
            return false;
        }
        self.in_flight = Some(now);
        self.last_sent = Some(now);
        true
    }

    /// The renewal sent at `sent_at` was answered at `answered_at` with
    /// `ttl_left` (zero: the lease is gone).
    pub fn renewed(&mut self, sent_at: Instant, answered_at: Instant, ttl_left: Duration) {
        // Never more than was asked for (a wild answer cannot stretch it).
        let ttl_left = ttl_left.min(self.ttl);
        if self.in_flight == Some(sent_at) {
            self.in_flight = None;
        }
        let Role::Active { lease, alive_until } = self.role else {
            return;
        };
        if ttl_left.is_zero() {
            self.role = Role::SteppedDown(StepDown::LeaseExpired);
            return;
        }
        self.role = Role::Active {
            lease,
            alive_until: alive_until.max(sent_at + ttl_left),
        };
        let until = answered_at + ttl_left;
        self.gone_after = Some(self.gone_after.map_or(until, |g| g.max(until)));
    }

    /// The renewal sent at `sent_at` got no answer (the store unreachable):
    /// the next goes out at once (to another store member).
    pub fn renewal_failed(&mut self, sent_at: Instant) {
        if self.in_flight == Some(sent_at) {
            self.in_flight = None;
            self.last_sent = None;
        }
    }

    /// The leader record names another hub, or a commit was refused because
    /// it does.
    pub fn replaced(&mut self) {
        if matches!(self.role, Role::Active { .. }) {
            self.role = Role::SteppedDown(StepDown::Replaced);
        }
    }

    /// Whether this hub may commit a change or issue a key at `now`.
    pub fn may_issue(&self, now: Instant) -> bool {
        match self.role {
            Role::Active { alive_until, .. } => now + SAFETY_MARGIN < alive_until,
            _ => false,
        }
    }

    /// What this hub can do at `now`.
    pub fn health(&self, now: Instant) -> Health {
        match self.role {
            Role::Standby => Health::Standby,
            Role::SteppedDown(why) => Health::SteppedDown(why),
            Role::Active { .. } if self.may_issue(now) => Health::Active,
            Role::Active { .. } if self.gone_after.is_some_and(|g| now >= g) => Health::Orphaned,
            Role::Active { .. } => Health::Degraded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(6);

    fn active() -> (Leadership, Instant) {
        let t0 = Instant::now();
        let mut l = Leadership::new(TTL);
        assert_eq!(l.health(t0), Health::Standby);
        assert!(!l.may_issue(t0) && !l.poll_renewal(t0));
        l.elected(7, t0, t0, TTL);
        (l, t0)
    }

    #[test]
    fn renewals_every_third_of_the_lease_keep_the_hub_issuing() {
        let (mut l, t0) = active();
        assert!(l.may_issue(t0));
        assert!(!l.poll_renewal(t0 + Duration::from_secs(1)));
        let mut t = t0;
        for _ in 0..10 {
            t += Duration::from_secs(2);
            assert!(l.poll_renewal(t), "renewal due at {:?}", t - t0);
            assert!(!l.poll_renewal(t), "one in flight at a time");
            l.renewed(t, t, TTL);
            assert_eq!(l.health(t + Duration::from_secs(1)), Health::Active);
        }
    }

    #[test]
    fn an_unrenewed_lease_stops_issuing_before_it_can_end() {
        let (mut l, t0) = active();
        // The store stops answering: renewals go out and fail.
        let mut t = t0;
        while t < t0 + Duration::from_secs(20) {
            if l.poll_renewal(t) {
                l.renewal_failed(t);
            }
            let earliest_end = t0 + TTL;
            if t >= earliest_end {
                // The lease is gone unless the servers kept it.
                assert_eq!(l.health(t), Health::Orphaned);
            } else if t + SAFETY_MARGIN >= earliest_end {
                assert!(!l.may_issue(t), "issuing at {:?}", t - t0);
                assert_eq!(l.health(t), Health::Degraded);
            }
            t += Duration::from_millis(250);
        }
        // The store is back and the lease survived: issuing again.
        assert!(l.poll_renewal(t));
        l.renewed(t, t, Duration::from_secs(2));
        assert_eq!(l.health(t), Health::Active);
        // A renewal only counts from when it was sent, never from its answer.
        assert!(!l.may_issue(t + Duration::from_secs(2) - SAFETY_MARGIN));
    }

    #[test]
    fn a_lapsed_or_taken_lease_steps_down_for_good() {
        let (mut l, t0) = active();
        let t = t0 + Duration::from_secs(2);
        assert!(l.poll_renewal(t));
        l.renewed(t, t, Duration::ZERO);
        assert_eq!(l.role(), Role::SteppedDown(StepDown::LeaseExpired));
        assert!(!l.may_issue(t) && !l.poll_renewal(t + TTL));
        // A late answer does not bring it back.
        l.renewed(t, t, TTL);
        assert!(!l.may_issue(t));

        let (mut l, t0) = active();
        l.replaced();
        assert_eq!(l.health(t0), Health::SteppedDown(StepDown::Replaced));
        assert!(!l.may_issue(t0));
    }

    #[test]
    fn a_stale_answer_never_shortens_the_lease() {
        let (mut l, t0) = active();
        let t1 = t0 + Duration::from_secs(2);
        assert!(l.poll_renewal(t1));
        l.renewed(t1, t1, TTL);
        // An answer to an older request, with less time left.
        l.renewed(t0, t0, Duration::from_secs(1));
        assert!(l.may_issue(t1 + TTL - SAFETY_MARGIN - Duration::from_millis(10)));
    }
}
