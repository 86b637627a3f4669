//! The return value of [`Bot::handle`](crate::Bot::handle): a [`Response`]
//! made of [`Reply`] messages with optional [`Suggestion`] buttons, and
//! optional conversation state.

use crate::bindings::botserver::bot::types as wit;

/// Everything a bot returns for one event.
///
/// ```
/// use botserver_sdk::Response;
///
/// let response = Response::text("Shall I go on?")
///     .with_suggestions(["yes", "no"])
///     .with_state(b"step=2".to_vec());
/// assert_eq!(response.replies()[0].suggestions().len(), 2);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    replies: Vec<Reply>,
    state: Option<Vec<u8>>,
}

impl Response {
    /// Creates a response without replies that keeps the stored
    /// conversation state as it is.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates a response with one reply of plain text.
    pub fn text(text: impl Into<String>) -> Self {
        Self::new().and_reply(Reply::new(text))
    }

    /// Appends a reply of plain text after the existing ones.
    pub fn and_text(self, text: impl Into<String>) -> Self {
        self.and_reply(Reply::new(text))
    }

    /// Appends `reply` after the existing ones.
    pub fn and_reply(mut self, reply: Reply) -> Self {
        self.replies.push(reply);
        self
    }

    /// Adds suggestions to the last reply.
    ///
    /// A response without replies has no message to attach them to, so on
    /// such a response this does nothing. Start with [`Response::text`] or
    /// use [`Reply::with_suggestions`] to avoid that.
    pub fn with_suggestions<I>(mut self, suggestions: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<Suggestion>,
    {
        if let Some(last) = self.replies.pop() {
            self.replies.push(last.with_suggestions(suggestions));
        }
        self
    }

    /// Sets the state to store for this conversation. The host hands it back
    /// in [`Event::DialogResumed`](crate::Event::DialogResumed). Without it
    /// the host keeps the state it already has.
    pub fn with_state(mut self, state: impl Into<Vec<u8>>) -> Self {
        self.state = Some(state.into());
        self
    }

    /// Returns the replies in the order the user will see them.
    pub fn replies(&self) -> &[Reply] {
        &self.replies
    }

    /// Returns the state to store for the conversation, if the bot set one.
    pub fn state(&self) -> Option<&[u8]> {
        self.state.as_deref()
    }
}

impl From<Reply> for Response {
    fn from(reply: Reply) -> Self {
        Self::new().and_reply(reply)
    }
}

impl From<Response> for wit::Response {
    fn from(response: Response) -> Self {
        Self {
            replies: response.replies.into_iter().map(wit::Reply::from).collect(),
            state: response.state,
        }
    }
}

/// One message from the bot to the user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    text: String,
    suggestions: Vec<Suggestion>,
}

impl Reply {
    /// Creates a reply with `text` and no suggestions.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            suggestions: Vec::new(),
        }
    }

    /// Appends one suggestion.
    pub fn with_suggestion(mut self, suggestion: impl Into<Suggestion>) -> Self {
        self.suggestions.push(suggestion.into());
        self
    }

    /// Appends several suggestions, in order.
    pub fn with_suggestions<I>(mut self, suggestions: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<Suggestion>,
    {
        self.suggestions
            .extend(suggestions.into_iter().map(Into::into));
        self
    }

    /// Returns the message text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Returns the quick replies shown with this message.
    pub fn suggestions(&self) -> &[Suggestion] {
        &self.suggestions
    }
}

impl From<Reply> for wit::Reply {
    fn from(reply: Reply) -> Self {
        Self {
            text: reply.text,
            suggestions: reply
                .suggestions
                .into_iter()
                .map(wit::Suggestion::from)
                .collect(),
        }
    }
}

/// A quick reply that the chat client shows as a button.
///
/// When the user picks it, the client sends its text as a user message and
/// its context, if any, as the `context` attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suggestion {
    text: String,
    context: Option<String>,
}

impl Suggestion {
    /// Creates a suggestion with button text `text` and no context.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            context: None,
        }
    }

    /// Sets the opaque value sent back as the `context` attribute.
    pub fn with_context(mut self, context: impl Into<String>) -> Self {
        self.context = Some(context.into());
        self
    }

    /// Returns the text shown on the button and sent back when it is picked.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Returns the value sent back as the `context` attribute, if set.
    pub fn context(&self) -> Option<&str> {
        self.context.as_deref()
    }
}

impl From<&str> for Suggestion {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl From<String> for Suggestion {
    fn from(text: String) -> Self {
        Self::new(text)
    }
}

impl From<Suggestion> for wit::Suggestion {
    fn from(suggestion: Suggestion) -> Self {
        Self {
            text: suggestion.text,
            context: suggestion.context,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_creates_one_reply() {
        let response = Response::text("hi");
        assert_eq!(response.replies(), [Reply::new("hi")]);
        assert_eq!(response.state(), None);
    }

    #[test]
    fn suggestions_attach_to_last_reply() {
        let response = Response::text("first")
            .and_text("second")
            .with_suggestions(["a", "b"]);
        assert!(response.replies()[0].suggestions().is_empty());
        let texts: Vec<&str> = response.replies()[1]
            .suggestions()
            .iter()
            .map(Suggestion::text)
            .collect();
        assert_eq!(texts, ["a", "b"]);
    }

    #[test]
    fn suggestions_on_empty_response_are_dropped() {
        let response = Response::new().with_suggestions(["a"]);
        assert!(response.replies().is_empty());
    }

    #[test]
    fn state_is_kept() {
        let response = Response::text("saved").with_state(*b"step=2");
        assert_eq!(response.state(), Some(&b"step=2"[..]));
    }

    #[test]
    fn response_converts_to_wit() {
        let reply = Reply::new("pick one")
            .with_suggestion(Suggestion::new("yes").with_context("answer=yes"));
        let raw = wit::Response::from(Response::from(reply).with_state(vec![1, 2]));
        assert_eq!(raw.replies.len(), 1);
        assert_eq!(raw.replies[0].text, "pick one");
        assert_eq!(raw.replies[0].suggestions[0].text, "yes");
        assert_eq!(
            raw.replies[0].suggestions[0].context.as_deref(),
            Some("answer=yes")
        );
        assert_eq!(raw.state, Some(vec![1, 2]));
    }
}
