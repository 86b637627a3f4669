//! `/api/v1/tenants/{tenant}/plugins`: uploads of plugin components and
//! their grants, for tenant admins. Plugins and grants belong to one tenant
//! and one digest; another tenant's upload of the same bytes is its own.

use std::str::FromStr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::{ApiError, problem_response};
use super::extract::{ApiJson, Caller};
use crate::capabilities::{Capability, GrantSet};
use crate::metrics::PrivilegeChange;
use crate::runtime::{LoadError, PluginDigest, PluginInfo};
use crate::storage::plugins::{self, PluginRecord};
use crate::storage::{Tenant, TenantId};

/// Upload cap when `BOTSERVER_MAX_UPLOAD_SIZE` is not set. Components of
/// the SDK's bots are well under 1 MiB; the cap stops uploads from
/// exhausting memory and database space.
pub const DEFAULT_MAX_UPLOAD_BYTES: usize = 10 * 1024 * 1024;

/// Maximum length of a plugin name or version, in bytes.
const MAX_LABEL_BYTES: usize = 128;

/// Builds the upload route, with its own body limit of `max_upload` bytes.
pub(super) fn upload_routes(max_upload: usize) -> Router<AppState> {
    Router::new()
        .route("/api/v1/tenants/{tenant}/plugins", post(upload).get(list))
        .layer(DefaultBodyLimit::max(max_upload))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(max_upload))
        .layer(axum::middleware::map_response(move |response: Response| {
            upload_too_large_as_problem(response, max_upload)
        }))
}

/// Builds every other plugin route. Their bodies are small JSON.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tenants/{tenant}/plugins/{digest}", get(read))
        .route(
            "/api/v1/tenants/{tenant}/plugins/{digest}/grants",
            get(read_grants).put(replace_grants),
        )
        .route(
            "/api/v1/tenants/{tenant}/plugins/{digest}/grants/{capability}",
            delete(revoke),
        )
}

/// Names the upload cap in the 413 of an oversized upload.
async fn upload_too_large_as_problem(response: Response, max_upload: usize) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return problem_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some(format!(
                "component too large: expected at most {max_upload} bytes (`BOTSERVER_MAX_UPLOAD_SIZE`)"
            )),
        );
    }
    response
}

/// Returns the upload cap in bytes from the configuration.
pub(super) fn max_upload_bytes(state_config: &crate::config::Config) -> usize {
    state_config
        .extra
        .max_upload_size
        .and_then(|bytes| usize::try_from(bytes).ok())
        .unwrap_or(DEFAULT_MAX_UPLOAD_BYTES)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    name: Option<String>,
    version: Option<String>,
}

fn label(value: Option<String>, field: &str) -> Result<String, ApiError> {
    let value = value.unwrap_or_default();
    let valid = !value.is_empty()
        && value.len() <= MAX_LABEL_BYTES
        && value.chars().all(|c| c.is_ascii_graphic());
    if valid {
        Ok(value)
    } else {
        Err(ApiError::bad_request(format!(
            "invalid `{field}` query parameter: expected 1 to {MAX_LABEL_BYTES} printable ASCII characters"
        )))
    }
}

/// An uploaded plugin as returned by the API.
#[derive(Debug, Serialize)]
struct PluginView {
    #[serde(flatten)]
    record: PluginRecord,
    missing: Vec<Capability>,
}

impl From<PluginRecord> for PluginView {
    fn from(record: PluginRecord) -> Self {
        let missing = record.missing();
        Self { record, missing }
    }
}

fn load_error(error: &LoadError) -> ApiError {
    ApiError::Request(StatusCode::UNPROCESSABLE_ENTITY, error.to_string())
}

/// Compiles an upload to validate it.
///
/// NOTE: the runtime keeps every compiled component in memory for the
/// life of the process, uploads that are never used included. Nothing
/// evicts them yet, so many distinct uploads grow the server's memory.
async fn validate(state: &AppState, body: Bytes) -> Result<PluginInfo, ApiError> {
    let runtime = Arc::clone(state.bots.runtime());
    let compiled = tokio::task::spawn_blocking(move || runtime.compile(&body))
        .await
        .map_err(|error| ApiError::Internal(format!("compile task failed: {error}")))?;
    match compiled {
        Ok(plugin) => Ok(plugin.info().clone()),
        Err(error) => Err(load_error(&error)),
    }
}

async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    query: Result<Query<UploadQuery>, QueryRejection>,
    body: Bytes,
) -> Result<(StatusCode, Json<PluginView>), ApiError> {
    let tenant = caller.administered_tenant(&state, &tenant).await?;
    let Query(query) = query.map_err(|rejection| {
        ApiError::bad_request(format!(
            "invalid query: {}; expected only `name` and `version`",
            rejection.body_text()
        ))
    })?;
    let name = label(query.name, "name")?;
    let version = label(query.version, "version")?;
    if body.is_empty() {
        return Err(ApiError::bad_request("empty body: expected a component"));
    }
    let component = body.clone();
    let info = validate(&state, body).await?;
    let added = plugins::insert(&state.db, tenant.id, &info, &name, &version, &component).await?;
    let record = find(&state, tenant.id, info.digest.as_str()).await?;
    if added {
        tracing::info!(tenant.id = %tenant.id, plugin.digest = %info.digest, "plugin uploaded");
        Ok((StatusCode::CREATED, Json(record.into())))
    } else {
        Ok((StatusCode::OK, Json(record.into())))
    }
}

async fn find(state: &AppState, tenant: TenantId, digest: &str) -> Result<PluginRecord, ApiError> {
    plugins::find(&state.db, tenant, digest)
        .await?
        .ok_or(ApiError::NotFound)
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Json<Vec<PluginView>>, ApiError> {
    let tenant = caller.administered_tenant(&state, &tenant).await?;
    let records = plugins::list(&state.db, tenant.id).await?;
    Ok(Json(records.into_iter().map(PluginView::from).collect()))
}

async fn resolve(
    state: &AppState,
    caller: &Caller,
    tenant: &str,
    digest: &str,
) -> Result<(Tenant, PluginRecord), ApiError> {
    let tenant = caller.administered_tenant(state, tenant).await?;
    // A malformed digest cannot name a plugin; no lookup needed.
    if PluginDigest::parse(digest).is_none() {
        return Err(ApiError::NotFound);
    }
    let record = find(state, tenant.id, digest).await?;
    Ok((tenant, record))
}

async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, digest)): Path<(String, String)>,
) -> Result<Json<PluginView>, ApiError> {
    let (_, record) = resolve(&state, &caller, &tenant, &digest).await?;
    Ok(Json(record.into()))
}

/// Grants beside what the plugin requests.
#[derive(Debug, Serialize)]
struct GrantsView {
    digest: String,
    requested: Vec<Capability>,
    grants: GrantSet,
    missing: Vec<Capability>,
}

impl From<PluginRecord> for GrantsView {
    fn from(record: PluginRecord) -> Self {
        Self {
            missing: record.missing(),
            digest: record.digest,
            requested: record.requested.into_iter().collect(),
            grants: record.grants,
        }
    }
}

async fn read_grants(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, digest)): Path<(String, String)>,
) -> Result<Json<GrantsView>, ApiError> {
    let (_, record) = resolve(&state, &caller, &tenant, &digest).await?;
    Ok(Json(record.into()))
}

async fn replace_grants(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, digest)): Path<(String, String)>,
    ApiJson(grants): ApiJson<GrantSet>,
) -> Result<Json<GrantsView>, ApiError> {
    let (tenant, record) = resolve(&state, &caller, &tenant, &digest).await?;
    grants
        .validate()
        .map_err(|error| ApiError::bad_request(error.to_string()))?;
    let stored = store_grants(&state, tenant.id, record, grants).await?;
    state.metrics.privilege_changed(PrivilegeChange::Grant);
    Ok(stored)
}

async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, digest, capability)): Path<(String, String, String)>,
) -> Result<Json<GrantsView>, ApiError> {
    let capability = Capability::from_str(&capability)
        .map_err(|error| ApiError::Request(StatusCode::NOT_FOUND, error.to_string()))?;
    let (tenant, record) = resolve(&state, &caller, &tenant, &digest).await?;
    let mut grants = record.grants.clone();
    match capability {
        Capability::Kv => grants.kv = None,
        Capability::Http => grants.http = None,
        Capability::Secrets => grants.secrets = None,
        Capability::Config => grants.config = None,
    }
    let stored = store_grants(&state, tenant.id, record, grants).await?;
    state.metrics.privilege_changed(PrivilegeChange::Revoke);
    Ok(stored)
}

async fn store_grants(
    state: &AppState,
    tenant: TenantId,
    record: PluginRecord,
    grants: GrantSet,
) -> Result<Json<GrantsView>, ApiError> {
    let digest = record.digest.clone();
    let stored = plugins::set_grants(&state.db, tenant, &digest, &grants);
    let found = state
        .bots
        .grants()
        .change(tenant, &digest, &record.grants, &grants, stored)
        .await?;
    if !found {
        return Err(ApiError::NotFound);
    }
    tracing::info!(tenant.id = %tenant, plugin.digest = %digest, "plugin grants changed");
    Ok(Json(PluginRecord { grants, ..record }.into()))
}
