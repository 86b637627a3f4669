//! Chat over WebSocket: tickets, the authenticated upgrade, and the
//! conversation loop (docs/chat-protocol.md).
//!
//! This module owns everything between an HTTP request for a ticket and the
//! frames of a conversation. It checks `Origin`, redeems the ticket and
//! resolves the bot and conversation before the upgrade completes, so a
//! refused client never gets a socket. Running the bot is left to
//! [`crate::bots::BotService`], storing messages to
//! [`crate::storage::conversations`].

mod caps;
mod connection;
pub mod frames;

use std::num::NonZeroU32;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use self::caps::{
    CapExceeded, ConnectionCaps, ConnectionSlot, DEFAULT_MAX_CONNECTIONS_PER_IP,
    DEFAULT_MAX_CONNECTIONS_PER_USER,
};
use self::connection::{Chat, ChatPeer, Chatter};
use crate::auth::{Ticket, TicketHolder};
use crate::config::Config;
use crate::config::origin::{Origin, Scheme};
use crate::http::AppState;
use crate::http::client_ip::ClientIp;
use crate::http::error::ApiError;
use crate::http::extract::Caller;
use crate::storage::bots::{self, Visibility};
use crate::storage::conversations::{self, Conversation, ConversationId};
use crate::storage::tenants;

/// Default cap on one WebSocket message. Chat messages are small; the cap
/// stops a client from making the server buffer arbitrarily large frames.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;

/// Default time between pings; a peer that answers none for a whole
/// interval is dropped, so dead connections do not pile up.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);

/// Default `BOTSERVER_WS_MESSAGES_PER_MINUTE`: frames one connection may
/// send per minute, in bursts of up to as many. Each message runs the bot,
/// so the cap bounds the work one socket can queue; pings count too, since
/// each one makes the server answer.
pub const DEFAULT_MESSAGES_PER_MINUTE: u32 = 60;

/// Longest ticket text looked at; real tickets are 43 characters.
const MAX_TICKET_LEN: usize = 128;

/// Routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ws", get(open))
        .route("/api/v1/auth/ws-ticket", post(member_ticket))
        .route(
            "/api/v1/tenants/{tenant}/bots/{bot}/anonymous-session",
            post(anonymous_ticket),
        )
}

/// Limits of chat connections.
#[derive(Clone, Copy, Debug)]
pub struct ChatLimits {
    /// Largest message or frame accepted.
    pub max_message_bytes: usize,
    /// Time between pings.
    pub ping_interval: Duration,
    /// Frames one connection may send per minute.
    pub messages_per_minute: NonZeroU32,
}

impl ChatLimits {
    /// The limits configured in `config`, or the defaults.
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_message_bytes: config
                .extra
                .ws_max_message_size
                .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
            ping_interval: config
                .extra
                .ws_ping_interval
                .map_or(DEFAULT_PING_INTERVAL, Duration::from_secs),
            messages_per_minute: NonZeroU32::new(
                config
                    .extra
                    .ws_messages_per_minute
                    .unwrap_or(DEFAULT_MESSAGES_PER_MINUTE),
            )
            .unwrap_or(NonZeroU32::MIN),
        }
    }
}

#[derive(Debug, Serialize)]
struct TicketResponse {
    ticket: String,
    expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
}

async fn member_ticket(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<TicketResponse>, ApiError> {
    let ticket = Ticket {
        tenant: caller.user.tenant_id,
        holder: TicketHolder::User {
            user: caller.user.id,
            session: caller.claims.session(),
        },
        bot: None,
    };
    let text = state.tickets.issue(&ticket).await?;
    Ok(Json(TicketResponse {
        ticket: text.as_str().to_owned(),
        expires_in: state.tickets.ttl().as_secs(),
        user_id: None,
    }))
}

/// Issues a ticket for a new anonymous visitor of a public, enabled bot.
/// Every other bot, and an unknown tenant, is `NotFound`.
async fn anonymous_ticket(
    State(state): State<AppState>,
    Path((tenant, bot)): Path<(String, String)>,
) -> Result<Json<TicketResponse>, ApiError> {
    if !crate::http::is_bot_name(&bot) {
        return Err(ApiError::NotFound);
    }
    let tenant = tenants::find(&state.db, &tenant)
        .await?
        .ok_or(ApiError::NotFound)?;
    let record = bots::find(&state.db, tenant.id, &bot)
        .await?
        .filter(|record| record.visibility == Visibility::Public && record.enabled)
        .ok_or(ApiError::NotFound)?;
    let visitor = Uuid::new_v4();
    let ticket = Ticket {
        tenant: tenant.id,
        holder: TicketHolder::Anonymous { visitor },
        bot: Some(record.name.clone()),
    };
    let text = state.tickets.issue(&ticket).await?;
    let user_id = state
        .bots
        .user_pseudonym(tenant.id, &record.name, &visitor_account(visitor));
    Ok(Json(TicketResponse {
        ticket: text.as_str().to_owned(),
        expires_in: state.tickets.ttl().as_secs(),
        user_id: Some(user_id),
    }))
}

/// The account string a visitor's events run under. It cannot collide
/// with an account id, which is a bare UUID.
fn visitor_account(visitor: Uuid) -> String {
    format!("visitor:{visitor}")
}

#[derive(Debug, Deserialize)]
struct OpenQuery {
    ticket: Option<String>,
    bot: Option<String>,
    session_id: Option<String>,
}

/// `GET /ws`: checks origin, ticket, bot and conversation, then upgrades.
async fn open(
    State(state): State<AppState>,
    client: ClientIp,
    headers: HeaderMap,
    query: Result<Query<OpenQuery>, axum::extract::rejection::QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match prepare(&state, client, &headers, query, upgrade).await {
        Ok((upgrade, chat)) => {
            let limits = ChatLimits::from_config(&state.config);
            upgrade
                .max_message_size(limits.max_message_bytes)
                .max_frame_size(limits.max_message_bytes)
                .on_upgrade(move |socket| chat.run(socket, limits))
        }
        Err(error) => error.into_response(),
    }
}

async fn prepare(
    state: &AppState,
    client: ClientIp,
    headers: &HeaderMap,
    query: Result<Query<OpenQuery>, axum::extract::rejection::QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<(WebSocketUpgrade, Chat), ApiError> {
    check_origin(state, headers)?;
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::Request(rejection.status(), rejection.body_text().to_lowercase())
    })?;
    let Query(query) =
        query.map_err(|_| ApiError::bad_request("invalid query: expected `ticket` and `bot`"))?;
    let bot = query
        .bot
        .filter(|bot| crate::http::is_bot_name(bot))
        .ok_or_else(|| ApiError::bad_request("missing or invalid `bot`"))?;
    let session_id = query
        .session_id
        .map(|text| Uuid::parse_str(&text).map(ConversationId))
        .transpose()
        .map_err(|_| ApiError::bad_request("invalid `session_id`: expected a UUID"))?;
    let presented = query
        .ticket
        .filter(|ticket| ticket.len() <= MAX_TICKET_LEN)
        .ok_or(ApiError::Unauthenticated)?;
    let ticket = state
        .tickets
        .redeem(&presented)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    let chatter = chatter(state, &ticket).await?;

    if ticket.bot.as_ref().is_some_and(|only| *only != bot) {
        return Err(ApiError::NotFound);
    }
    let record = bots::find(&state.db, ticket.tenant, &bot)
        .await?
        .ok_or(ApiError::NotFound)?;
    if matches!(chatter, Chatter::Visitor { .. }) && record.visibility != Visibility::Public {
        return Err(ApiError::NotFound);
    }
    if !record.enabled {
        return Err(ApiError::Conflict("the bot is disabled"));
    }
    let slot = state
        .chat_connections
        .acquire(chatter.user(), client.key())
        .map_err(|cap| {
            tracing::info!(
                target: crate::http::ratelimit::SECURITY_TARGET,
                reason = cap.detail(),
                security.event = "ws_connection_refused",
                client.ip = %client,
                bot.name = %bot,
                "chat connection over the cap",
            );
            ApiError::TooMany(cap.detail())
        })?;
    let (conversation, resumed) = match session_id {
        Some(id) => (resume(state, &ticket, &chatter, &bot, id).await?, true),
        None => {
            let owner = chatter.owner();
            let created = conversations::create(&state.db, ticket.tenant, &bot, owner).await?;
            (created, false)
        }
    };
    let chat = Chat::new(
        state.clone(),
        ticket.tenant,
        bot,
        chatter,
        conversation,
        resumed,
        ChatPeer {
            client,
            _slot: slot,
        },
    );
    Ok((upgrade, chat))
}

/// Resolves who holds `ticket`; a user's login session must still be live.
async fn chatter(state: &AppState, ticket: &Ticket) -> Result<Chatter, ApiError> {
    match ticket.holder {
        TicketHolder::User { user, session } => {
            let found = state.auth.live_session_user(session, user).await?;
            match found {
                Some(found) if found.tenant_id == ticket.tenant => {
                    Ok(Chatter::Member { user, session })
                }
                _ => Err(ApiError::Unauthenticated),
            }
        }
        TicketHolder::Anonymous { visitor } => Ok(Chatter::Visitor { visitor }),
    }
}

async fn resume(
    state: &AppState,
    ticket: &Ticket,
    chatter: &Chatter,
    bot: &str,
    id: ConversationId,
) -> Result<Conversation, ApiError> {
    let conversation = conversations::find(&state.db, ticket.tenant, id)
        .await?
        .filter(|found| found.owner == chatter.owner() && found.bot == bot)
        .ok_or(ApiError::NotFound)?;
    Ok(conversation)
}

/// Refuses a browser request from a page whose origin is neither the
/// server's own nor listed in `BOTSERVER_ALLOWED_ORIGINS`. A request
/// without `Origin` is not from a browser page and passes.
fn check_origin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let refused = || ApiError::Forbidden("origin not allowed");
    let origin = value
        .to_str()
        .ok()
        .and_then(Origin::parse)
        .ok_or_else(refused)?;
    // The own origin is the `Host` header with the scheme this server
    // speaks. Behind a TLS proxy that scheme is `http`, so the public
    // `https://` origin must be listed in `BOTSERVER_ALLOWED_ORIGINS`.
    let scheme = if state.config.serves_tls() {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let own = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .and_then(|host| Origin::from_host(scheme, host));
    let allowed =
        own.as_ref() == Some(&origin) || state.config.extra.allowed_origins.contains(&origin);
    if allowed { Ok(()) } else { Err(refused()) }
}
