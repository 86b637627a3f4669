//! FAQ bot: answers questions from a knowledge base in its key-value
//! storage.
//!
//! The knowledge base is the bot-scope entries under `faq/<nnnn>`, each
//! holding UTF-8 text with the question on the first line and the answer
//! after it. `botserver demo --knowledge FILE` writes them. For a message,
//! the bot replies with the answer of the question that shares the most
//! words with it (see [`matching`]) and suggests up to three other
//! questions. A suggestion carries its entry's key as context, so picking
//! one returns that entry's answer without matching. Without a match it says so and suggests
//! questions, and a new conversation starts with a greeting and the first
//! questions.
//!
//! The component imports `botserver:bot/kv` only and needs a `kv` grant to
//! load. Entries it cannot parse are skipped.

mod matching;

use botserver_sdk::kv::{self, KvError, Scope};
use botserver_sdk::{Bot, Context, Event, HandlerError, Reply, Response, Suggestion};

use crate::matching::{Entry, rank, suggestions};

/// Prefix of every knowledge-base key.
const KEY_PREFIX: &str = "faq/";

/// Maximum entries read per event. Each costs one host call, so the cap
/// keeps an event within the default fuel and deadline however large the
/// knowledge base grows. Entries past it, in key order, are never matched.
const MAX_ENTRIES: usize = 500;

/// Keys requested per `list-keys` call.
const PAGE_KEYS: u32 = 100;

/// Maximum questions suggested with one reply.
const MAX_SUGGESTIONS: usize = 3;

struct Faq;

impl Bot for Faq {
    fn handle(_ctx: &Context, event: Event) -> Result<Response, HandlerError> {
        let chosen = event.attribute("context").map(str::to_owned);
        match event {
            Event::ConversationStarted | Event::DialogResumed(_) => Ok(greet(&load_entries()?)),
            Event::UserMessage { text, .. } => {
                Ok(answer(&load_entries()?, &text, chosen.as_deref()))
            }
            other => Err(HandlerError::Unsupported(format!(
                "faq does not handle `{}` events",
                other.kind()
            ))),
        }
    }
}

/// Reads up to [`MAX_ENTRIES`] entries in key order, skipping values that
/// do not parse.
fn load_entries() -> Result<Vec<Entry>, KvError> {
    let mut entries = Vec::new();
    let mut keys_read = 0;
    let mut after: Option<String> = None;
    while keys_read < MAX_ENTRIES {
        let keys = kv::list_keys(Scope::Bot, KEY_PREFIX, after.as_deref(), PAGE_KEYS)?;
        let full_page = keys.len() == PAGE_KEYS as usize;
        for key in keys.into_iter().take(MAX_ENTRIES - keys_read) {
            keys_read += 1;
            let value = kv::get(Scope::Bot, &key)?;
            if let Some(entry) = value.and_then(|value| Entry::parse(key.clone(), &value)) {
                entries.push(entry);
            }
            after = Some(key);
        }
        if !full_page {
            break;
        }
    }
    Ok(entries)
}

fn greet(entries: &[Entry]) -> Response {
    if entries.is_empty() {
        return empty_knowledge_base();
    }
    let reply = Reply::new("Hello! Ask me a question, or pick one below.");
    with_suggestions(
        reply,
        entries,
        &suggestions(&[], None, entries.len(), MAX_SUGGESTIONS),
    )
    .into()
}

fn answer(entries: &[Entry], message: &str, chosen: Option<&str>) -> Response {
    if entries.is_empty() {
        return empty_knowledge_base();
    }
    let matches = rank(message, entries);
    let picked = chosen
        .and_then(|key| entries.iter().position(|entry| entry.key == key))
        .or_else(|| matches.first().map(|best| best.index));
    let others = suggestions(&matches, picked, entries.len(), MAX_SUGGESTIONS);
    let reply = match picked.and_then(|index| entries.get(index)) {
        Some(entry) => Reply::new(entry.answer.clone()),
        None => Reply::new("I have no answer to that yet. Try one of these questions:"),
    };
    with_suggestions(reply, entries, &others).into()
}

fn with_suggestions(reply: Reply, entries: &[Entry], indexes: &[usize]) -> Reply {
    let picked = indexes.iter().filter_map(|index| entries.get(*index));
    reply.with_suggestions(
        picked.map(|entry| Suggestion::new(entry.question.clone()).with_context(entry.key.clone())),
    )
}

fn empty_knowledge_base() -> Response {
    Response::text(format!(
        "My knowledge base is empty: an admin adds questions under `{KEY_PREFIX}` keys in my storage."
    ))
}

botserver_sdk::export_bot!(Faq);

#[cfg(test)]
mod tests {
    use super::*;

    fn knowledge() -> Vec<Entry> {
        [
            "How do I chat with a bot?",
            "What is a grant?",
            "Where is my data stored?",
            "How do I write a plugin?",
        ]
        .iter()
        .enumerate()
        .map(|(index, question)| Entry {
            key: format!("faq/{:04}", index + 1),
            question: (*question).to_owned(),
            answer: format!("answer {}", index + 1),
        })
        .collect()
    }

    fn texts(response: &Response) -> Vec<&str> {
        response.replies().iter().map(Reply::text).collect()
    }

    fn suggested(response: &Response) -> Vec<(&str, Option<&str>)> {
        response
            .replies()
            .iter()
            .flat_map(Reply::suggestions)
            .map(|suggestion| (suggestion.text(), suggestion.context()))
            .collect()
    }

    #[test]
    fn answer_replies_with_best_match() {
        let response = answer(&knowledge(), "what's a grant?", None);
        assert_eq!(texts(&response), ["answer 2"]);
        let questions: Vec<&str> = suggested(&response).iter().map(|(text, _)| *text).collect();
        assert_eq!(
            questions,
            [
                "How do I chat with a bot?",
                "Where is my data stored?",
                "How do I write a plugin?"
            ]
        );
    }

    #[test]
    fn answer_follows_chosen_suggestion() {
        let response = answer(&knowledge(), "anything", Some("faq/0004"));
        assert_eq!(texts(&response), ["answer 4"]);
        assert!(
            suggested(&response)
                .iter()
                .all(|(_, context)| *context != Some("faq/0004"))
        );
    }

    #[test]
    fn answer_ignores_unknown_context() {
        let response = answer(&knowledge(), "where is data kept", Some("faq/9999"));
        assert_eq!(texts(&response), ["answer 3"]);
    }

    #[test]
    fn answer_without_match_suggests_first_questions() {
        let response = answer(&knowledge(), "weather tomorrow", None);
        assert_eq!(
            texts(&response),
            ["I have no answer to that yet. Try one of these questions:"]
        );
        let contexts: Vec<Option<&str>> = suggested(&response)
            .iter()
            .map(|(_, context)| *context)
            .collect();
        assert_eq!(
            contexts,
            [Some("faq/0001"), Some("faq/0002"), Some("faq/0003")]
        );
    }

    #[test]
    fn greeting_suggests_first_questions() {
        let response = greet(&knowledge());
        assert_eq!(response.replies().len(), 1);
        assert_eq!(suggested(&response).len(), MAX_SUGGESTIONS);
    }

    #[test]
    fn empty_knowledge_base_is_reported() {
        for response in [greet(&[]), answer(&[], "hello", None)] {
            assert!(texts(&response)[0].starts_with("My knowledge base is empty"));
            assert!(suggested(&response).is_empty());
        }
    }
}
