//! Budgets shared by every node through Redis: GCRA in one Lua script.
//!
//! Each subject's state in a bucket is one key holding its theoretical
//! arrival time (TAT) in microseconds of Redis server time, so nodes with
//! skewed clocks still agree. The script checks every bucket of a request
//! and charges them only if all pass, atomically, so concurrent requests on
//! different nodes cannot both take the last unit of a budget. Keys expire
//! when their budget has fully refilled.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Bucket, RateLimits, Subject, Unreachable};

/// Maximum wait for Redis on one check, connecting included. A slow Redis
/// then costs each request at most this much before the fallback applies.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// Time after a failure during which checks skip Redis and go straight to
/// the fallback, so an outage does not add [`REDIS_TIMEOUT`] to every
/// request.
const OUTAGE_BACKOFF: Duration = Duration::from_secs(1);

/// KEYS: one per bucket. ARGV: per bucket, the emission interval in
/// microseconds and the burst. Returns `{1, 0, 0}` when every bucket
/// passed and was charged, or `{0, i, wait}` when bucket `i` (from 1)
/// rejected the request and charged nothing, with `wait` microseconds until it passes.
const GCRA_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local next_tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then
    tat = now
  end
  local next_tat = tat + interval
  local wait = next_tat - now - burst * interval
  if wait > 0 then
    return {0, i, wait}
  end
  next_tats[i] = next_tat
end
for i, key in ipairs(KEYS) do
  local ttl_ms = math.ceil((next_tats[i] - now) / 1000)
  redis.call('SET', key, string.format('%d', next_tats[i]), 'PX', string.format('%d', ttl_ms))
end
return {1, 0, 0}
";

/// The Redis side of the limiter.
pub(super) struct SharedBuckets {
    connection: ConnectionManager,
    prefix: String,
    script: Script,
    /// Until when checks skip Redis after a failure; `None` while healthy.
    outage: Mutex<Option<Instant>>,
    /// Whether `outage` is set, so healthy checks skip its lock.
    degraded: AtomicBool,
}

impl std::fmt::Debug for SharedBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBuckets")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl SharedBuckets {
    /// Prepares a connection to `url`; it opens on first use. Keys start
    /// with `prefix`.
    pub(super) fn connect(url: &str, prefix: &str) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
            script: Script::new(GCRA_SCRIPT),
            outage: Mutex::new(None),
            degraded: AtomicBool::new(false),
        })
    }

    /// Charges every check or none. Returns the rejecting bucket and its
    /// delay, or `None` when all passed.
    pub(super) async fn check(
        &self,
        limits: &RateLimits,
        checks: &[(Bucket, Subject)],
    ) -> Result<Option<(Bucket, Duration)>, Unreachable> {
        if self.in_backoff() {
            return Err(Unreachable);
        }
        let mut invocation = self.script.prepare_invoke();
        for (bucket, subject) in checks {
            let quota = limits.quota(*bucket);
            let interval = quota.replenish_interval().as_micros().max(1);
            invocation
                .key(format!(
                    "{}ratelimit:{}:{subject}",
                    self.prefix,
                    bucket.as_str()
                ))
                .arg(u64::try_from(interval).unwrap_or(u64::MAX))
                .arg(quota.burst_size().get());
        }
        let mut connection = self.connection.clone();
        let reply = tokio::time::timeout(
            REDIS_TIMEOUT,
            invocation.invoke_async::<(i64, i64, i64)>(&mut connection),
        )
        .await;
        match reply {
            Ok(Ok((allowed, index, wait))) => {
                self.recovered();
                Ok(rejection(checks, allowed, index, wait))
            }
            Ok(Err(error)) => Err(self.failed(&error.to_string())),
            Err(_) => Err(self.failed("timed out")),
        }
    }

    fn in_backoff(&self) -> bool {
        if !self.degraded.load(Ordering::Acquire) {
            return false;
        }
        let outage = self.outage.lock().unwrap_or_else(|e| e.into_inner());
        outage.is_some_and(|until| Instant::now() < until)
    }

    fn failed(&self, error: &str) -> Unreachable {
        let mut outage = self.outage.lock().unwrap_or_else(|e| e.into_inner());
        if outage.is_none() {
            tracing::warn!(
                error,
                "shared rate limiter unreachable: login, refresh, ws-ticket and \
                 anonymous-session requests get 503, others use this node's limiter",
            );
        }
        *outage = Some(Instant::now() + OUTAGE_BACKOFF);
        self.degraded.store(true, Ordering::Release);
        Unreachable
    }

    fn recovered(&self) {
        if !self.degraded.load(Ordering::Acquire) {
            return;
        }
        let mut outage = self.outage.lock().unwrap_or_else(|e| e.into_inner());
        self.degraded.store(false, Ordering::Release);
        if outage.take().is_some() {
            tracing::warn!("shared rate limiter reachable again");
        }
    }
}

/// Reads the script's reply.
fn rejection(
    checks: &[(Bucket, Subject)],
    allowed: i64,
    index: i64,
    wait_micros: i64,
) -> Option<(Bucket, Duration)> {
    if allowed == 1 {
        return None;
    }
    let bucket = usize::try_from(index)
        .ok()
        .and_then(|index| index.checked_sub(1))
        .and_then(|index| checks.get(index))
        .map_or(Bucket::Address, |(bucket, _)| *bucket);
    let wait = Duration::from_micros(u64::try_from(wait_micros).unwrap_or(0));
    Some((bucket, wait))
}
