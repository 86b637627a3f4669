//! Budgets kept in this process with `governor`: the only limiter without
//! Redis, and the fallback for classes that do not fail closed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::DefaultKeyedRateLimiter;
use governor::clock::Clock as _;

use super::{Bucket, RateLimits, Subject};

/// Time between sweeps of idle subjects. State of a subject whose budget
/// has fully refilled carries no information, so sweeping it keeps memory
/// proportional to the addresses and users seen within one refill period,
/// not to all ever seen.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// One keyed limiter per bucket.
///
/// NOTE: nothing caps the number of subjects between sweeps, so a flood
/// from very many distinct addresses grows memory by a small entry per
/// address until the next sweep. A cap would need a policy for the excess
/// (for example one shared bucket), which would also hit real clients.
#[derive(Debug)]
pub(super) struct LocalBuckets {
    address: DefaultKeyedRateLimiter<Subject>,
    user: DefaultKeyedRateLimiter<Subject>,
    login: DefaultKeyedRateLimiter<Subject>,
    refresh: DefaultKeyedRateLimiter<Subject>,
    ws_ticket: DefaultKeyedRateLimiter<Subject>,
    anonymous_session: DefaultKeyedRateLimiter<Subject>,
    operator: DefaultKeyedRateLimiter<Subject>,
    last_sweep: Mutex<Instant>,
}

impl LocalBuckets {
    pub(super) fn new(limits: &RateLimits) -> Self {
        let keyed = |bucket| DefaultKeyedRateLimiter::keyed(limits.quota(bucket));
        Self {
            address: keyed(Bucket::Address),
            user: keyed(Bucket::User),
            login: keyed(Bucket::Login),
            refresh: keyed(Bucket::Refresh),
            ws_ticket: keyed(Bucket::WsTicket),
            anonymous_session: keyed(Bucket::AnonymousSession),
            operator: keyed(Bucket::Operator),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    fn limiter(&self, bucket: Bucket) -> &DefaultKeyedRateLimiter<Subject> {
        match bucket {
            Bucket::Address => &self.address,
            Bucket::User => &self.user,
            Bucket::Login => &self.login,
            Bucket::Refresh => &self.refresh,
            Bucket::WsTicket => &self.ws_ticket,
            Bucket::AnonymousSession => &self.anonymous_session,
            Bucket::Operator => &self.operator,
        }
    }

    /// Charges each check in order and stops at the first rejection, so a
    /// rejection leaves the later buckets uncharged (earlier ones keep their
    /// charge). Returns the rejecting bucket and its delay.
    pub(super) fn check(&self, checks: &[(Bucket, Subject)]) -> Option<(Bucket, Duration)> {
        self.sweep_if_due();
        checks.iter().find_map(|(bucket, subject)| {
            let limiter = self.limiter(*bucket);
            limiter
                .check_key(subject)
                .err()
                .map(|not_until| (*bucket, not_until.wait_time_from(limiter.clock().now())))
        })
    }

    fn sweep_if_due(&self) {
        // A sweep in progress on another thread is enough.
        let Ok(mut last) = self.last_sweep.try_lock() else {
            return;
        };
        if last.elapsed() < SWEEP_INTERVAL {
            return;
        }
        *last = Instant::now();
        drop(last);
        for limiter in [
            &self.address,
            &self.user,
            &self.login,
            &self.refresh,
            &self.ws_ticket,
            &self.anonymous_session,
            &self.operator,
        ] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}
