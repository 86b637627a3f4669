//! Secrets demo bot: reports whether the secret `API_KEY` is set and how
//! long it is, never its value.
//!
//! The component imports `botserver:bot/secrets` and needs a `secrets`
//! grant that lists `API_KEY`.

use botserver_sdk::secrets::{self, SecretError};
use botserver_sdk::{Bot, Context, Event, HandlerError, Response};

/// Name of the secret this bot checks.
const SECRET_NAME: &str = "API_KEY";

struct SecretsDemo;

impl Bot for SecretsDemo {
    fn handle(_ctx: &Context, event: Event) -> Result<Response, HandlerError> {
        match event {
            Event::ConversationStarted => Ok(Response::text(format!(
                "Send any message to check whether {SECRET_NAME} is set."
            ))),
            Event::UserMessage { .. } => describe_secret(),
            other => Err(HandlerError::Unsupported(format!(
                "secrets-demo does not handle `{}` events",
                other.kind()
            ))),
        }
    }
}

fn describe_secret() -> Result<Response, HandlerError> {
    let secret = match secrets::open(SECRET_NAME) {
        Ok(secret) => secret,
        Err(SecretError::NotFound { .. }) => {
            return Ok(Response::text(format!("{SECRET_NAME} is not set")));
        }
        Err(error) => return Err(HandlerError::Unavailable(error.to_string())),
    };
    let value = secret
        .reveal()
        .map_err(|error| HandlerError::Unavailable(error.to_string()))?;
    Ok(Response::text(format!(
        "{SECRET_NAME} is set ({} characters)",
        value.char_count()
    )))
}

botserver_sdk::export_bot!(SecretsDemo);
