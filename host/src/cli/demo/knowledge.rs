//! The knowledge file of the demo's `faq` bot, and its entries in the bot's
//! key-value storage.
//!
//! The file is Markdown with question and answer blocks. A line starting
//! with `Q:` opens an entry and contains the whole question. A line starting
//! with `A:` starts the answer, and the non-blank lines after it continue
//! it, joined with spaces. A blank line or the next `Q:` ends the entry.
//! Lines outside entries (headings, prose) are ignored. Each entry is stored in
//! the bot scope under `faq/<nnnn>`, numbered from `0001` in file order,
//! as the question, a newline and the answer: the form the `faq` plugin
//! reads.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context as _, bail};

use crate::capabilities::kv::{KvNamespace, KvStore as _, MAX_LIST_KEYS, MAX_VALUE_BYTES};
use crate::storage::TenantId;
use crate::storage::kv::DbKvStore;

/// Prefix of every knowledge-base key.
pub const KEY_PREFIX: &str = "faq/";

/// Maximum entries in a knowledge file. The `faq` plugin reads at most this
/// many per event (its `MAX_ENTRIES`), so it would never match further ones.
pub const MAX_ENTRIES: usize = 500;

/// One question and its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaqEntry {
    /// The question, one line.
    pub question: String,
    /// The answer, its lines joined with spaces.
    pub answer: String,
}

impl FaqEntry {
    /// Returns the stored value: the question, a newline and the answer.
    pub fn value(&self) -> String {
        format!("{}\n{}", self.question, self.answer)
    }
}

/// Returns the key of the entry at `index` (from 0) in the file.
pub fn key(index: usize) -> String {
    format!("{KEY_PREFIX}{:04}", index + 1)
}

/// A knowledge file that does not follow the format in the module docs.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KnowledgeError {
    /// An `A:` line comes before any `Q:` line of its entry.
    #[error("line {line}: answer without a question: start the entry with a `Q:` line")]
    AnswerWithoutQuestion {
        /// Line number, from 1.
        line: usize,
    },
    /// A `Q:` line is not followed by an `A:` line.
    #[error("line {line}: question without an answer: add an `A:` line after it")]
    QuestionWithoutAnswer {
        /// Line number of the question, from 1.
        line: usize,
    },
    /// Text other than `A:` follows a `Q:` line.
    #[error("line {line}: text between `Q:` and `A:`: write the whole question on its `Q:` line")]
    QuestionNotOneLine {
        /// Line number, from 1.
        line: usize,
    },
    /// A `Q:` or `A:` line has no text.
    #[error("line {line}: empty `{label}`: expected text after it")]
    Blank {
        /// Line number, from 1.
        line: usize,
        /// `Q:` or `A:`.
        label: &'static str,
    },
    /// The file has no entries.
    #[error("no entries: expected `Q:` and `A:` lines")]
    Empty,
    /// The file has more entries than the plugin reads.
    #[error("too many entries: expected at most {MAX_ENTRIES}, got {count}")]
    TooMany {
        /// Number of entries in the file.
        count: usize,
    },
    /// One entry is larger than a key-value value may be.
    #[error("line {line}: entry too large: expected at most {MAX_VALUE_BYTES} bytes, got {bytes}")]
    TooLarge {
        /// Line number of the question, from 1.
        line: usize,
        /// Size of the stored value.
        bytes: usize,
    },
}

/// The entry being read: its question line, question and answer lines.
struct Pending<'a> {
    line: usize,
    question: &'a str,
    answer: Vec<&'a str>,
}

impl Pending<'_> {
    fn finish(self, entries: &mut Vec<FaqEntry>) -> Result<(), KnowledgeError> {
        if self.answer.is_empty() {
            return Err(KnowledgeError::QuestionWithoutAnswer { line: self.line });
        }
        let entry = FaqEntry {
            question: self.question.to_owned(),
            answer: self.answer.join(" "),
        };
        let bytes = entry.value().len();
        if bytes > MAX_VALUE_BYTES as usize {
            return Err(KnowledgeError::TooLarge {
                line: self.line,
                bytes,
            });
        }
        entries.push(entry);
        Ok(())
    }
}

/// Parses a knowledge file.
///
/// # Errors
///
/// Returns the first [`KnowledgeError`] in the file.
pub fn parse(text: &str) -> Result<Vec<FaqEntry>, KnowledgeError> {
    let mut entries = Vec::new();
    let mut pending: Option<Pending<'_>> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if let Some(question) = trimmed.strip_prefix("Q:") {
            if let Some(done) = pending.take() {
                done.finish(&mut entries)?;
            }
            let question = nonblank(question, line, "Q:")?;
            pending = Some(Pending {
                line,
                question,
                answer: Vec::new(),
            });
        } else if let Some(answer) = trimmed.strip_prefix("A:") {
            let Some(open) = pending.as_mut().filter(|open| open.answer.is_empty()) else {
                return Err(KnowledgeError::AnswerWithoutQuestion { line });
            };
            open.answer.push(nonblank(answer, line, "A:")?);
        } else if trimmed.is_empty() {
            // A blank line ends an answer, and is allowed between `Q:` and `A:`.
            if let Some(done) = pending.take_if(|open| !open.answer.is_empty()) {
                done.finish(&mut entries)?;
            }
        } else if let Some(open) = pending.as_mut() {
            if open.answer.is_empty() {
                return Err(KnowledgeError::QuestionNotOneLine { line });
            }
            open.answer.push(trimmed);
        }
    }
    if let Some(done) = pending.take() {
        done.finish(&mut entries)?;
    }
    match entries.len() {
        0 => Err(KnowledgeError::Empty),
        count if count > MAX_ENTRIES => Err(KnowledgeError::TooMany { count }),
        _ => Ok(entries),
    }
}

fn nonblank<'a>(
    text: &'a str,
    line: usize,
    label: &'static str,
) -> Result<&'a str, KnowledgeError> {
    let text = text.trim();
    if text.is_empty() {
        Err(KnowledgeError::Blank { line, label })
    } else {
        Ok(text)
    }
}

/// Reads and parses the knowledge file at `path`.
///
/// # Errors
///
/// Fails when the file cannot be read or does not parse. The message names
/// the file.
pub fn read(path: &Path) -> anyhow::Result<Vec<FaqEntry>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read knowledge file `{}`", path.display()))?;
    parse(&text).with_context(|| format!("invalid knowledge file `{}`", path.display()))
}

/// Replaces the `faq/` entries in the bot scope of `bot` with `entries`.
/// Keys past the new count are deleted first. Then every entry is written,
/// sealed by `kv`, within `quota_bytes` for the whole bot.
///
/// # Errors
///
/// Fails when storage fails or the entries do not fit the quota.
pub async fn store(
    kv: &DbKvStore,
    tenant: TenantId,
    bot: &str,
    entries: &[FaqEntry],
    quota_bytes: u64,
) -> anyhow::Result<()> {
    let namespace = KvNamespace {
        tenant: tenant.to_string(),
        bot: bot.to_owned(),
        user: None,
    };
    let keys: BTreeSet<String> = (0..entries.len()).map(key).collect();
    for stale in list_keys(kv, &namespace).await? {
        if !keys.contains(&stale) {
            kv.delete(&namespace, &stale)
                .await
                .with_context(|| format!("failed to delete stale entry `{stale}`"))?;
        }
    }
    for (index, entry) in entries.iter().enumerate() {
        let key = key(index);
        let stored = kv
            .set_within_quota(&namespace, &key, entry.value().as_bytes(), quota_bytes)
            .await
            .with_context(|| format!("failed to write entry `{key}`"))?;
        if !stored {
            bail!(
                "knowledge file does not fit the `{bot}` bot's key-value quota of {quota_bytes} \
                 bytes: entry `{key}` did not fit"
            );
        }
    }
    Ok(())
}

/// Returns every `faq/` key in `namespace`, one page at a time.
async fn list_keys(kv: &DbKvStore, namespace: &KvNamespace) -> anyhow::Result<Vec<String>> {
    let mut keys: Vec<String> = Vec::new();
    loop {
        let after = keys.last().map(String::as_str);
        let page = kv
            .list_keys(namespace, KEY_PREFIX, after, MAX_LIST_KEYS)
            .await
            .context("failed to list the knowledge-base entries")?;
        let last_page = page.len() < MAX_LIST_KEYS as usize;
        keys.extend(page);
        if last_page {
            return Ok(keys);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(question: &str, answer: &str) -> FaqEntry {
        FaqEntry {
            question: question.to_owned(),
            answer: answer.to_owned(),
        }
    }

    #[test]
    fn parse_reads_blocks_and_skips_prose() {
        let text = "# Title\n\nSome prose.\n\nQ: First?\nA: One\nline two\n\n\
                    ## Section\nQ:Second?\n\nA:  Two.  \nQ: Third?\nA: Three.";
        let expected = vec![
            entry("First?", "One line two"),
            entry("Second?", "Two."),
            entry("Third?", "Three."),
        ];
        assert_eq!(parse(text), Ok(expected));
    }

    #[test]
    fn parse_reports_broken_blocks_by_line() {
        let cases = [
            (
                "prose\nA: orphan",
                KnowledgeError::AnswerWithoutQuestion { line: 2 },
            ),
            (
                "Q: a?\nA: b\nA: c",
                KnowledgeError::AnswerWithoutQuestion { line: 3 },
            ),
            (
                "Q: a?\nQ: b?\nA: c",
                KnowledgeError::QuestionWithoutAnswer { line: 1 },
            ),
            ("Q: a?\n", KnowledgeError::QuestionWithoutAnswer { line: 1 }),
            (
                "Q: a\nb?\nA: c",
                KnowledgeError::QuestionNotOneLine { line: 2 },
            ),
            (
                "Q:\nA: b",
                KnowledgeError::Blank {
                    line: 1,
                    label: "Q:",
                },
            ),
            (
                "Q: a?\nA:  ",
                KnowledgeError::Blank {
                    line: 2,
                    label: "A:",
                },
            ),
            ("# nothing here\n", KnowledgeError::Empty),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn parse_rejects_more_entries_than_the_plugin_reads() {
        let text = "Q: q?\nA: a\n".repeat(MAX_ENTRIES + 1);
        let count = MAX_ENTRIES + 1;
        assert_eq!(parse(&text), Err(KnowledgeError::TooMany { count }));
        let text = "Q: q?\nA: a\n".repeat(MAX_ENTRIES);
        assert_eq!(parse(&text).map(|entries| entries.len()), Ok(MAX_ENTRIES));
    }

    #[test]
    fn parse_rejects_entries_larger_than_a_value() {
        let text = format!("Q: q?\nA: {}", "x".repeat(MAX_VALUE_BYTES as usize));
        let bytes = MAX_VALUE_BYTES as usize + 3;
        assert_eq!(
            parse(&text),
            Err(KnowledgeError::TooLarge { line: 1, bytes })
        );
    }

    #[test]
    fn keys_sort_in_file_order() {
        assert_eq!(key(0), "faq/0001");
        assert_eq!(key(499), "faq/0500");
        assert!(key(8) < key(9));
    }

    #[test]
    fn demo_knowledge_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo/faq.md");
        let entries = read(&path).unwrap_or_else(|error| panic!("{error:#}"));
        assert!(entries.len() >= 10, "only {} entries", entries.len());
    }
}
