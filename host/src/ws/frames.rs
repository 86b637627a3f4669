//! The JSON frames of the chat protocol, in the shapes General Bots web
//! clients send and expect (docs/chat-protocol.md).

use serde::Serialize;
use serde_json::Value;

use crate::runtime::{Reply, Suggestion};

/// `message_type` of a user message.
pub const USER_MESSAGE: u8 = 1;
/// `message_type` of a bot reply.
pub const BOT_RESPONSE: u8 = 2;
/// `message_type` of a chosen suggestion.
pub const SUGGESTION: u8 = 4;
/// `message_type` of a system frame, which the server ignores.
pub const SYSTEM: u8 = 7;

/// Sent once, right after the upgrade.
#[derive(Debug, Serialize)]
pub struct Connected<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    session_id: String,
    user_id: &'a str,
    bot_id: &'a str,
    message: &'static str,
    tools: [(); 0],
}

impl<'a> Connected<'a> {
    /// The frame for conversation `session_id` of `user_id` with `bot_id`.
    pub fn new(session_id: String, user_id: &'a str, bot_id: &'a str) -> Self {
        Self {
            kind: "connected",
            session_id,
            user_id,
            bot_id,
            message: "connected",
            tools: [],
        }
    }
}

/// The recipient fields of a bot frame.
#[derive(Clone, Copy, Debug)]
pub struct Addressing<'a> {
    /// The bot's name.
    pub bot_id: &'a str,
    /// The pseudonymous user id the bot sees.
    pub user_id: &'a str,
    /// The conversation id.
    pub session_id: &'a str,
}

/// One bot reply (`BotResponse` in General Bots).
#[derive(Debug, Serialize)]
pub struct BotResponse<'a> {
    bot_id: &'a str,
    user_id: &'a str,
    session_id: &'a str,
    channel: &'static str,
    content: &'a str,
    message_type: u8,
    stream_token: Option<()>,
    is_complete: bool,
    suggestions: Vec<SuggestionFrame<'a>>,
    switchers: [(); 0],
    context_name: Option<()>,
    context_length: u32,
    context_max_length: u32,
}

#[derive(Debug, Serialize)]
struct SuggestionFrame<'a> {
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<&'a str>,
}

impl<'a> BotResponse<'a> {
    /// A complete reply with `text` and `suggestions`.
    pub fn new(to: Addressing<'a>, text: &'a str, suggestions: &'a [Suggestion]) -> Self {
        Self {
            bot_id: to.bot_id,
            user_id: to.user_id,
            session_id: to.session_id,
            channel: "web",
            content: text,
            message_type: BOT_RESPONSE,
            stream_token: None,
            is_complete: true,
            suggestions: suggestions
                .iter()
                .map(|suggestion| SuggestionFrame {
                    text: &suggestion.text,
                    context: suggestion.context.as_deref(),
                })
                .collect(),
            switchers: [],
            context_name: None,
            context_length: 0,
            context_max_length: 0,
        }
    }

    /// The frame of one plugin reply.
    pub fn reply(to: Addressing<'a>, reply: &'a Reply) -> Self {
        Self::new(to, &reply.text, &reply.suggestions)
    }
}

/// The reason a client frame got an error frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The plugin failed; its admin sees why.
    BotFailed,
    /// The bot was disabled during the conversation.
    BotDisabled,
    /// The frame is not a chat frame.
    InvalidFrame,
    /// The frame's `message_type` is not handled.
    UnsupportedMessageType,
    /// The message is over the connection's rate or the sender's budget.
    RateLimited,
    /// The server failed; the detail is logged.
    ServerError,
    /// The message text is longer than the server stores.
    MessageTooLong,
}

impl ErrorCode {
    fn as_str(self) -> &'static str {
        match self {
            Self::BotFailed => "bot_failed",
            Self::BotDisabled => "bot_disabled",
            Self::InvalidFrame => "invalid_frame",
            Self::UnsupportedMessageType => "unsupported_message_type",
            Self::RateLimited => "rate_limited",
            Self::ServerError => "server_error",
            Self::MessageTooLong => "message_too_long",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::BotFailed => "the bot could not answer this message",
            Self::BotDisabled => "the bot is disabled",
            Self::InvalidFrame => {
                "expected a JSON object with a string `content` and a numeric `message_type`"
            }
            Self::UnsupportedMessageType => "this `message_type` is not supported",
            Self::RateLimited => {
                "too many messages: wait before sending more; repeated ones close the connection"
            }
            Self::ServerError => "the server failed to handle this message",
            Self::MessageTooLong => "the message is longer than 65536 bytes",
        }
    }
}

/// An error frame; the connection stays open after it.
#[derive(Debug, Serialize)]
pub struct ErrorFrame {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    message: &'static str,
}

impl From<ErrorCode> for ErrorFrame {
    fn from(code: ErrorCode) -> Self {
        Self {
            kind: "error",
            code: code.as_str(),
            message: code.message(),
        }
    }
}

/// The request a client frame makes.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// A message to the bot, with the context of a chosen suggestion.
    Message {
        /// The text.
        content: String,
        /// The chosen suggestion's context.
        context: Option<String>,
    },
    /// A frame the server ignores.
    Ignored,
}

/// Parses a client text frame.
///
/// # Errors
///
/// Returns the [`ErrorCode`] to answer with.
pub fn parse(text: &str) -> Result<ClientFrame, ErrorCode> {
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(text) else {
        return Err(ErrorCode::InvalidFrame);
    };
    let message_type = match fields.get("message_type") {
        None => USER_MESSAGE,
        Some(value) => value
            .as_u64()
            .and_then(|value| u8::try_from(value).ok())
            .ok_or(ErrorCode::InvalidFrame)?,
    };
    match message_type {
        SYSTEM => return Ok(ClientFrame::Ignored),
        USER_MESSAGE | SUGGESTION => {}
        _ => return Err(ErrorCode::UnsupportedMessageType),
    }
    let content = match (fields.get("content"), fields.get("text")) {
        (Some(Value::String(content)), _) | (None, Some(Value::String(content))) => content,
        _ => return Err(ErrorCode::InvalidFrame),
    };
    if content.trim().is_empty() {
        return Err(ErrorCode::InvalidFrame);
    }
    let context = match fields.get("context") {
        None | Some(Value::Null) => None,
        Some(Value::String(context)) => Some(context.clone()),
        Some(_) => return Err(ErrorCode::InvalidFrame),
    };
    Ok(ClientFrame::Message {
        content: content.clone(),
        context,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(content: &str) -> ClientFrame {
        ClientFrame::Message {
            content: content.to_owned(),
            context: None,
        }
    }

    #[test]
    fn reads_general_bots_user_messages() {
        let frame = r#"{"bot_id":"b","user_id":"u","session_id":"s","channel":"web",
            "content":"hi","message_type":1,"active_switchers":[],"timestamp":"2026-01-01"}"#;
        assert_eq!(parse(frame), Ok(message("hi")));
        assert_eq!(
            parse(r#"{"text":"hi","message_type":1}"#),
            Ok(message("hi"))
        );
        assert_eq!(parse(r#"{"content":"hi"}"#), Ok(message("hi")));
        assert_eq!(
            parse(r#"{"content":"Yes","message_type":4,"context":"yes"}"#),
            Ok(ClientFrame::Message {
                content: "Yes".to_owned(),
                context: Some("yes".to_owned())
            })
        );
        assert_eq!(parse(r#"{"message_type":7}"#), Ok(ClientFrame::Ignored));
    }

    #[test]
    fn refuses_malformed_frames() {
        for frame in [
            "not json",
            "[1,2]",
            "\"hi\"",
            r#"{"content":5,"message_type":1}"#,
            r#"{"content":"hi","message_type":"1"}"#,
            r#"{"content":"hi","message_type":-1}"#,
            r#"{"content":"hi","message_type":1.5}"#,
            r#"{"content":"   ","message_type":1}"#,
            r#"{"message_type":1}"#,
            r#"{"content":"hi","context":{"x":1},"message_type":4}"#,
        ] {
            assert_eq!(parse(frame), Err(ErrorCode::InvalidFrame), "{frame}");
        }
        assert_eq!(
            parse(r#"{"content":"hi","message_type":6}"#),
            Err(ErrorCode::UnsupportedMessageType)
        );
    }

    #[test]
    fn bot_frames_have_the_general_bots_shape() {
        let suggestions = [Suggestion {
            text: "Again".to_owned(),
            context: Some("again".to_owned()),
        }];
        let to = Addressing {
            bot_id: "counter",
            user_id: "u1",
            session_id: "s1",
        };
        let frame = serde_json::to_value(BotResponse::new(to, "1", &suggestions)).unwrap();
        assert_eq!(frame["message_type"], 2);
        assert_eq!(frame["is_complete"], true);
        assert_eq!(frame["content"], "1");
        assert_eq!(frame["channel"], "web");
        assert_eq!(frame["suggestions"][0]["context"], "again");
        assert_eq!(frame["switchers"], serde_json::json!([]));
        let connected = serde_json::to_value(Connected::new("s1".into(), "u1", "counter")).unwrap();
        assert_eq!(connected["type"], "connected");
        assert_eq!(connected["tools"], serde_json::json!([]));
    }
}
