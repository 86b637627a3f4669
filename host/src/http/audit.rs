//! `GET /api/v1/audit`: the audit trail, newest first, for admins. Platform
//! admins see every tenant's events and those of no tenant; tenant admins
//! see their own tenant's events only.

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::Caller;
use crate::audit::parse_time;
use crate::audit::storage::{self, Filter, Order};

/// Events returned when the request names no `limit`.
const DEFAULT_PAGE: i64 = 100;

/// Most events one request returns, so that one call cannot pull the whole
/// trail into memory; page with `before`.
pub const MAX_PAGE: i64 = 1000;

/// Longest `actor` filter accepted, in bytes.
const MAX_ACTOR_BYTES: usize = 256;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/audit", get(list))
}

/// Query of `GET /api/v1/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    /// Tenant id or name.
    tenant: Option<String>,
    actor: Option<String>,
    /// An action, or a prefix ending in `*` such as `auth.*`.
    action: Option<String>,
    /// RFC 3339 or Unix seconds; inclusive.
    since: Option<String>,
    /// RFC 3339 or Unix seconds; exclusive.
    until: Option<String>,
    limit: Option<i64>,
    /// Only events numbered below this: the `next_before` of a page.
    before: Option<i64>,
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let Query(query) = query.map_err(|rejection| {
        ApiError::bad_request(format!("invalid query: {}", rejection.body_text()))
    })?;
    let mut filter = filter_of(&query)?;
    filter.tenant_id = match (&query.tenant, caller.is_platform_admin()) {
        (Some(key), _) => Some(caller.visible_tenant(&state, key).await?.id.to_string()),
        (None, true) => None,
        (None, false) => Some(caller.user.tenant_id.to_string()),
    };
    let limit = match query.limit {
        None => DEFAULT_PAGE,
        Some(limit) if (1..=MAX_PAGE).contains(&limit) => limit,
        Some(limit) => {
            return Err(ApiError::bad_request(format!(
                "invalid `limit`: expected 1 to {MAX_PAGE}, got `{limit}`"
            )));
        }
    };

    let records = storage::query(&state.db, &filter, Order::NewestFirst, limit).await?;
    let full_page = i64::try_from(records.len()).is_ok_and(|count| count == limit);
    let next_before = records.last().filter(|_| full_page).map(|last| last.seq);
    let events: Vec<Value> = records.iter().map(|record| record.to_json()).collect();
    Ok(Json(
        json!({ "events": events, "next_before": next_before }),
    ))
}

/// Checks the query's values and builds the filter, tenant aside.
fn filter_of(query: &AuditQuery) -> Result<Filter, ApiError> {
    let mut filter = Filter::default();
    if let Some(actor) = &query.actor {
        if actor.is_empty() || actor.len() > MAX_ACTOR_BYTES {
            return Err(ApiError::bad_request(format!(
                "invalid `actor`: expected 1 to {MAX_ACTOR_BYTES} bytes"
            )));
        }
        filter.actor = Some(actor.clone());
    }
    if let Some(action) = &query.action {
        let (name, prefix) = match action.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (action.as_str(), false),
        };
        let valid = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_');
        if !valid {
            return Err(ApiError::bad_request(
                "invalid `action`: expected a name such as `auth.login.failure`, or a prefix \
                 ending in `*` such as `auth.*`",
            ));
        }
        filter.action = Some(name.to_owned());
        filter.action_prefix = prefix;
    }
    filter.since_ms = query
        .since
        .as_deref()
        .map(|text| time_param("since", text))
        .transpose()?;
    filter.until_ms = query
        .until
        .as_deref()
        .map(|text| time_param("until", text))
        .transpose()?;
    filter.before_seq = query.before;
    Ok(filter)
}

fn time_param(name: &str, text: &str) -> Result<i64, ApiError> {
    parse_time(text).ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid `{name}`: expected RFC 3339 such as `2026-01-02T03:04:05Z` or Unix seconds, \
             got `{}`",
            text.chars().take(64).collect::<String>().escape_debug()
        ))
    })
}
