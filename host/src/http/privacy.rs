//! A user's rights over their data: export and erasure.
//!
//! `GET /api/v1/me/export` and its admin twin return one JSON archive of the
//! account, its conversations and its key-value entries. Erasure
//! (`DELETE /api/v1/me`, or an admin deleting the user) ends every session,
//! deletes the rows, and deletes the user's data key, so copies of the
//! user's messages and e-mail that survive elsewhere can no longer be
//! opened. Audit events keep only the account's random id, which nothing
//! links to a person once the account row is gone.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use super::users::{UserView, view};
use crate::audit::storage::{self, AuditRecord, Filter, Order};
use crate::auth::password::Password;
use crate::capabilities::kv::{KvNamespace, KvStore as _};
use crate::storage::conversations::{self, Conversation, Message};
use crate::storage::{User, now_unix, users};

/// Keys read per `list-keys` page while exporting.
const EXPORT_KEY_PAGE: u32 = 1000;

/// Most audit events one export carries, newest kept; the audit query API
/// pages through the rest.
const EXPORT_AUDIT_EVENTS: i64 = 10_000;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/me/export", get(export_mine))
        .route("/api/v1/me", axum::routing::delete(erase_mine))
        .route(
            "/api/v1/tenants/{tenant}/users/{user}/export",
            get(export_user),
        )
}

/// Everything stored about one account.
#[derive(Debug, Serialize)]
pub(super) struct Archive {
    exported_at: i64,
    account: UserView,
    conversations: Vec<ConversationArchive>,
    key_value_entries: Vec<EntryArchive>,
    audit_events: Vec<AuditRecord>,
}

#[derive(Debug, Serialize)]
struct ConversationArchive {
    #[serde(flatten)]
    conversation: Conversation,
    messages: Vec<Message>,
}

/// One user-scope key-value entry; values that are not UTF-8 are base64.
#[derive(Debug, Serialize)]
struct EntryArchive {
    bot: String,
    key: String,
    value: String,
    encoding: &'static str,
}

async fn export_mine(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Archive>, ApiError> {
    Ok(Json(archive(&state, &caller.user).await?))
}

async fn export_user(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<Json<Archive>, ApiError> {
    let target = super::users::managed_user(&state, &caller, &tenant, &user).await?;
    Ok(Json(archive(&state, &target).await?))
}

/// Builds the archive of `user`.
async fn archive(state: &AppState, user: &User) -> Result<Archive, ApiError> {
    let tenant = user.tenant_id;
    let mut conversations = Vec::new();
    for conversation in conversations::list_all_for_account(&state.db, tenant, user.id).await? {
        let mut messages = Vec::new();
        let mut after = None;
        loop {
            let page = conversations::messages(
                &state.db,
                &state.vault,
                tenant,
                &conversation,
                after,
                conversations::MAX_HISTORY_PAGE,
            )
            .await?;
            after = page.last().map(|message| message.seq);
            let done = page.len() < conversations::MAX_HISTORY_PAGE as usize;
            messages.extend(page);
            if done {
                break;
            }
        }
        conversations.push(ConversationArchive {
            conversation,
            messages,
        });
    }
    Ok(Archive {
        exported_at: now_unix(),
        account: view(state, user).await?,
        conversations,
        key_value_entries: user_entries(state, user).await?,
        audit_events: audit_events(state, user).await?,
    })
}

/// Reads the audit events the account did or that were aimed at it.
async fn audit_events(state: &AppState, user: &User) -> Result<Vec<AuditRecord>, ApiError> {
    let filter = Filter {
        tenant_id: Some(user.tenant_id.to_string()),
        involving_user: Some(user.id.to_string()),
        ..Filter::default()
    };
    let mut events =
        storage::query(&state.db, &filter, Order::NewestFirst, EXPORT_AUDIT_EVENTS).await?;
    events.reverse();
    Ok(events)
}

/// Reads the user-scope entries of every bot of the user's tenant.
async fn user_entries(state: &AppState, user: &User) -> Result<Vec<EntryArchive>, ApiError> {
    let kv = state.bots.kv_store();
    let internal = |error: crate::capabilities::kv::StoreError| ApiError::Internal(error.0);
    let mut entries = Vec::new();
    for bot in kv
        .bots_with_user_entries(user.tenant_id)
        .await
        .map_err(internal)?
    {
        let namespace = KvNamespace {
            tenant: user.tenant_id.to_string(),
            user: Some(
                state
                    .bots
                    .user_pseudonym(user.tenant_id, &bot, &user.id.to_string()),
            ),
            bot,
        };
        let mut after: Option<String> = None;
        loop {
            let keys = kv
                .list_keys(&namespace, "", after.as_deref(), EXPORT_KEY_PAGE)
                .await
                .map_err(internal)?;
            for key in &keys {
                let Some(value) = kv.get(&namespace, key).await.map_err(internal)? else {
                    continue;
                };
                let (value, encoding) = match String::from_utf8(value) {
                    Ok(text) => (text, "utf8"),
                    Err(error) => (STANDARD.encode(error.into_bytes()), "base64"),
                };
                entries.push(EntryArchive {
                    bot: namespace.bot.clone(),
                    key: key.clone(),
                    value,
                    encoding,
                });
            }
            if keys.len() < EXPORT_KEY_PAGE as usize {
                break;
            }
            after = keys.last().cloned();
        }
    }
    Ok(entries)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EraseRequest {
    password: Password,
}

/// Erases the caller's own account after checking the password again, so
/// a stolen access token alone cannot do it.
async fn erase_mine(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<EraseRequest>,
) -> Result<StatusCode, ApiError> {
    let verification = state
        .auth
        .hasher()
        .verify(&request.password, Some(&caller.user.password_hash))
        .await?;
    if !verification.matched {
        return Err(ApiError::InvalidCredentials);
    }
    erase(&state, &caller.user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Erases an account: sessions and refresh tokens, user-scope key-value
/// entries, the data key, then the account row, whose deletion cascades to
/// its conversations and messages. The key goes before the rows, so a
/// failure half-way leaves nothing readable behind.
///
/// # Errors
///
/// Returns an [`ApiError`] when a step fails; running it again finishes
/// the erasure.
pub(super) async fn erase(state: &AppState, user: &User) -> Result<(), ApiError> {
    let tenant = user.tenant_id;
    state.auth.revoke_user_sessions(user.id).await?;
    state.vault.erase_user_key(tenant, user.id).await?;
    let kv = state.bots.kv_store();
    let internal = |error: crate::capabilities::kv::StoreError| ApiError::Internal(error.0);
    for bot in kv.bots_with_user_entries(tenant).await.map_err(internal)? {
        let pseudonym = state
            .bots
            .user_pseudonym(tenant, &bot, &user.id.to_string());
        kv.delete_user_scope(tenant, &bot, &pseudonym)
            .await
            .map_err(internal)?;
    }
    users::delete(&state.db, tenant, user.id).await?;
    tracing::info!(tenant.id = %tenant, user.id = %user.id, "user erased");
    Ok(())
}
