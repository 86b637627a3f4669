//! `/api/v1/tenants`: tenants, for platform admins. A tenant's own users
//! may read their tenant; every other tenant is 404 to them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use crate::storage::{StorageError, Tenant, tenants, users};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tenants", get(list).post(create))
        .route(
            "/api/v1/tenants/{tenant}",
            get(read).patch(update).delete(remove),
        )
}

fn parse_name(raw: &str) -> Result<String, ApiError> {
    tenants::normalize_name(raw).ok_or_else(|| {
        ApiError::bad_request(format!("invalid `name`: expected {}", tenants::NAME_RULE))
    })
}

fn conflict(error: StorageError) -> ApiError {
    match error {
        StorageError::Conflict => ApiError::Conflict("a tenant with that name already exists"),
        other => other.into(),
    }
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Tenant>>, ApiError> {
    caller.require_platform_admin()?;
    Ok(Json(tenants::list(&state.db).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantRequest {
    name: String,
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<TenantRequest>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    caller.require_platform_admin()?;
    let name = parse_name(&request.name)?;
    let tenant = tenants::create(&state.db, &name).await.map_err(conflict)?;
    state.vault.ensure_tenant_key(tenant.id).await?;
    tracing::info!(tenant.id = %tenant.id, "tenant created");
    Ok((StatusCode::CREATED, Json(tenant)))
}

async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Json<Tenant>, ApiError> {
    Ok(Json(caller.visible_tenant(&state, &tenant).await?))
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    ApiJson(request): ApiJson<TenantRequest>,
) -> Result<Json<Tenant>, ApiError> {
    let tenant = caller.visible_tenant(&state, &tenant).await?;
    caller.require_platform_admin()?;
    let name = parse_name(&request.name)?;
    if !tenants::rename(&state.db, tenant.id, &name)
        .await
        .map_err(conflict)?
    {
        return Err(ApiError::NotFound);
    }
    Ok(Json(Tenant { name, ..tenant }))
}

async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.visible_tenant(&state, &tenant).await?;
    caller.require_platform_admin()?;
    for user in users::list_ids(&state.db, tenant.id).await? {
        state.auth.revoke_user_sessions(user).await?;
    }
    if !tenants::delete(&state.db, tenant.id).await? {
        return Err(ApiError::NotFound);
    }
    tracing::info!(tenant.id = %tenant.id, "tenant deleted");
    Ok(StatusCode::NO_CONTENT)
}
