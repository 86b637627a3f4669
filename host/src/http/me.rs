//! `/api/v1/me`: the caller's own account.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use super::users::{UserView, view};
use crate::auth::password::Password;
use crate::storage::bots::{self, Visibility};
use crate::storage::conversations::{self, Conversation, ConversationId, Message, Owner};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/me", get(me))
        .route("/api/v1/me/password", post(change_password))
        .route("/api/v1/me/bots", get(my_bots))
        .route("/api/v1/me/conversations", get(my_conversations))
        .route(
            "/api/v1/me/conversations/{conversation}/messages",
            get(conversation_messages),
        )
}

async fn me(State(state): State<AppState>, caller: Caller) -> Result<Json<UserView>, ApiError> {
    Ok(Json(view(&state, &caller.user).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordChange {
    current_password: Password,
    new_password: Password,
}

/// Changes the password and ends every session of the caller, this one
/// included, so a stolen session does not survive the change.
async fn change_password(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    state
        .auth
        .change_password(
            &caller.user,
            &request.current_password,
            &request.new_password,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A bot the caller can chat with.
#[derive(Debug, Serialize)]
struct ChatBot {
    name: String,
    visibility: Visibility,
}

/// The enabled bots of the caller's tenant.
async fn my_bots(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let found = bots::list(&state.db, caller.user.tenant_id).await?;
    let bots: Vec<ChatBot> = found
        .into_iter()
        .filter(|bot| bot.enabled)
        .map(|bot| ChatBot {
            name: bot.name,
            visibility: bot.visibility,
        })
        .collect();
    Ok(Json(serde_json::json!({ "bots": bots })))
}

async fn my_conversations(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let found =
        conversations::list_for_account(&state.db, caller.user.tenant_id, caller.user.id).await?;
    Ok(Json(serde_json::json!({ "conversations": found })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

#[derive(Debug, Serialize)]
struct History {
    conversation: Conversation,
    messages: Vec<Message>,
}

/// Messages of one of the caller's conversations. Anyone else's
/// conversation, and an unknown id, is `NotFound`.
async fn conversation_messages(
    State(state): State<AppState>,
    caller: Caller,
    Path(conversation): Path<String>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<History>, ApiError> {
    let Query(query) = query.map_err(|_| {
        ApiError::bad_request(
            "invalid query: expected `after` (a message number) and `limit` (1 to 500), each at most once",
        )
    })?;
    if query
        .limit
        .is_some_and(|limit| limit == 0 || limit > conversations::MAX_HISTORY_PAGE)
    {
        return Err(ApiError::bad_request(format!(
            "invalid `limit`: expected 1 to {}",
            conversations::MAX_HISTORY_PAGE
        )));
    }
    let id = Uuid::parse_str(&conversation)
        .map(ConversationId)
        .map_err(|_| ApiError::NotFound)?;
    let tenant = caller.user.tenant_id;
    let conversation = conversations::find(&state.db, tenant, id)
        .await?
        .filter(|found| found.owner == Owner::Account(caller.user.id))
        .ok_or(ApiError::NotFound)?;
    let limit = query
        .limit
        .unwrap_or(conversations::MAX_HISTORY_PAGE)
        .clamp(1, conversations::MAX_HISTORY_PAGE);
    let messages = conversations::messages(
        &state.db,
        &state.vault,
        tenant,
        &conversation,
        query.after,
        limit,
    )
    .await?;
    Ok(Json(History {
        conversation,
        messages,
    }))
}
