//! Checking the stored chain: from the newest checkpoint (or event 1) to
//! the head, page by page, stopping at the first broken link.

use std::fmt;

use super::chain::{Break, Problem, Verifier};
use super::format_time;
use super::storage::{self, Checkpoint};
use crate::storage::{Db, StorageError};

/// Events read from the database at a time.
const PAGE: i64 = 1000;

/// The summary of an intact chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Events checked.
    pub checked: u64,
    /// Number of the newest event checked; 0 when there are none.
    pub last_seq: i64,
    /// Its hash, which an operator may keep elsewhere to detect a later
    /// rewrite of the whole chain.
    pub head_hash: String,
    /// The point where retention last cut the chain.
    pub checkpoint: Option<Checkpoint>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.checked == 0 {
            write!(f, "audit log verifies: no events")?;
        } else {
            let first = self.last_seq - i64::try_from(self.checked).unwrap_or(i64::MAX) + 1;
            write!(
                f,
                "audit log verifies: events {first} to {} ({} checked); head hash {}",
                self.last_seq, self.checked, self.head_hash
            )?;
        }
        if let Some(checkpoint) = &self.checkpoint {
            write!(
                f,
                "; events up to {} were deleted by retention on {}",
                checkpoint.seq,
                format_time(checkpoint.created_at_ms)
            )?;
        }
        Ok(())
    }
}

/// Walks the chain from the newest checkpoint to the head as read at the
/// start; events appended meanwhile are left for the next run. Returns the
/// report of an intact chain, or the first break.
///
/// # Errors
///
/// Returns [`StorageError`] when the database fails.
pub async fn verify(db: &Db) -> Result<Result<Report, Break>, StorageError> {
    let head = storage::head(db).await?;
    let checkpoint = storage::latest_checkpoint(db).await?;
    let start = checkpoint
        .as_ref()
        .map(|found| (found.seq, found.hash.clone()));
    let mut after = start.as_ref().map_or(0, |(seq, _)| *seq);
    let mut verifier = Verifier::new(start);

    'pages: loop {
        let page = storage::page_after(db, after, PAGE).await?;
        for record in &page {
            if record.seq > head.seq {
                break 'pages;
            }
            if let Err(found) = verifier.check(record) {
                return Ok(Err(found));
            }
            after = record.seq;
        }
        if i64::try_from(page.len()).unwrap_or(i64::MAX) < PAGE {
            break;
        }
    }
    let checked = match verifier.finish(head.seq, &head.hash) {
        Ok(checked) => checked,
        Err(found) => return Ok(Err(found)),
    };
    if let Some(found) = rows_past_head(db).await? {
        return Ok(Err(found));
    }
    Ok(Ok(Report {
        checked,
        last_seq: head.seq,
        head_hash: head.hash,
        checkpoint,
    }))
}

/// Finds an event numbered past the chain head as it is now: a row added
/// without going through the head.
async fn rows_past_head(db: &Db) -> Result<Option<Break>, StorageError> {
    let head = storage::head(db).await?;
    let past = storage::page_after(db, head.seq, 1).await?;
    Ok(past.first().map(|_| Break {
        seq: head.seq + 1,
        problem: Problem::PastHead { head_seq: head.seq },
    }))
}
