//! The audit trail: who did what, to what, with which outcome, from where.
//!
//! Call sites build an [`AuditEvent`] and hand it to [`AuditLog::record`]
//! (waits until the event is stored, at most [`ACK_TIMEOUT`]) or
//! [`AuditLog::submit`] (returns at once). Neither ever fails the caller: a
//! write that fails is logged once per batch at error level and counted in
//! [`AuditLog::failed_events`]. One writer task per process appends queued
//! events in batches; [`storage`] chains them under a database lock, so
//! several processes sharing one database still build one chain.
//!
//! Inside an HTTP request, [`request`] supplies the request id, the client
//! address and the authenticated caller, and records one event per
//! state-changing or denied request. Events must never carry secrets: no
//! passwords, tokens, secret or key-value values, message text, headers or
//! query strings, only ids, names and reasons chosen by the server.
//!
//! [`chain`] defines the hash chain, and [`verify`] walks the stored one;
//! `botserver audit verify`, `export` and `prune` (in `crate::cli`) run
//! them from the command line.

pub mod chain;
pub mod request;
pub mod storage;
pub mod verify;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use self::request::RequestInfo;
use self::storage::NewRecord;
use crate::storage::{Db, TenantId, UserId};

/// Events waiting for the writer. When the database stalls the queue fills,
/// and further events are counted as failed instead of growing memory
/// without bound.
pub const QUEUE_CAPACITY: usize = 8192;

/// Most events appended in one transaction.
const MAX_BATCH: usize = 256;

/// Maximum time [`AuditLog::record`] waits for its event to be stored. A stalled
/// database delays responses by at most this; the event stays queued.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Attempts at writing one batch, and the pause before the second and third.
const WRITE_ATTEMPTS: u32 = 3;
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Maximum target length kept, in characters. Targets may come from request paths,
/// which a client chooses.
pub const MAX_TARGET_CHARS: usize = 256;

/// Maximum length of a text value in `details`, in characters; longer
/// ones are cut.
pub const MAX_DETAIL_CHARS: usize = 256;

/// Default days events are kept before retention deletes them.
pub const DEFAULT_RETENTION_DAYS: u32 = 365;

/// Minimum retention that may be configured, in days. The database rejects
/// pruning events younger than 30 days; the extra day absorbs clock
/// differences between servers and the database.
pub const MIN_RETENTION_DAYS: u32 = 31;

/// Time between retention runs of a server.
const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// The result of an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It was done.
    Success,
    /// It was attempted and failed: bad input, wrong password, a fault.
    Failure,
    /// A policy refused it: missing role, other tenant, capability denied.
    Denied,
}

impl Outcome {
    /// Returns the stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Denied => "denied",
        }
    }
}

/// Who acted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// A signed-in account.
    User(UserId),
    /// An account string as the bot layer uses it: a user id, or
    /// `visitor:<uuid>` for an anonymous visitor of a public bot.
    Account(String),
    /// A visitor of a public bot.
    Visitor(Uuid),
    /// A client that did not authenticate.
    Anonymous,
    /// The server itself: breakers, retention, command-line tools.
    System,
}

impl Actor {
    fn stored(&self) -> String {
        match self {
            Self::User(id) => id.to_string(),
            Self::Account(account) => truncate(account, MAX_TARGET_CHARS),
            Self::Visitor(id) => format!("visitor:{id}"),
            Self::Anonymous => "anonymous".to_owned(),
            Self::System => "system".to_owned(),
        }
    }
}

/// One event to record. Fields left unset inside an HTTP request are taken
/// from the request: the caller as actor and the tenant it resolved.
#[derive(Clone, Debug)]
pub struct AuditEvent {
    action: &'static str,
    outcome: Outcome,
    actor: Option<Actor>,
    tenant: Option<TenantId>,
    target: Option<String>,
    request: Option<RequestInfo>,
    details: Map<String, Value>,
}

impl AuditEvent {
    /// Starts an event. `action` is a stable dotted name such as
    /// `auth.login.failure`; it is `'static` so that it is never built from
    /// input.
    pub fn new(action: &'static str, outcome: Outcome) -> Self {
        Self {
            action,
            outcome,
            actor: None,
            tenant: None,
            target: None,
            request: None,
            details: Map::new(),
        }
    }

    /// Sets who acted.
    #[must_use]
    pub fn actor(mut self, actor: Actor) -> Self {
        self.actor = Some(actor);
        self
    }

    /// Sets the tenant the event concerns.
    #[must_use]
    pub fn tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Sets what the action was aimed at, such as `user:<id>`; cut to
    /// [`MAX_TARGET_CHARS`].
    #[must_use]
    pub fn target(mut self, target: impl AsRef<str>) -> Self {
        self.target = Some(truncate(target.as_ref(), MAX_TARGET_CHARS));
        self
    }

    /// Sets the request the event belongs to, for events recorded outside
    /// the request's task (chat connections).
    #[must_use]
    pub fn request(mut self, request: &RequestInfo) -> Self {
        self.request = Some(request.clone());
        self
    }

    /// Adds a detail. Text is cut to [`MAX_DETAIL_CHARS`]. Never pass a
    /// secret, token, password, message text or key-value value.
    #[must_use]
    pub fn detail(mut self, key: &'static str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), bounded(value.into()));
        self
    }

    /// Returns the action name.
    pub fn action(&self) -> &'static str {
        self.action
    }

    fn into_record(mut self) -> NewRecord {
        let scope = request::current_scope();
        let request = self
            .request
            .take()
            .or_else(|| scope.as_ref().map(|scope| scope.info().clone()));
        let (scope_actor, scope_tenant) = scope
            .as_ref()
            .map(|scope| scope.caller())
            .unwrap_or_default();
        let actor = self
            .actor
            .map(|actor| actor.stored())
            .or(scope_actor.map(|user| user.to_string()))
            .unwrap_or_else(|| Actor::Anonymous.stored());
        let tenant = self.tenant.or(scope_tenant);
        NewRecord {
            occurred_at_ms: now_ms(),
            actor,
            tenant_id: tenant.map(|tenant| tenant.to_string()),
            action: self.action.to_owned(),
            target: self.target,
            outcome: self.outcome.as_str().to_owned(),
            request_id: request.as_ref().and_then(|info| info.request_id.clone()),
            source: request
                .as_ref()
                .and_then(|info| info.source.map(|address| address.to_string())),
            details: Value::Object(self.details).to_string(),
        }
    }
}

/// Cuts long text in a detail value, at any depth.
fn bounded(value: Value) -> Value {
    match value {
        Value::String(text) => Value::String(truncate(&text, MAX_DETAIL_CHARS)),
        Value::Array(items) => Value::Array(items.into_iter().map(bounded).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| (truncate(&key, MAX_DETAIL_CHARS), bounded(value)))
                .collect(),
        ),
        other => other,
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// Returns the current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis());
    i64::try_from(millis).unwrap_or(i64::MAX)
}

/// Formats Unix milliseconds as RFC 3339 in UTC, such as
/// `2026-01-02T03:04:05.678Z`.
pub fn format_time(unix_ms: i64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix_ms.to_string())
}

/// Parses a time given as RFC 3339 (`2026-01-02T03:04:05Z`, any offset) or
/// as whole Unix seconds, into Unix milliseconds.
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<i64>() {
        return seconds.checked_mul(1000);
    }
    let time = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Settings of the audit trail.
#[derive(Clone, Copy, Debug)]
pub struct AuditSettings {
    /// `BOTSERVER_ENABLE_AUDIT`: whether events are recorded at all.
    pub enabled: bool,
    /// `BOTSERVER_AUDIT_API_CALLS`: whether every API request is recorded,
    /// not only state changes, data access and denials.
    pub api_calls: bool,
    /// `BOTSERVER_AUDIT_RETENTION_DAYS`: age at which events are deleted.
    pub retention_days: u32,
}

impl AuditSettings {
    /// Reads the settings from `config`.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            enabled: config.extra.enable_audit,
            api_calls: config.extra.audit_api_calls,
            retention_days: config
                .extra
                .audit_retention_days
                .unwrap_or(DEFAULT_RETENTION_DAYS),
        }
    }
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            api_calls: false,
            retention_days: DEFAULT_RETENTION_DAYS,
        }
    }
}

/// Counts of what the writer did, for metrics.
#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    failed: AtomicU64,
}

struct Pending {
    record: NewRecord,
    stored: Option<oneshot::Sender<bool>>,
}

#[derive(Debug)]
struct Recorder {
    queue: mpsc::Sender<Pending>,
    counters: Arc<Counters>,
    api_calls: bool,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("action", &self.record.action)
            .finish_non_exhaustive()
    }
}

/// The recorder handle every part of the server shares. Cloning is cheap.
#[derive(Clone, Debug, Default)]
pub struct AuditLog {
    recorder: Option<Arc<Recorder>>,
}

impl AuditLog {
    /// Returns a log that records nothing, for `BOTSERVER_ENABLE_AUDIT=false` and
    /// for tools without a server.
    pub fn disabled() -> Self {
        Self { recorder: None }
    }

    /// Starts the writer task over `db` and, when enabled, the hourly
    /// retention task. Must run inside a Tokio runtime.
    pub fn start(db: Db, settings: AuditSettings) -> Self {
        if !settings.enabled {
            return Self::disabled();
        }
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        tokio::spawn(write_loop(db.clone(), receiver, Arc::clone(&counters)));
        tokio::spawn(retention_loop(db, settings.retention_days));
        Self {
            recorder: Some(Arc::new(Recorder {
                queue,
                counters,
                api_calls: settings.api_calls,
            })),
        }
    }

    /// Returns whether events are recorded.
    pub fn is_enabled(&self) -> bool {
        self.recorder.is_some()
    }

    /// Returns whether every API request is recorded.
    pub fn records_api_calls(&self) -> bool {
        self.recorder
            .as_ref()
            .is_some_and(|recorder| recorder.api_calls)
    }

    /// Records `event` and waits until it is stored, at most
    /// [`ACK_TIMEOUT`]. A failure is logged and counted, never returned.
    pub async fn record(&self, event: AuditEvent) {
        let Some(recorder) = &self.recorder else {
            return;
        };
        let (stored, ack) = oneshot::channel();
        if !recorder.enqueue(event, Some(stored)) {
            return;
        }
        // Past the timeout the event stays queued; the writer stores it or
        // counts the failure.
        let _ = tokio::time::timeout(ACK_TIMEOUT, ack).await;
    }

    /// Queues `event` without waiting. For callers that cannot await.
    pub fn submit(&self, event: AuditEvent) {
        if let Some(recorder) = &self.recorder {
            recorder.enqueue(event, None);
        }
    }

    /// Returns the number of events stored since start.
    pub fn written_events(&self) -> u64 {
        self.recorder.as_ref().map_or(0, |recorder| {
            recorder.counters.written.load(Ordering::Relaxed)
        })
    }

    /// Returns the number of events lost since start: the queue was full
    /// or the database rejected them. Each loss was also logged.
    pub fn failed_events(&self) -> u64 {
        self.recorder.as_ref().map_or(0, |recorder| {
            recorder.counters.failed.load(Ordering::Relaxed)
        })
    }
}

impl Recorder {
    /// Queues an event; returns false when it was lost instead.
    fn enqueue(&self, event: AuditEvent, stored: Option<oneshot::Sender<bool>>) -> bool {
        let action = event.action;
        let pending = Pending {
            record: event.into_record(),
            stored,
        };
        match self.queue.try_send(pending) {
            Ok(()) => true,
            Err(error) => {
                let failed = self.counters.failed.fetch_add(1, Ordering::Relaxed) + 1;
                let reason = match error {
                    mpsc::error::TrySendError::Full(_) => "the queue is full",
                    mpsc::error::TrySendError::Closed(_) => "the writer stopped",
                };
                // One line per 100 losses keeps a stalled database from
                // flooding the log as well.
                if failed % 100 == 1 {
                    tracing::error!(
                        audit.action = action,
                        audit.failed = failed,
                        "audit event lost: {reason}"
                    );
                }
                false
            }
        }
    }
}

/// Appends queued events in batches until every sender is gone.
async fn write_loop(db: Db, mut receiver: mpsc::Receiver<Pending>, counters: Arc<Counters>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let records: Vec<NewRecord> = batch.iter().map(|pending| pending.record.clone()).collect();
        let stored = write_batch(&db, &records).await;
        let count = records.len() as u64;
        if stored {
            counters.written.fetch_add(count, Ordering::Relaxed);
        } else {
            counters.failed.fetch_add(count, Ordering::Relaxed);
        }
        for pending in batch.drain(..) {
            if let Some(ack) = pending.stored {
                let _ = ack.send(stored);
            }
        }
    }
}

async fn write_batch(db: &Db, records: &[NewRecord]) -> bool {
    let mut attempt = 1;
    loop {
        match storage::append(db, records).await {
            Ok(_) => return true,
            Err(error) if attempt < WRITE_ATTEMPTS => {
                tracing::warn!(error = %error, attempt, "audit write failed; retrying");
                tokio::time::sleep(RETRY_PAUSE * attempt).await;
                attempt += 1;
            }
            Err(error) => {
                let actions: Vec<&str> = records.iter().map(|r| r.action.as_str()).collect();
                tracing::error!(
                    error = %error,
                    audit.events = records.len(),
                    audit.actions = ?actions,
                    "failed to store audit events; they are lost"
                );
                return false;
            }
        }
    }
}

/// Deletes events older than the retention at start and every hour.
async fn retention_loop(db: Db, retention_days: u32) {
    let mut interval = tokio::time::interval(RETENTION_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(error) = apply_retention(&db, retention_days).await {
            tracing::error!(error = %error, "audit retention failed");
        }
    }
}

/// Deletes events older than `retention_days` days, leaving a checkpoint.
/// Returns the checkpoint and the number of deleted events, or `None` when
/// none was old enough.
///
/// # Errors
///
/// Returns [`crate::storage::StorageError`] when the database fails or
/// rejects the checkpoint.
pub async fn apply_retention(
    db: &Db,
    retention_days: u32,
) -> Result<Option<(storage::Checkpoint, u64)>, crate::storage::StorageError> {
    let now = now_ms();
    let days = i64::from(retention_days.max(MIN_RETENTION_DAYS));
    let cutoff = now - days * 86_400_000;
    let pruned = storage::prune(db, cutoff, now).await?;
    if let Some((checkpoint, deleted)) = &pruned {
        tracing::info!(
            audit.checkpoint = checkpoint.seq,
            audit.deleted = deleted,
            "audit events past retention deleted"
        );
        let event = AuditEvent::new("audit.prune", Outcome::Success)
            .actor(Actor::System)
            .detail("checkpoint_seq", checkpoint.seq)
            .detail("deleted", *deleted)
            .detail("retention_days", retention_days);
        storage::append(db, &[event.into_record()]).await?;
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_details_and_targets_are_cut() {
        let long = "x".repeat(10_000);
        let event = AuditEvent::new("test.event", Outcome::Success)
            .target(&long)
            .detail("text", long.as_str())
            .detail("list", vec![long.clone()]);
        let record = event.into_record();
        assert_eq!(
            record.target.map(|t| t.chars().count()),
            Some(MAX_TARGET_CHARS)
        );
        let details: Value = serde_json::from_str(&record.details).unwrap_or_default();
        assert_eq!(
            details["text"].as_str().map(str::len),
            Some(MAX_DETAIL_CHARS)
        );
        assert_eq!(
            details["list"][0].as_str().map(str::len),
            Some(MAX_DETAIL_CHARS)
        );
    }

    #[test]
    fn times_parse_as_rfc3339_or_unix_seconds() {
        assert_eq!(parse_time("1700000000"), Some(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
        assert_eq!(
            parse_time("2023-11-15T00:13:20+02:00"),
            Some(1_700_000_000_000)
        );
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("2023-11-14"), None);
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn unset_actor_outside_a_request_is_anonymous() {
        let record = AuditEvent::new("test.event", Outcome::Denied).into_record();
        assert_eq!(record.actor, "anonymous");
        assert_eq!(record.outcome, "denied");
        assert_eq!(record.request_id, None);
        assert_eq!(record.details, "{}");
    }
}
