//! Matching a message against the questions of the knowledge base.
//!
//! A message and a question match by the words they share. Both sides are
//! lowercased, split at every character that is not a letter or a digit,
//! stripped of very common words, and plural `s` endings are dropped. So
//! "How do plugins keep data?" scores 2 against "Can a plugin store data?",
//! for `plugin` and `data`. The common words still break ties, so "who can
//! chat" prefers "Who can chat with a bot?" to "How do I chat with a bot?".
//! These functions make no host calls, so they run in native unit tests.

use std::collections::BTreeSet;

/// Maximum characters of a message that are scored. The host accepts
/// messages of megabytes, so the cap bounds the fuel one event spends on
/// splitting words.
pub const MAX_MESSAGE_CHARS: usize = 2_000;

/// Words too common to say what a question is about. They are ignored on
/// both sides, so "what is a grant" and "grant" score the same.
const COMMON_WORDS: &[&str] = &[
    "a", "about", "am", "an", "and", "any", "are", "as", "at", "be", "by", "can", "could", "do",
    "does", "for", "from", "get", "has", "have", "how", "i", "if", "in", "into", "is", "it", "its",
    "me", "my", "of", "on", "or", "please", "so", "that", "the", "their", "them", "there", "this",
    "to", "use", "what", "when", "where", "which", "who", "why", "will", "with", "would", "you",
    "your",
];

/// One question and its answer, read from the entry under `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The storage key, `faq/<nnnn>`.
    pub key: String,
    /// The question, one line.
    pub question: String,
    /// The answer.
    pub answer: String,
}

impl Entry {
    /// Parses a stored value: UTF-8 text with the question on the first
    /// line and the answer after it. Returns `None` for other bytes or when
    /// either part is blank.
    pub fn parse(key: String, value: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(value).ok()?;
        let (question, answer) = text.split_once('\n')?;
        let (question, answer) = (question.trim(), answer.trim());
        if question.is_empty() || answer.is_empty() {
            return None;
        }
        Some(Self {
            key,
            question: question.to_owned(),
            answer: answer.to_owned(),
        })
    }
}

/// Returns the distinct topic words of `text`, normalized as described in
/// the module docs.
pub fn words(text: &str) -> BTreeSet<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| word.chars().count() > 1 && !COMMON_WORDS.contains(word))
        .map(singular)
        .collect()
}

/// Returns every distinct word of `text`, common ones included, lowercased
/// and singular.
fn all_words(text: &str) -> BTreeSet<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(singular)
        .collect()
}

/// Drops a plural `s`: `plugins` becomes `plugin`, while `bus`, `access`
/// and `is` stay as they are.
fn singular(word: &str) -> String {
    match word.strip_suffix('s') {
        Some(stem) if stem.chars().count() > 2 && !stem.ends_with('s') => stem.to_owned(),
        _ => word.to_owned(),
    }
}

/// An entry that shares words with the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    /// Position of the entry in the slice given to [`rank`].
    pub index: usize,
    /// Number of topic words the message and the question share.
    pub score: usize,
}

/// Tie-break keys of a match, compared when two scores are equal.
struct TieBreak {
    /// Words shared with the message, common ones included.
    shared_words: usize,
    /// Topic words of the question.
    question_words: usize,
}

/// Ranks the entries that share at least one topic word with `message`,
/// best first. Among equal scores, the question that shares more words of
/// any kind wins, then the one with fewer topic words (more of it
/// matched), then the earlier entry.
pub fn rank(message: &str, entries: &[Entry]) -> Vec<Match> {
    let scored: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
    let message_words = words(&scored);
    let message_all_words = all_words(&scored);
    let mut matches: Vec<(Match, TieBreak)> = entries
        .iter()
        .enumerate()
        .filter_map(|(index, entry)| {
            let question = words(&entry.question);
            let score = question.intersection(&message_words).count();
            if score == 0 {
                return None;
            }
            let tie_break = TieBreak {
                shared_words: all_words(&entry.question)
                    .intersection(&message_all_words)
                    .count(),
                question_words: question.len(),
            };
            Some((Match { index, score }, tie_break))
        })
        .collect();
    matches.sort_by(|(a, a_tie), (b, b_tie)| {
        b.score
            .cmp(&a.score)
            .then(b_tie.shared_words.cmp(&a_tie.shared_words))
            .then(a_tie.question_words.cmp(&b_tie.question_words))
            .then(a.index.cmp(&b.index))
    });
    matches.into_iter().map(|(found, _)| found).collect()
}

/// Picks up to `max` entries to suggest besides `answered`: the other
/// matches first, in rank order, then the first entries of the knowledge
/// base, so there are suggestions even when little matched.
pub fn suggestions(
    matches: &[Match],
    answered: Option<usize>,
    entry_count: usize,
    max: usize,
) -> Vec<usize> {
    let related = matches.iter().map(|found| found.index);
    let mut picked = Vec::with_capacity(max);
    for index in related.chain(0..entry_count) {
        if picked.len() == max {
            break;
        }
        if Some(index) != answered && !picked.contains(&index) {
            picked.push(index);
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(number: usize, question: &str) -> Entry {
        Entry {
            key: format!("faq/{number:04}"),
            question: question.to_owned(),
            answer: format!("answer {number}"),
        }
    }

    fn knowledge() -> Vec<Entry> {
        vec![
            entry(1, "How do I chat with a bot?"),
            entry(2, "What is a grant?"),
            entry(3, "Where is my data stored?"),
            entry(4, "How do I write a plugin?"),
            entry(5, "Can a plugin store data?"),
        ]
    }

    #[test]
    fn parse_splits_at_first_newline() {
        let parsed = Entry::parse("faq/0001".to_owned(), b" Why? \nBecause.\nReally.\n");
        let expected = Entry {
            key: "faq/0001".to_owned(),
            question: "Why?".to_owned(),
            answer: "Because.\nReally.".to_owned(),
        };
        assert_eq!(parsed, Some(expected));
    }

    #[test]
    fn parse_rejects_malformed_values() {
        for value in [
            &b"no newline"[..],
            b"\nanswer only",
            b"question only\n  ",
            b"\xff\n\xfe",
        ] {
            assert_eq!(
                Entry::parse("faq/0001".to_owned(), value),
                None,
                "{value:?}"
            );
        }
    }

    #[test]
    fn words_ignore_case_punctuation_and_common_words() {
        let found: Vec<String> = words("What's a GRANT, and how do I give one?!")
            .into_iter()
            .collect();
        assert_eq!(found, ["give", "grant", "one"]);
    }

    #[test]
    fn words_drop_plural_s_only() {
        let found: Vec<String> = words("plugins bots access bus status")
            .into_iter()
            .collect();
        assert_eq!(found, ["access", "bot", "bus", "plugin", "statu"]);
    }

    #[test]
    fn words_keep_non_ascii_letters() {
        let found: Vec<String> = words("Qué é um plugin?").into_iter().collect();
        assert_eq!(found, ["plugin", "qué", "um"]);
    }

    #[test]
    fn rank_puts_best_overlap_first() {
        let entries = knowledge();
        let matches = rank("how can my plugin store its data", &entries);
        let order: Vec<usize> = matches.iter().map(|found| found.index).collect();
        assert_eq!(order, [4, 2, 3]);
        assert_eq!(matches[0].score, 3);
    }

    #[test]
    fn rank_prefers_shorter_question_on_tie() {
        let entries = vec![
            entry(1, "Can a plugin call the network?"),
            entry(2, "Plugin?"),
        ];
        let matches = rank("plugin", &entries);
        assert_eq!(matches.first().map(|found| found.index), Some(1));
    }

    #[test]
    fn rank_breaks_ties_by_common_words() {
        let entries = vec![
            entry(1, "How do I chat with a bot?"),
            entry(2, "Who can chat with a bot?"),
        ];
        let matches = rank("who can chat with bots", &entries);
        let order: Vec<usize> = matches.iter().map(|found| found.index).collect();
        assert_eq!(order, [1, 0]);
        assert_eq!(matches[0].score, matches[1].score);
    }

    #[test]
    fn rank_is_empty_without_shared_words() {
        assert!(rank("what is the weather like", &knowledge()).is_empty());
        assert!(rank("", &knowledge()).is_empty());
        assert!(rank("chat", &[]).is_empty());
    }

    #[test]
    fn rank_scores_only_the_start_of_long_messages() {
        let mut message = "x ".repeat(MAX_MESSAGE_CHARS);
        message.push_str("grant");
        assert!(rank(&message, &knowledge()).is_empty());
    }

    #[test]
    fn suggestions_prefer_related_then_first_entries() {
        let matches = [Match { index: 4, score: 3 }, Match { index: 2, score: 1 }];
        assert_eq!(suggestions(&matches, Some(4), 5, 3), [2, 0, 1]);
    }

    #[test]
    fn suggestions_never_repeat_or_exceed_the_maximum() {
        assert_eq!(suggestions(&[], None, 5, 3), [0, 1, 2]);
        assert_eq!(suggestions(&[], Some(0), 2, 3), [1]);
        assert!(suggestions(&[], None, 0, 3).is_empty());
    }
}
