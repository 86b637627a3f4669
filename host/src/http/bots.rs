//! `/api/v1/tenants/{tenant}/bots`: bots by name, for tenant admins. A bot
//! can be enabled only while its plugin has every capability it requests.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use crate::runtime::PluginDigest;
use crate::runtime::limits::InvocationLimits;
use crate::storage::bots::{self, Bot, BotStatus, Visibility};
use crate::storage::{StorageError, Tenant, now_unix, plugins};

/// Maximum length of a bot name, in bytes.
const MAX_NAME_BYTES: usize = 63;

/// Maximum number of configuration entries of one bot, and maximum key and
/// value lengths. The entries travel into every invocation, so they stay small.
const MAX_CONFIG_ENTRIES: usize = 64;
const MAX_CONFIG_KEY_BYTES: usize = 128;
const MAX_CONFIG_VALUE_BYTES: usize = 4096;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tenants/{tenant}/bots", get(list).post(create))
        .route(
            "/api/v1/tenants/{tenant}/bots/{bot}",
            get(read).patch(update).delete(remove),
        )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBot {
    name: String,
    plugin_digest: String,
    #[serde(default)]
    enabled: bool,
    #[serde(default = "members")]
    visibility: Visibility,
    #[serde(default)]
    limits: InvocationLimits,
    #[serde(default)]
    config: BTreeMap<String, String>,
}

fn members() -> Visibility {
    Visibility::Members
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBot {
    plugin_digest: Option<String>,
    enabled: Option<bool>,
    visibility: Option<Visibility>,
    limits: Option<InvocationLimits>,
    config: Option<BTreeMap<String, String>>,
}

/// A bot with its status.
#[derive(Debug, Serialize)]
struct BotView {
    #[serde(flatten)]
    bot: Bot,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<BotStatus>,
}

/// Returns whether `name` has the form of a bot name.
pub(crate) fn is_bot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && !name.starts_with('-')
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if is_bot_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid `name`: expected 1 to {MAX_NAME_BYTES} characters of a-z, 0-9, `-` and `_`, not starting with `-`"
        )))
    }
}

fn check_settings(bot: &Bot) -> Result<(), ApiError> {
    // Checked before any lookup, and never echoed: the value may be long.
    if PluginDigest::parse(&bot.plugin_digest).is_none() {
        return Err(ApiError::bad_request(
            "invalid `plugin_digest`: expected the 64 lower-case hex digits an upload returns",
        ));
    }
    bot.limits
        .validate()
        .map_err(|error| ApiError::bad_request(format!("invalid `limits`: {error}")))?;
    let too_big = bot.config.len() > MAX_CONFIG_ENTRIES
        || bot.config.iter().any(|(key, value)| {
            key.is_empty()
                || key.len() > MAX_CONFIG_KEY_BYTES
                || value.len() > MAX_CONFIG_VALUE_BYTES
        });
    if too_big {
        return Err(ApiError::bad_request(format!(
            "invalid `config`: expected at most {MAX_CONFIG_ENTRIES} entries with keys of 1 to \
             {MAX_CONFIG_KEY_BYTES} bytes and values of at most {MAX_CONFIG_VALUE_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Checks that the plugin is the tenant's and, when the bot is enabled,
/// that every capability it requests is granted.
async fn check_plugin(state: &AppState, tenant: &Tenant, bot: &Bot) -> Result<(), ApiError> {
    let plugin = plugins::find(&state.db, tenant.id, &bot.plugin_digest)
        .await?
        .ok_or_else(|| {
            ApiError::Request(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "unknown `plugin_digest` `{}`: upload it first",
                    bot.plugin_digest
                ),
            )
        })?;
    let missing = plugin.missing();
    if bot.enabled && !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|c| format!("`{c}`")).collect();
        return Err(ApiError::Request(
            StatusCode::CONFLICT,
            format!(
                "cannot enable bot: plugin lacks grants for {}; grant them with PUT .../plugins/{}/grants",
                names.join(", "),
                bot.plugin_digest
            ),
        ));
    }
    Ok(())
}

fn conflict(error: StorageError) -> ApiError {
    match error {
        StorageError::Conflict => ApiError::Conflict("a bot with that name already exists"),
        other => other.into(),
    }
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Json<Vec<Bot>>, ApiError> {
    let tenant = caller.administered_tenant(&state, &tenant).await?;
    Ok(Json(bots::list(&state.db, tenant.id).await?))
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    ApiJson(request): ApiJson<CreateBot>,
) -> Result<(StatusCode, Json<BotView>), ApiError> {
    let tenant = caller.administered_tenant(&state, &tenant).await?;
    check_name(&request.name)?;
    let now = now_unix();
    let bot = Bot {
        name: request.name,
        plugin_digest: request.plugin_digest,
        enabled: request.enabled,
        visibility: request.visibility,
        limits: request.limits,
        config: request.config,
        created_at: now,
        updated_at: now,
    };
    check_settings(&bot)?;
    check_plugin(&state, &tenant, &bot).await?;
    bots::insert(&state.db, tenant.id, &bot)
        .await
        .map_err(conflict)?;
    tracing::info!(tenant.id = %tenant.id, bot.name = %bot.name, "bot created");
    Ok((StatusCode::CREATED, Json(BotView { bot, status: None })))
}

async fn find(state: &AppState, tenant: &Tenant, name: &str) -> Result<Bot, ApiError> {
    if !is_bot_name(name) {
        return Err(ApiError::NotFound);
    }
    bots::find(&state.db, tenant.id, name)
        .await?
        .ok_or(ApiError::NotFound)
}

async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Json<BotView>, ApiError> {
    let tenant = caller.administered_tenant(&state, &tenant).await?;
    let bot = find(&state, &tenant, &name).await?;
    let status = bots::status(&state.db, tenant.id, &name).await?;
    Ok(Json(BotView { bot, status }))
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, name)): Path<(String, String)>,
    ApiJson(request): ApiJson<UpdateBot>,
) -> Result<Json<BotView>, ApiError> {
    let tenant = caller.administered_tenant(&state, &tenant).await?;
    let mut bot = find(&state, &tenant, &name).await?;
    let enabling = request.enabled == Some(true);
    bot.plugin_digest = request.plugin_digest.unwrap_or(bot.plugin_digest);
    bot.enabled = request.enabled.unwrap_or(bot.enabled);
    bot.visibility = request.visibility.unwrap_or(bot.visibility);
    bot.limits = request.limits.unwrap_or(bot.limits);
    bot.config = request.config.unwrap_or(bot.config);
    check_settings(&bot)?;
    check_plugin(&state, &tenant, &bot).await?;
    if !bots::update(&state.db, tenant.id, &bot).await? {
        return Err(ApiError::NotFound);
    }
    if enabling {
        state.bots.reset_breaker(tenant.id, &name);
    }
    let bot = find(&state, &tenant, &name).await?;
    let status = bots::status(&state.db, tenant.id, &name).await?;
    Ok(Json(BotView { bot, status }))
}

async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.administered_tenant(&state, &tenant).await?;
    if !is_bot_name(&name) || !bots::delete(&state.db, tenant.id, &name).await? {
        return Err(ApiError::NotFound);
    }
    tracing::info!(tenant.id = %tenant.id, bot.name = %name, "bot deleted");
    Ok(StatusCode::NO_CONTENT)
}
