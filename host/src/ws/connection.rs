//! One open chat connection: the `connected` frame, then one bot
//! invocation per user message, in order, with pings in between.

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use governor::{DefaultDirectRateLimiter, Quota};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument as _;
use uuid::Uuid;

use super::ChatLimits;
use super::caps::ConnectionSlot;
use super::frames::{self, Addressing, BotResponse, ClientFrame, Connected, ErrorCode, ErrorFrame};
use crate::audit::request::RequestInfo;
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::auth::SessionId;
use crate::bots::BotError;
use crate::http::AppState;
use crate::http::client_ip::ClientIp;
use crate::http::ratelimit::{SECURITY_TARGET, Verdict};
use crate::runtime::{Attribute, Event, Response, UserMessage};
use crate::storage::conversations::{self, Conversation, Owner, Role};
use crate::storage::{TenantId, UserId};

/// Invalid frames a connection may send before it is closed with 1008.
const MAX_INVALID_FRAMES: u32 = 10;

/// Over-budget messages in a row a connection may send before it is
/// closed with 1008. A client that waits as its error frames ask never
/// gets here; one that keeps flooding is cut off.
const MAX_LIMITED_MESSAGES: u32 = 5;

/// Largest chat message text accepted, in bytes. Every message is stored
/// and comes back in history pages, so the cap bounds both the database
/// and the size of one page.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// Close code for an orderly end.
const NORMAL_CLOSURE: u16 = 1000;

/// Close code for a policy violation.
const POLICY_VIOLATION: u16 = 1008;
/// Close code for a message over the size cap.
const MESSAGE_TOO_BIG: u16 = 1009;

/// The person chatting.
#[derive(Clone, Copy, Debug)]
pub(super) enum Chatter {
    /// A signed-in user, under one login session.
    Member {
        /// The account.
        user: UserId,
        /// The login session; when it ends, so does the chat.
        session: SessionId,
    },
    /// An anonymous visitor of a public bot.
    Visitor {
        /// The visitor's random id.
        visitor: Uuid,
    },
}

impl Chatter {
    /// The owner of this chatter's conversations.
    pub(super) fn owner(&self) -> Owner {
        match *self {
            Self::Member { user, .. } => Owner::Account(user),
            Self::Visitor { visitor } => Owner::Visitor(visitor),
        }
    }

    /// The account of a signed-in user; `None` for a visitor.
    pub(super) fn user(&self) -> Option<UserId> {
        match *self {
            Self::Member { user, .. } => Some(user),
            Self::Visitor { .. } => None,
        }
    }

    /// The account string the bot's events run under.
    fn account(&self) -> String {
        match *self {
            Self::Member { user, .. } => user.to_string(),
            Self::Visitor { visitor } => super::visitor_account(visitor),
        }
    }
}

/// The reason the server ends a connection.
enum Close {
    /// The peer left or the socket failed; nothing more to send.
    Gone,
    /// Close with this code and reason.
    With(u16, &'static str),
    /// Close with this code and reason, and record a security event: the
    /// peer abused the connection.
    Abuse(u16, &'static str),
}

/// The client end of a connection, held for as long as it is open.
#[derive(Debug)]
pub(super) struct ChatPeer {
    /// The client address.
    pub(super) client: ClientIp,
    /// The connection's place under the per-user and per-address caps,
    /// released when the connection ends and this is dropped.
    pub(super) _slot: ConnectionSlot,
}

/// A conversation ready to run on an upgraded socket.
pub(super) struct Chat {
    state: AppState,
    tenant: TenantId,
    bot: String,
    chatter: Chatter,
    conversation: Conversation,
    resumed: bool,
    user_id: String,
    session_id: String,
    invalid_frames: u32,
    peer: ChatPeer,
    message_rate: DefaultDirectRateLimiter,
    limited_messages: u32,
    /// The upgrade request, for audit events of this connection.
    request: RequestInfo,
}

impl Chat {
    pub(super) fn new(
        state: AppState,
        tenant: TenantId,
        bot: String,
        chatter: Chatter,
        conversation: Conversation,
        resumed: bool,
        peer: ChatPeer,
    ) -> Self {
        let user_id = state.bots.user_pseudonym(tenant, &bot, &chatter.account());
        let session_id = conversation.id.to_string();
        let per_minute = ChatLimits::from_config(&state.config).messages_per_minute;
        let message_rate = governor::RateLimiter::direct(Quota::per_minute(per_minute));
        Self {
            state,
            tenant,
            bot,
            chatter,
            conversation,
            resumed,
            user_id,
            session_id,
            invalid_frames: 0,
            peer,
            message_rate,
            limited_messages: 0,
            request: RequestInfo::current(),
        }
    }

    /// Runs the conversation until either side ends it.
    pub(super) async fn run(mut self, socket: WebSocket, limits: ChatLimits) {
        let span = tracing::info_span!(
            "ws.chat",
            tenant.id = %self.tenant,
            bot.name = %self.bot,
            conversation.id = %self.session_id,
            user.id = %self.chatter.account(),
            request.id = self.request.request_id.as_deref().unwrap_or(""),
        );
        async move {
            let _open = self.state.metrics.ws_opened();
            tracing::debug!("chat connection opened");
            let mut socket = socket;
            let close = self.serve(&mut socket, limits).await;
            if let Close::Abuse(code, reason) = close {
                self.record_abuse(code, reason);
                let event = AuditEvent::new("chat.abuse.close", Outcome::Denied)
                    .actor(Actor::Account(self.chatter.account()))
                    .tenant(self.tenant)
                    .target(format!("conversation:{}", self.session_id))
                    .request(&self.request)
                    .detail("bot", self.bot.as_str())
                    .detail("close_code", code)
                    .detail("reason", reason);
                self.state.audit.record(event).await;
            }
            if let Close::With(code, reason) | Close::Abuse(code, reason) = close {
                tracing::debug!(close.code = code, close.reason = reason, "closing chat");
                let frame = CloseFrame {
                    code,
                    reason: reason.into(),
                };
                let _ = socket.send(Message::Close(Some(frame))).await;
            }
            tracing::debug!("chat connection ended");
        }
        .instrument(span)
        .await;
    }

    async fn serve(&mut self, socket: &mut WebSocket, limits: ChatLimits) -> Close {
        let connected = Connected::new(self.session_id.clone(), &self.user_id, &self.bot);
        if let Err(close) = send_json(socket, &connected).await {
            return close;
        }
        if let Err(close) = self.open_conversation(socket).await {
            return close;
        }
        let mut ping =
            tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut heard_since_ping = true;
        loop {
            tokio::select! {
                received = socket.recv() => {
                    heard_since_ping = true;
                    let result = match received {
                        None => return Close::Gone,
                        Some(Err(error)) => return read_failure(error),
                        Some(Ok(message)) => self.on_message(socket, message).await,
                    };
                    if let Err(close) = result {
                        return close;
                    }
                }
                _ = ping.tick() => {
                    if !heard_since_ping {
                        tracing::debug!("peer sent no pong for a whole interval; dropping it");
                        return Close::Gone;
                    }
                    heard_since_ping = false;
                    if socket.send(Message::Ping(Default::default())).await.is_err() {
                        return Close::Gone;
                    }
                }
            }
        }
    }

    /// Greets a new conversation, or resumes a saved dialog. Either way the
    /// client gets at least one bot frame, an empty one when the bot has
    /// nothing to say, so it knows when it may send.
    async fn open_conversation(&mut self, socket: &mut WebSocket) -> Result<(), Close> {
        let event = if self.resumed {
            let saved = conversations::state(
                &self.state.db,
                &self.state.vault,
                self.tenant,
                &self.conversation,
            )
            .await;
            match saved {
                Ok(Some(state)) => Event::DialogResumed(state),
                Ok(None) => return self.deliver(socket, &no_reply()).await,
                Err(error) => {
                    tracing::error!(error = %error, "failed to open a saved dialog state");
                    return send_json(socket, &ErrorFrame::from(ErrorCode::ServerError)).await;
                }
            }
        } else {
            Event::ConversationStarted
        };
        // A bot without a greeting is normal, and a failing one is in its
        // status and the log already, so both end in an empty frame.
        let response = self.invoke(event).await.unwrap_or_else(|_| no_reply());
        self.deliver(socket, &response).await
    }

    async fn on_message(&mut self, socket: &mut WebSocket, message: Message) -> Result<(), Close> {
        if matches!(message, Message::Text(_) | Message::Binary(_)) {
            self.state.metrics.ws_received();
        }
        let counted = matches!(
            message,
            Message::Text(_) | Message::Binary(_) | Message::Ping(_)
        );
        if counted && self.message_rate.check().is_err() {
            return self.over_budget(socket).await;
        }
        match message {
            Message::Text(text) => match frames::parse(text.as_str()) {
                Ok(ClientFrame::Message { content, context }) => {
                    let started = Instant::now();
                    let result = self.turn(socket, content, context).await;
                    self.state.metrics.ws_turn(started.elapsed());
                    result
                }
                Ok(ClientFrame::Ignored) => Ok(()),
                Err(code) => self.invalid(socket, code).await,
            },
            Message::Binary(_) => self.invalid(socket, ErrorCode::InvalidFrame).await,
            Message::Ping(_) | Message::Pong(_) => Ok(()),
            Message::Close(_) => Err(Close::Gone),
        }
    }

    async fn invalid(&mut self, socket: &mut WebSocket, code: ErrorCode) -> Result<(), Close> {
        self.invalid_frames += 1;
        if self.invalid_frames > MAX_INVALID_FRAMES {
            tracing::info!(
                frames = self.invalid_frames,
                "closing chat after repeated invalid frames"
            );
            return Err(Close::Abuse(POLICY_VIOLATION, "too many invalid frames"));
        }
        send_json(socket, &ErrorFrame::from(code)).await
    }

    /// Handles one user message: checks the login, stores it, runs the bot
    /// and sends its replies.
    async fn turn(
        &mut self,
        socket: &mut WebSocket,
        content: String,
        context: Option<String>,
    ) -> Result<(), Close> {
        let verdict = self
            .state
            .limiter
            .check_chat_message(self.chatter.user(), self.peer.client)
            .await;
        match verdict {
            Verdict::Allowed => self.limited_messages = 0,
            Verdict::Limited(_) => return self.over_budget(socket).await,
            Verdict::Unavailable => {
                return send_json(socket, &ErrorFrame::from(ErrorCode::ServerError)).await;
            }
        }
        if let Chatter::Member { user, session } = self.chatter {
            let live = self.state.auth.live_session_user(session, user).await;
            match live {
                Ok(Some(_)) => {}
                Ok(None) => return Err(Close::With(POLICY_VIOLATION, "session ended")),
                Err(error) => {
                    tracing::error!(error = %error, "failed to check the login session");
                    return send_json(socket, &ErrorFrame::from(ErrorCode::ServerError)).await;
                }
            }
        }
        if content.len() > MAX_TEXT_BYTES {
            return self.invalid(socket, ErrorCode::MessageTooLong).await;
        }
        if !self.bot_still_open().await? {
            send_json(socket, &ErrorFrame::from(ErrorCode::BotDisabled)).await?;
            return Err(Close::With(
                NORMAL_CLOSURE,
                "the bot is no longer available",
            ));
        }
        if let Err(error) = self.store(Role::User, &content).await {
            tracing::error!(error = %error, "failed to store a user message");
            return send_json(socket, &ErrorFrame::from(ErrorCode::ServerError)).await;
        }
        let attributes = context
            .map(|value| {
                vec![Attribute {
                    name: "context".to_owned(),
                    value,
                }]
            })
            .unwrap_or_default();
        let event = Event::UserMessage(UserMessage {
            text: content,
            attributes,
        });
        match self.invoke(event).await {
            Ok(response) => self.deliver(socket, &response).await,
            Err(BotError::Disabled | BotError::NotFound) => {
                send_json(socket, &ErrorFrame::from(ErrorCode::BotDisabled)).await
            }
            Err(BotError::Storage(error)) => {
                tracing::error!(error = %error, "bot event failed in storage");
                send_json(socket, &ErrorFrame::from(ErrorCode::ServerError)).await
            }
            Err(_) => send_json(socket, &ErrorFrame::from(ErrorCode::BotFailed)).await,
        }
    }

    /// Returns whether the bot and this conversation still exist and the
    /// bot is still open to this chatter: an admin may have deleted the bot
    /// or made it members-only since the upgrade.
    async fn bot_still_open(&self) -> Result<bool, Close> {
        let db = &self.state.db;
        let record = crate::storage::bots::find(db, self.tenant, &self.bot).await;
        let conversation = conversations::find(db, self.tenant, self.conversation.id).await;
        match (record, conversation) {
            (Ok(record), Ok(conversation)) => {
                let visible = record.is_some_and(|record| {
                    matches!(self.chatter, Chatter::Member { .. })
                        || record.visibility == crate::storage::bots::Visibility::Public
                });
                Ok(visible && conversation.is_some())
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::error!(error = %error, "failed to load the bot of a chat");
                Err(Close::With(1011, "server error"))
            }
        }
    }

    /// Answers a message over the connection's rate or the sender's budget
    /// with an error frame, and closes after too many in a row.
    async fn over_budget(&mut self, socket: &mut WebSocket) -> Result<(), Close> {
        self.limited_messages += 1;
        if self.limited_messages > MAX_LIMITED_MESSAGES {
            return Err(Close::Abuse(POLICY_VIOLATION, "rate limit exceeded"));
        }
        send_json(socket, &ErrorFrame::from(ErrorCode::RateLimited)).await
    }

    /// Records why the server closes an abusive connection, for the audit
    /// log and metrics. Never the message text.
    fn record_abuse(&self, code: u16, reason: &'static str) {
        tracing::info!(
            target: SECURITY_TARGET,
            reason,
            security.event = "ws_abuse",
            close.code = code,
            tenant.id = %self.tenant,
            bot.name = %self.bot,
            user.id = %self.chatter.account(),
            client.ip = %self.peer.client,
            "closing an abusive chat connection",
        );
    }

    async fn invoke(&self, event: Event) -> Result<Response, BotError> {
        self.state
            .bots
            .handle_event(
                self.tenant,
                &self.bot,
                &self.chatter.account(),
                &self.session_id,
                event,
            )
            .await
    }

    /// Stores and sends the bot's replies, and keeps its dialog state.
    async fn deliver(&self, socket: &mut WebSocket, response: &Response) -> Result<(), Close> {
        if let Some(state) = &response.state {
            let saved = conversations::save_state(
                &self.state.db,
                &self.state.vault,
                self.tenant,
                &self.conversation,
                state,
            )
            .await;
            if let Err(error) = saved {
                tracing::error!(error = %error, "failed to save the dialog state");
            }
        }
        let to = Addressing {
            bot_id: &self.bot,
            user_id: &self.user_id,
            session_id: &self.session_id,
        };
        if response.replies.is_empty() {
            self.state.metrics.ws_sent();
            return send_json(socket, &BotResponse::new(to, "", &[])).await;
        }
        for reply in &response.replies {
            if let Err(error) = self.store(Role::Bot, &reply.text).await {
                tracing::error!(error = %error, "failed to store a bot message");
            }
            self.state.metrics.ws_sent();
            send_json(socket, &BotResponse::reply(to, reply)).await?;
        }
        Ok(())
    }

    async fn store(&self, role: Role, content: &str) -> Result<(), crate::crypto::CryptoError> {
        conversations::append(
            &self.state.db,
            &self.state.vault,
            self.tenant,
            &self.conversation,
            role,
            content,
        )
        .await
    }
}

/// Returns a response with no replies and no state change.
fn no_reply() -> Response {
    Response {
        replies: Vec::new(),
        state: None,
    }
}

async fn send_json(socket: &mut WebSocket, frame: &impl serde::Serialize) -> Result<(), Close> {
    let text = serde_json::to_string(frame).map_err(|error| {
        tracing::error!(error = %error, "failed to encode a chat frame");
        Close::With(1011, "server error")
    })?;
    socket
        .send(Message::Text(text.into()))
        .await
        .map_err(|_| Close::Gone)
}

/// Maps a read failure: a message over the cap closes with 1009, anything
/// else means the peer is gone or broke the protocol.
fn read_failure(error: axum::Error) -> Close {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match error.into_inner().downcast::<WsError>() {
        Ok(error) if matches!(*error, WsError::Capacity(_)) => {
            tracing::debug!("chat message over the size cap");
            Close::Abuse(MESSAGE_TOO_BIG, "message too big")
        }
        Ok(error) if matches!(*error, WsError::Protocol(_)) => Close::With(1002, "protocol error"),
        _ => Close::Gone,
    }
}
