//! The [`Bot`] trait that a plugin implements, the error it returns, and
//! the glue that `export_bot!` uses to call it from the `handler` export.

use std::fmt;

use crate::bindings::botserver::bot::types as wit;
use crate::{Context, Event, Response};

/// A chat bot: the one function a plugin must provide.
///
/// The host creates a fresh instance of the plugin for every event, so an
/// implementation keeps nothing between calls in memory. Data that must
/// outlive the event goes to [`kv`](crate::kv) or into the conversation state
/// ([`Response::with_state`]).
///
/// Export the implementation with [`export_bot!`](crate::export_bot).
pub trait Bot {
    /// Handles one event and returns the replies for the user.
    ///
    /// # Errors
    ///
    /// A [`HandlerError`] reports why the event was not handled. The
    /// user sees a generic message and the tenant admin sees the error text.
    fn handle(ctx: &Context, event: Event) -> Result<Response, HandlerError>;
}

/// Why a bot could not handle an event.
///
/// The user is shown a generic message. The text goes to the tenant admin's
/// view of the bot, so it must not contain secrets or user data.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandlerError {
    /// The event is not something this bot handles.
    Unsupported(String),
    /// Something the bot depends on (an API, a secret, a setting, storage)
    /// was not available. Retrying later may work.
    Unavailable(String),
    /// Anything else that went wrong inside the bot.
    Failed(String),
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported(text) => write!(f, "unsupported: {text}"),
            Self::Unavailable(text) => write!(f, "unavailable: {text}"),
            Self::Failed(text) => write!(f, "failed: {text}"),
        }
    }
}

impl std::error::Error for HandlerError {}

impl From<HandlerError> for wit::HandlerError {
    fn from(error: HandlerError) -> Self {
        match error {
            HandlerError::Unsupported(text) => Self::Unsupported(text),
            HandlerError::Unavailable(text) => Self::Unavailable(text),
            HandlerError::Failed(text) => Self::Failed(text),
        }
    }
}

/// Converts the raw export arguments, calls `B::handle` and converts the
/// result back. Used by [`export_bot!`](crate::export_bot) only.
#[doc(hidden)]
pub fn dispatch<B: Bot>(
    ctx: wit::Context,
    event: wit::Event,
) -> Result<wit::Response, wit::HandlerError> {
    let ctx = Context::from(ctx);
    let event = Event::from(event);
    B::handle(&ctx, event)
        .map(wit::Response::from)
        .map_err(wit::HandlerError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_error_display_names_the_kind() {
        let error = HandlerError::Unavailable("secret `API_KEY` is not set".to_owned());
        assert_eq!(
            error.to_string(),
            "unavailable: secret `API_KEY` is not set"
        );
    }

    #[test]
    fn handler_error_converts_to_wit_variant() {
        let converted = wit::HandlerError::from(HandlerError::Unsupported("timer".to_owned()));
        assert!(matches!(converted, wit::HandlerError::Unsupported(text) if text == "timer"));
    }
}
