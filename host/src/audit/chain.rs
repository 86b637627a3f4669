//! The hash chain: how an event is encoded for hashing, how its hash links
//! it to the event before, and the walk that finds the first broken link.
//!
//! Event `n` stores `SHA-256(DOMAIN ‖ hash(n-1) ‖ fields(n))`, hex encoded,
//! where every field is length-prefixed (and absent optional fields are a
//! single zero byte), so no two different events encode to the same bytes.
//! The first event links to [`GENESIS`]; after retention deleted old events,
//! the first remaining one links to the hash kept in the checkpoint.

use std::fmt;

use sha2::{Digest as _, Sha256};

use super::storage::AuditRecord;

/// The hash the first event links to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Separates this encoding from any other use of SHA-256 over similar bytes.
const DOMAIN: &[u8] = b"botserver audit event v1";

/// Computes the hash of `record` linked to `previous`. The record's own
/// `hash` field is not part of the input.
pub fn link_hash(previous: &str, record: &AuditRecord) -> String {
    let mut hasher = Sha256::new();
    hasher.update(DOMAIN);
    put(&mut hasher, previous);
    hasher.update(record.seq.to_be_bytes());
    hasher.update(record.occurred_at_ms.to_be_bytes());
    put(&mut hasher, &record.actor);
    put_optional(&mut hasher, record.tenant_id.as_deref());
    put(&mut hasher, &record.action);
    put_optional(&mut hasher, record.target.as_deref());
    put(&mut hasher, &record.outcome);
    put_optional(&mut hasher, record.request_id.as_deref());
    put_optional(&mut hasher, record.source.as_deref());
    put(&mut hasher, &record.details);
    hex::encode(hasher.finalize())
}

fn put(hasher: &mut Sha256, text: &str) {
    hasher.update((text.len() as u64).to_be_bytes());
    hasher.update(text.as_bytes());
}

fn put_optional(hasher: &mut Sha256, text: Option<&str>) {
    match text {
        Some(text) => {
            hasher.update([1]);
            put(hasher, text);
        }
        None => hasher.update([0]),
    }
}

/// The kind of damage at the first bad position of the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// No event has this number: it was deleted or renumbered.
    Missing,
    /// The event does not match its hash: a field was edited, the row was
    /// replaced or moved, or an earlier event's hash was rewritten.
    Altered,
    /// The chain head names a later event than the last one stored: events
    /// at the end were deleted.
    Truncated {
        /// The last event number the head records.
        head_seq: i64,
    },
    /// The last event's hash differs from the one the head recorded: it
    /// was replaced together with its hash.
    HeadMismatch,
    /// The event is past the number the head records, so it was not
    /// appended through the head.
    PastHead {
        /// The last event number the head records.
        head_seq: i64,
    },
}

/// The first event at which the chain breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Break {
    /// Number of the first bad event.
    pub seq: i64,
    /// The kind of damage.
    pub problem: Problem,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = self.seq;
        match &self.problem {
            Problem::Missing => write!(f, "event {seq} is missing: deleted or renumbered"),
            Problem::Altered => write!(
                f,
                "event {seq} does not match its hash: edited, replaced or reordered"
            ),
            Problem::Truncated { head_seq } => write!(
                f,
                "events {seq} to {head_seq} are missing: the chain head records {head_seq}"
            ),
            Problem::HeadMismatch => write!(
                f,
                "event {seq} differs from the chain head's hash: replaced"
            ),
            Problem::PastHead { head_seq } => write!(
                f,
                "event {seq} is past the chain head ({head_seq}): inserted outside the audit log"
            ),
        }
    }
}

/// Walks events in ascending order and stops at the first broken link.
#[derive(Debug)]
pub struct Verifier {
    next_seq: i64,
    previous: String,
    checked: u64,
}

impl Verifier {
    /// Starts after `checkpoint` (the number and hash of the last deleted
    /// event), or at event 1 when nothing was deleted.
    pub fn new(checkpoint: Option<(i64, String)>) -> Self {
        let (seq, hash) = checkpoint.unwrap_or((0, GENESIS.to_owned()));
        Self {
            next_seq: seq + 1,
            previous: hash,
            checked: 0,
        }
    }

    /// Checks the next event.
    ///
    /// # Errors
    ///
    /// Returns the [`Break`] when `record` is not the expected next event or
    /// does not match its hash.
    pub fn check(&mut self, record: &AuditRecord) -> Result<(), Break> {
        if record.seq != self.next_seq {
            return Err(Break {
                seq: self.next_seq,
                problem: Problem::Missing,
            });
        }
        if link_hash(&self.previous, record) != record.hash {
            return Err(Break {
                seq: record.seq,
                problem: Problem::Altered,
            });
        }
        self.previous.clone_from(&record.hash);
        self.next_seq += 1;
        self.checked += 1;
        Ok(())
    }

    /// Compares the end of the walk with the chain head and returns the
    /// number of events checked.
    ///
    /// # Errors
    ///
    /// Returns the [`Break`] when events at the end are missing, the last
    /// one was replaced, or events were added past the head.
    pub fn finish(self, head_seq: i64, head_hash: &str) -> Result<u64, Break> {
        let last = self.next_seq - 1;
        if head_seq > last {
            return Err(Break {
                seq: self.next_seq,
                problem: Problem::Truncated { head_seq },
            });
        }
        if head_seq < last {
            return Err(Break {
                seq: head_seq + 1,
                problem: Problem::PastHead { head_seq },
            });
        }
        if self.checked > 0 && head_hash != self.previous {
            return Err(Break {
                seq: last,
                problem: Problem::HeadMismatch,
            });
        }
        Ok(self.checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: i64, action: &str) -> AuditRecord {
        AuditRecord {
            seq,
            occurred_at_ms: 1_700_000_000_000 + seq,
            actor: "system".to_owned(),
            tenant_id: None,
            action: action.to_owned(),
            target: Some(format!("thing:{seq}")),
            outcome: "success".to_owned(),
            request_id: None,
            source: Some("127.0.0.1".to_owned()),
            details: "{}".to_owned(),
            hash: String::new(),
        }
    }

    fn chain(count: i64) -> Vec<AuditRecord> {
        let mut previous = GENESIS.to_owned();
        (1..=count)
            .map(|seq| {
                let mut record = record(seq, "test.event");
                record.hash = link_hash(&previous, &record);
                previous.clone_from(&record.hash);
                record
            })
            .collect()
    }

    fn verify(records: &[AuditRecord], head: (i64, &str)) -> Result<u64, Break> {
        let mut verifier = Verifier::new(None);
        for record in records {
            verifier.check(record)?;
        }
        verifier.finish(head.0, head.1)
    }

    #[test]
    fn intact_chain_verifies() {
        let records = chain(5);
        let head = records[4].hash.clone();
        assert_eq!(verify(&records, (5, &head)), Ok(5));
        assert_eq!(verify(&[], (0, GENESIS)), Ok(0));
    }

    #[test]
    fn edited_field_breaks_at_that_event() {
        let mut records = chain(5);
        let head = records[4].hash.clone();
        records[2].actor = "someone else".to_owned();
        let found = verify(&records, (5, &head)).unwrap_err();
        assert_eq!(found.seq, 3);
        assert_eq!(found.problem, Problem::Altered);
    }

    #[test]
    fn absent_and_empty_fields_hash_differently() {
        let mut with_none = record(1, "a");
        with_none.target = None;
        let mut with_empty = record(1, "a");
        with_empty.target = Some(String::new());
        assert_ne!(
            link_hash(GENESIS, &with_none),
            link_hash(GENESIS, &with_empty)
        );
        let mut shifted = record(1, "ab");
        shifted.outcome = "uccess".to_owned();
        let mut plain = record(1, "a");
        plain.outcome = "buccess".to_owned();
        assert_ne!(link_hash(GENESIS, &shifted), link_hash(GENESIS, &plain));
    }

    #[test]
    fn deleted_event_is_reported_missing() {
        let mut records = chain(5);
        let head = records[4].hash.clone();
        records.remove(1);
        let found = verify(&records, (5, &head)).unwrap_err();
        assert_eq!(found.seq, 2);
        assert_eq!(found.problem, Problem::Missing);
    }

    #[test]
    fn swapped_contents_break_at_the_first() {
        let mut records = chain(5);
        let head = records[4].hash.clone();
        let (first, second) = (records[1].clone(), records[3].clone());
        records[1] = AuditRecord { seq: 2, ..second };
        records[3] = AuditRecord { seq: 4, ..first };
        assert_eq!(verify(&records, (5, &head)).unwrap_err().seq, 2);
    }

    #[test]
    fn truncated_tail_is_reported() {
        let records = chain(5);
        let head = records[4].hash.clone();
        let found = verify(&records[..3], (5, &head)).unwrap_err();
        assert_eq!(found.seq, 4);
        assert_eq!(found.problem, Problem::Truncated { head_seq: 5 });
    }

    #[test]
    fn rehashed_last_event_differs_from_head() {
        let mut records = chain(3);
        let head = records[2].hash.clone();
        records[2].actor = "forged".to_owned();
        records[2].hash = link_hash(&records[1].hash, &records[2]);
        let found = verify(&records, (3, &head)).unwrap_err();
        assert_eq!(found.problem, Problem::HeadMismatch);
        assert_eq!(found.seq, 3);
    }

    #[test]
    fn chain_resumes_after_checkpoint() {
        let records = chain(6);
        let mut verifier = Verifier::new(Some((3, records[2].hash.clone())));
        for record in &records[3..] {
            verifier.check(record).unwrap();
        }
        assert_eq!(verifier.finish(6, &records[5].hash), Ok(3));

        let mut wrong = Verifier::new(Some((3, GENESIS.to_owned())));
        assert_eq!(wrong.check(&records[3]).unwrap_err().seq, 4);
    }
}
