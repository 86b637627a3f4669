//! Counter bot: counts each user's messages and replies with the count as
//! plain decimal text ("1", "2", ...).
//!
//! The count lives in key-value storage under the user scope, so every user
//! has a counter of their own. The component imports `botserver:bot/kv` and
//! needs a `kv` grant to load.

use botserver_sdk::kv::{self, KvError, Scope};
use botserver_sdk::{Bot, Context, Event, HandlerError, Response};

/// Key of the counter in the user scope.
const COUNT_KEY: &str = "count";

struct Counter;

impl Bot for Counter {
    fn handle(_ctx: &Context, event: Event) -> Result<Response, HandlerError> {
        match event {
            Event::ConversationStarted => Ok(Response::text("Send me anything and I count it.")),
            Event::UserMessage { .. } => {
                let count =
                    increment().map_err(|error| HandlerError::Unavailable(error.to_string()))?;
                Ok(Response::text(count.to_string()))
            }
            other => Err(HandlerError::Unsupported(format!(
                "counter does not handle `{}` events",
                other.kind()
            ))),
        }
    }
}

/// Adds one to the user's counter and returns the new value.
///
/// NOTE: `kv` has no compare-and-swap, so two events of the same user that
/// run at once can read the same value, and one increment is lost.
fn increment() -> Result<u64, KvError> {
    let count = kv::get_u64(Scope::User, COUNT_KEY)?
        .unwrap_or(0)
        .saturating_add(1);
    kv::set_u64(Scope::User, COUNT_KEY, count)?;
    Ok(count)
}

botserver_sdk::export_bot!(Counter);
