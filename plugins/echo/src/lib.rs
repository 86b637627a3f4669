//! Echo bot: replies to each message with its text, unchanged.
//!
//! It calls no host interface, so the component imports no capability and
//! loads without any grant.

use botserver_sdk::{Bot, Context, Event, HandlerError, Response};

struct Echo;

impl Bot for Echo {
    fn handle(_ctx: &Context, event: Event) -> Result<Response, HandlerError> {
        match event {
            Event::ConversationStarted => Ok(Response::text("Hello! I repeat what you send me.")),
            Event::UserMessage { text, .. } => Ok(Response::text(text)),
            Event::DialogResumed(_) => Ok(Response::text("Welcome back.")),
            other => Err(HandlerError::Unsupported(format!(
                "echo does not handle `{}` events",
                other.kind()
            ))),
        }
    }
}

botserver_sdk::export_bot!(Echo);

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(response: &Response) -> Vec<&str> {
        response
            .replies()
            .iter()
            .map(|reply| reply.text())
            .collect()
    }

    #[test]
    fn message_is_repeated_exactly() -> Result<(), HandlerError> {
        let event = Event::UserMessage {
            text: "  hello, bot  ".to_owned(),
            attributes: Vec::new(),
        };
        let response = Echo::handle(&Context::default(), event)?;
        assert_eq!(texts(&response), ["  hello, bot  "]);
        Ok(())
    }

    #[test]
    fn conversation_start_gets_one_greeting() -> Result<(), HandlerError> {
        let response = Echo::handle(&Context::default(), Event::ConversationStarted)?;
        assert_eq!(response.replies().len(), 1);
        Ok(())
    }
}
