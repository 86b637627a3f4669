//! The input of [`Bot::handle`](crate::Bot::handle): the [`Context`] of an
//! event and the [`Event`] itself.

use crate::bindings::botserver::bot::types as wit;

/// The tenant, bot, conversation, user and locale of an event.
///
/// The host fills every field. `Default` exists so that a bot's unit tests
/// can build a context and set only the fields they need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Context {
    /// Tenant that owns the bot.
    pub tenant: String,
    /// Name of the bot within its tenant.
    pub bot: String,
    /// Conversation identifier, stable for the life of a conversation.
    pub conversation: String,
    /// Pseudonymous user identifier: stable per user and bot, but neither
    /// the account name nor a way to find the account.
    pub user: String,
    /// The user's preferred locale as a BCP 47 tag, for example `pt-BR`.
    pub locale: String,
}

impl From<wit::Context> for Context {
    fn from(ctx: wit::Context) -> Self {
        Self {
            tenant: ctx.tenant,
            bot: ctx.bot,
            conversation: ctx.conversation,
            user: ctx.user,
            locale: ctx.locale,
        }
    }
}

/// A name and value that the chat client attached to a user message, for
/// example the `context` of a chosen [`Suggestion`](crate::Suggestion).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    /// Attribute name.
    pub name: String,
    /// Attribute value, passed through by the host unchanged.
    pub value: String,
}

/// The one thing that happened and that the bot is asked to handle.
///
/// New kinds of events may be added in later versions of the contract, so a
/// `match` needs a wildcard arm. Returning
/// [`HandlerError::Unsupported`](crate::HandlerError::Unsupported) from it is
/// the usual choice.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A new conversation started. The bot may greet the user.
    ConversationStarted,
    /// The user sent a message.
    UserMessage {
        /// The message text, at most the host's message size limit.
        text: String,
        /// Attributes attached by the chat client, in the order it sent them.
        attributes: Vec<Attribute>,
    },
    /// A conversation continues after the bot saved state. The payload is
    /// exactly the state the bot returned last in this conversation.
    DialogResumed(Vec<u8>),
}

impl Event {
    /// Returns the event's case name in the WIT contract, for example
    /// `user-message`. Unlike `Debug`, it never contains message text, so it
    /// is safe to log or to put in an error.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ConversationStarted => "conversation-started",
            Self::UserMessage { .. } => "user-message",
            Self::DialogResumed(_) => "dialog-resumed",
        }
    }

    /// Returns the value of the first attribute called `name` on a user
    /// message, or `None` for other events and absent attributes.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        let Self::UserMessage { attributes, .. } = self else {
            return None;
        };
        attributes
            .iter()
            .find(|attribute| attribute.name == name)
            .map(|attribute| attribute.value.as_str())
    }
}

impl From<wit::Event> for Event {
    fn from(event: wit::Event) -> Self {
        match event {
            wit::Event::ConversationStarted => Self::ConversationStarted,
            wit::Event::UserMessage(message) => Self::UserMessage {
                text: message.text,
                attributes: message
                    .attributes
                    .into_iter()
                    .map(|attribute| Attribute {
                        name: attribute.name,
                        value: attribute.value,
                    })
                    .collect(),
            },
            wit::Event::DialogResumed(state) => Self::DialogResumed(state),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message_with(attributes: &[(&str, &str)]) -> Event {
        Event::UserMessage {
            text: "hi".to_owned(),
            attributes: attributes
                .iter()
                .map(|(name, value)| Attribute {
                    name: (*name).to_owned(),
                    value: (*value).to_owned(),
                })
                .collect(),
        }
    }

    #[test]
    fn attribute_returns_first_match() {
        let event = message_with(&[("context", "a"), ("context", "b")]);
        assert_eq!(event.attribute("context"), Some("a"));
    }

    #[test]
    fn attribute_is_none_when_absent() {
        assert_eq!(message_with(&[]).attribute("context"), None);
        assert_eq!(Event::ConversationStarted.attribute("context"), None);
    }

    #[test]
    fn kind_omits_message_text() {
        assert_eq!(message_with(&[]).kind(), "user-message");
        assert_eq!(Event::DialogResumed(Vec::new()).kind(), "dialog-resumed");
    }

    #[test]
    fn user_message_converts_from_wit() {
        let raw = wit::Event::UserMessage(wit::UserMessage {
            text: "hello".to_owned(),
            attributes: vec![wit::Attribute {
                name: "context".to_owned(),
                value: "yes".to_owned(),
            }],
        });
        let expected = Event::UserMessage {
            text: "hello".to_owned(),
            attributes: vec![Attribute {
                name: "context".to_owned(),
                value: "yes".to_owned(),
            }],
        };
        assert_eq!(Event::from(raw), expected);
    }
}
