//! The audit tables: appending under the chain head's lock, filtered reads,
//! ordered walks for verification and export, and pruning with a
//! checkpoint.
//!
//! Every append locks the single `audit_head` row with an `UPDATE` as its
//! first statement. On PostgreSQL that is a row lock held to the commit; on
//! SQLite the first write of a transaction takes the database's write lock.
//! Either way, appends from any number of tasks, processes or nodes take
//! turns, and the chain stays one line.

use serde::Serialize;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::chain::{GENESIS, link_hash};
use crate::storage::{Db, StorageError};

/// Columns of `audit_events` in the order [`decode`] reads them.
const COLUMNS: &str = "seq, occurred_at_ms, actor, tenant_id, action, target, outcome, \
                       request_id, source, details, hash";

/// One stored event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Unix milliseconds.
    pub occurred_at_ms: i64,
    /// Who acted: a user id, `visitor:<uuid>`, `anonymous` or `system`.
    pub actor: String,
    /// The tenant the event concerns, when there is one.
    pub tenant_id: Option<String>,
    /// Stable dotted name, such as `auth.login.failure`.
    pub action: String,
    /// The object of the action.
    pub target: Option<String>,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    /// The `x-request-id` of the request that caused the event.
    pub request_id: Option<String>,
    /// The client's IP address.
    pub source: Option<String>,
    /// A JSON object, as hashed.
    pub details: String,
    /// Hex SHA-256 linking this event to the one before.
    pub hash: String,
}

impl AuditRecord {
    /// Returns the event as the API and the export show it: the stored
    /// fields, `time` in RFC 3339, and `details` as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let details = serde_json::from_str(&self.details)
            .unwrap_or_else(|_| serde_json::Value::String(self.details.clone()));
        serde_json::json!({
            "seq": self.seq,
            "time": super::format_time(self.occurred_at_ms),
            "occurred_at_ms": self.occurred_at_ms,
            "actor": self.actor,
            "tenant_id": self.tenant_id,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "request_id": self.request_id,
            "source": self.source,
            "details": details,
            "hash": self.hash,
        })
    }
}

/// An event to append; the sequence number and hash are assigned then.
#[derive(Clone, Debug)]
pub struct NewRecord {
    /// Unix milliseconds.
    pub occurred_at_ms: i64,
    /// See [`AuditRecord::actor`].
    pub actor: String,
    /// See [`AuditRecord::tenant_id`].
    pub tenant_id: Option<String>,
    /// See [`AuditRecord::action`].
    pub action: String,
    /// See [`AuditRecord::target`].
    pub target: Option<String>,
    /// See [`AuditRecord::outcome`].
    pub outcome: String,
    /// See [`AuditRecord::request_id`].
    pub request_id: Option<String>,
    /// See [`AuditRecord::source`].
    pub source: Option<String>,
    /// See [`AuditRecord::details`].
    pub details: String,
}

/// The number and hash of the newest event, kept in `audit_head`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The newest event's number; 0 before the first event.
    pub seq: i64,
    /// Its hash, or [`GENESIS`].
    pub hash: String,
}

/// The point where retention cut the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    /// The last deleted event's number.
    pub seq: i64,
    /// Its hash, to which the next event links.
    pub hash: String,
    /// Its time, Unix milliseconds.
    pub occurred_at_ms: i64,
    /// When it was deleted, Unix milliseconds.
    pub created_at_ms: i64,
}

/// Appends `records` in order as one transaction and returns the number of
/// the first.
///
/// # Errors
///
/// Returns [`StorageError`] when the database fails; nothing is appended
/// then.
pub async fn append(db: &Db, records: &[NewRecord]) -> Result<i64, StorageError> {
    let count = i64::try_from(records.len()).unwrap_or(i64::MAX);
    let mut tx = db.pool().begin().await?;
    let row = sqlx::query(
        "UPDATE audit_head SET last_seq = last_seq + $1 WHERE id = 1 RETURNING last_seq, last_hash",
    )
    .bind(count)
    .fetch_one(&mut *tx)
    .await?;
    let last_seq: i64 = row.try_get("last_seq")?;
    let mut previous: String = row.try_get("last_hash")?;
    let first = last_seq - count + 1;

    for (seq, new) in (first..).zip(records) {
        let mut record = AuditRecord {
            seq,
            occurred_at_ms: new.occurred_at_ms,
            actor: new.actor.clone(),
            tenant_id: new.tenant_id.clone(),
            action: new.action.clone(),
            target: new.target.clone(),
            outcome: new.outcome.clone(),
            request_id: new.request_id.clone(),
            source: new.source.clone(),
            details: new.details.clone(),
            hash: String::new(),
        };
        record.hash = link_hash(&previous, &record);
        insert(&mut tx, &record).await?;
        previous = record.hash;
    }

    sqlx::query("UPDATE audit_head SET last_hash = $1 WHERE id = 1")
        .bind(&previous)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(first)
}

async fn insert(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    record: &AuditRecord,
) -> Result<(), StorageError> {
    sqlx::query(&format!(
        "INSERT INTO audit_events ({COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    ))
    .bind(record.seq)
    .bind(record.occurred_at_ms)
    .bind(&record.actor)
    .bind(record.tenant_id.as_deref())
    .bind(&record.action)
    .bind(record.target.as_deref())
    .bind(&record.outcome)
    .bind(record.request_id.as_deref())
    .bind(record.source.as_deref())
    .bind(&record.details)
    .bind(&record.hash)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn decode(row: &AnyRow) -> Result<AuditRecord, StorageError> {
    Ok(AuditRecord {
        seq: row.try_get("seq")?,
        occurred_at_ms: row.try_get("occurred_at_ms")?,
        actor: row.try_get("actor")?,
        tenant_id: row.try_get("tenant_id")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        outcome: row.try_get("outcome")?,
        request_id: row.try_get("request_id")?,
        source: row.try_get("source")?,
        details: row.try_get("details")?,
        hash: row.try_get("hash")?,
    })
}

/// Returns the chain head.
///
/// # Errors
///
/// Returns [`StorageError`] when the database fails.
pub async fn head(db: &Db) -> Result<Head, StorageError> {
    let row = sqlx::query("SELECT last_seq, last_hash FROM audit_head WHERE id = 1")
        .fetch_optional(db.pool())
        .await?;
    match row {
        Some(row) => Ok(Head {
            seq: row.try_get("last_seq")?,
            hash: row.try_get("last_hash")?,
        }),
        // The migration inserts the row and a trigger forbids deleting it,
        // so its absence is itself tampering; report it as an empty head.
        None => Ok(Head {
            seq: 0,
            hash: GENESIS.to_owned(),
        }),
    }
}

/// Returns the newest checkpoint, if retention ever deleted events.
///
/// # Errors
///
/// Returns [`StorageError`] when the database fails.
pub async fn latest_checkpoint(db: &Db) -> Result<Option<Checkpoint>, StorageError> {
    let row = sqlx::query(
        "SELECT seq, hash, occurred_at_ms, created_at_ms FROM audit_checkpoints \
         ORDER BY seq DESC LIMIT 1",
    )
    .fetch_optional(db.pool())
    .await?;
    row.map(|row| {
        Ok(Checkpoint {
            seq: row.try_get("seq")?,
            hash: row.try_get("hash")?,
            occurred_at_ms: row.try_get("occurred_at_ms")?,
            created_at_ms: row.try_get("created_at_ms")?,
        })
    })
    .transpose()
}

/// Returns up to `limit` events with numbers above `after`, ascending.
///
/// # Errors
///
/// Returns [`StorageError`] when the database fails.
pub async fn page_after(db: &Db, after: i64, limit: i64) -> Result<Vec<AuditRecord>, StorageError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(decode).collect()
}

/// Conditions of a read; each `None` matches everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this tenant's events.
    pub tenant_id: Option<String>,
    /// Only this actor's events.
    pub actor: Option<String>,
    /// Only events about this account: acted by it or aimed at
    /// `user:<id>`. For a user's data export.
    pub involving_user: Option<String>,
    /// Only this action, or with [`Filter::action_prefix`], actions
    /// starting with it.
    pub action: Option<String>,
    /// Whether [`Filter::action`] is a prefix such as `auth.`.
    pub action_prefix: bool,
    /// Only events at or after this time, Unix milliseconds.
    pub since_ms: Option<i64>,
    /// Only events before this time, Unix milliseconds.
    pub until_ms: Option<i64>,
    /// Only events numbered below this (newest-first paging).
    pub before_seq: Option<i64>,
    /// Only events numbered above this (oldest-first paging).
    pub after_seq: Option<i64>,
}

/// Order of a filtered read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Newest first.
    NewestFirst,
    /// Oldest first.
    OldestFirst,
}

/// Returns up to `limit` events matching `filter`.
///
/// # Errors
///
/// Returns [`StorageError`] when the database fails.
pub async fn query(
    db: &Db,
    filter: &Filter,
    order: Order,
    limit: i64,
) -> Result<Vec<AuditRecord>, StorageError> {
    let mut conditions = Conditions::default();
    if let Some(tenant) = &filter.tenant_id {
        conditions.add("tenant_id = ?", [Bind::Text(tenant.clone())]);
    }
    if let Some(actor) = &filter.actor {
        conditions.add("actor = ?", [Bind::Text(actor.clone())]);
    }
    if let Some(user) = &filter.involving_user {
        let target = Bind::Text(format!("user:{user}"));
        conditions.add(
            "(actor = ? OR target = ?)",
            [Bind::Text(user.clone()), target],
        );
    }
    match (&filter.action, filter.action_prefix) {
        (Some(prefix), true) => conditions.add(
            "action >= ? AND action < ?",
            [Bind::Text(prefix.clone()), Bind::Text(prefix_end(prefix))],
        ),
        (Some(action), false) => conditions.add("action = ?", [Bind::Text(action.clone())]),
        (None, _) => {}
    }
    if let Some(since) = filter.since_ms {
        conditions.add("occurred_at_ms >= ?", [Bind::Number(since)]);
    }
    if let Some(until) = filter.until_ms {
        conditions.add("occurred_at_ms < ?", [Bind::Number(until)]);
    }
    if let Some(before) = filter.before_seq {
        conditions.add("seq < ?", [Bind::Number(before)]);
    }
    if let Some(after) = filter.after_seq {
        conditions.add("seq > ?", [Bind::Number(after)]);
    }
    let Conditions {
        sql: conditions,
        binds,
    } = conditions;

    let mut sql = format!("SELECT {COLUMNS} FROM audit_events");
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    let direction = match order {
        Order::NewestFirst => "DESC",
        Order::OldestFirst => "ASC",
    };
    sql.push_str(&format!(
        " ORDER BY seq {direction} LIMIT ${}",
        binds.len() + 1
    ));

    let mut statement = sqlx::query(&sql);
    for bind in binds {
        statement = match bind {
            Bind::Text(text) => statement.bind(text),
            Bind::Number(number) => statement.bind(number),
        };
    }
    let rows = statement.bind(limit).fetch_all(db.pool()).await?;
    rows.iter().map(decode).collect()
}

enum Bind {
    Text(String),
    Number(i64),
}

/// The `WHERE` clauses of a read and their values. Each `?` of a template
/// becomes the next numbered placeholder, so no value is ever written into
/// the SQL text.
#[derive(Default)]
struct Conditions {
    sql: Vec<String>,
    binds: Vec<Bind>,
}

impl Conditions {
    fn add<const N: usize>(&mut self, template: &str, values: [Bind; N]) {
        let mut clause = String::new();
        let mut parts = template.split('?');
        clause.push_str(parts.next().unwrap_or_default());
        for (part, value) in parts.zip(values) {
            self.binds.push(value);
            clause.push_str(&format!("${}", self.binds.len()));
            clause.push_str(part);
        }
        self.sql.push(clause);
    }
}

/// Returns the smallest string above every string starting with `prefix`, for a
/// range scan. Action names are ASCII, so bumping the last byte is enough.
fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    match bytes.last_mut() {
        Some(last) if *last < 0x7f => {
            *last += 1;
            String::from_utf8(bytes).unwrap_or_else(|_| "\u{7f}".to_owned())
        }
        _ => "\u{7f}".to_owned(),
    }
}

/// Deletes every event older than `cutoff_ms` that has no newer event
/// before it, after recording a checkpoint with the last deleted event's
/// number and hash. Returns the checkpoint, or `None` when nothing was old
/// enough.
///
/// The database rejects a checkpoint that covers an event younger than 30
/// days, so a `cutoff_ms` later than that fails.
///
/// # Errors
///
/// Returns [`StorageError`] when the database fails or rejects the
/// checkpoint; nothing is deleted then.
pub async fn prune(
    db: &Db,
    cutoff_ms: i64,
    now_ms: i64,
) -> Result<Option<(Checkpoint, u64)>, StorageError> {
    let mut tx = db.pool().begin().await?;
    // Take the append lock first, so no event lands between the reads.
    let row =
        sqlx::query("UPDATE audit_head SET last_seq = last_seq WHERE id = 1 RETURNING last_seq")
            .fetch_one(&mut *tx)
            .await?;
    let head_seq: i64 = row.try_get("last_seq")?;
    let row = sqlx::query("SELECT MIN(seq) AS seq FROM audit_events WHERE occurred_at_ms >= $1")
        .bind(cutoff_ms)
        .fetch_one(&mut *tx)
        .await?;
    let first_kept: Option<i64> = row.try_get("seq")?;
    let last_pruned = first_kept.map_or(head_seq, |seq| seq - 1);

    let row = sqlx::query(
        "SELECT seq, hash, occurred_at_ms FROM audit_events WHERE seq = $1 AND seq > \
         COALESCE((SELECT MAX(seq) FROM audit_checkpoints), 0)",
    )
    .bind(last_pruned)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let checkpoint = Checkpoint {
        seq: row.try_get("seq")?,
        hash: row.try_get("hash")?,
        occurred_at_ms: row.try_get("occurred_at_ms")?,
        created_at_ms: now_ms,
    };
    sqlx::query(
        "INSERT INTO audit_checkpoints (seq, hash, occurred_at_ms, created_at_ms) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(checkpoint.seq)
    .bind(&checkpoint.hash)
    .bind(checkpoint.occurred_at_ms)
    .bind(checkpoint.created_at_ms)
    .execute(&mut *tx)
    .await?;
    let deleted = sqlx::query("DELETE FROM audit_events WHERE seq <= $1")
        .bind(checkpoint.seq)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(Some((checkpoint, deleted)))
}

#[cfg(test)]
mod tests {
    use super::{Bind, Conditions, prefix_end};

    #[test]
    fn conditions_number_placeholders_in_order() {
        let mut conditions = Conditions::default();
        conditions.add("a = ?", [Bind::Number(1)]);
        conditions.add(
            "(b = ? OR c = ?)",
            [Bind::Text("x".to_owned()), Bind::Text("y".to_owned())],
        );
        assert_eq!(conditions.sql, ["a = $1", "(b = $2 OR c = $3)"]);
        assert_eq!(conditions.binds.len(), 3);
    }

    #[test]
    fn prefix_end_is_just_above_the_prefix() {
        assert_eq!(prefix_end("auth."), "auth/");
        assert!("auth.login.success" < prefix_end("auth.").as_str());
        assert!("authz.denied" > prefix_end("auth.").as_str());
    }
}
