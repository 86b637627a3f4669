//! `/api/v1/tenants/{tenant}/users`: a tenant's users, for its admins and
//! platform admins.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use crate::auth::Role;
use crate::auth::password::{Password, check_policy};
use crate::crypto::ColumnRef;
use crate::metrics::PrivilegeChange;
use crate::storage::users::{self, NewUser, UserChanges};
use crate::storage::{Tenant, TenantId, User, UserId, now_unix};

/// Longest accepted e-mail address, in bytes (RFC 5321 path limit).
const MAX_EMAIL_BYTES: usize = 254;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tenants/{tenant}/users", get(list).post(create))
        .route(
            "/api/v1/tenants/{tenant}/users/{user}",
            get(read).patch(update).delete(remove),
        )
        .route("/api/v1/tenants/{tenant}/users/{user}/unlock", post(unlock))
        .route(
            "/api/v1/tenants/{tenant}/users/{user}/sessions",
            delete(end_sessions),
        )
}

/// A user as the API shows it.
#[derive(Debug, Serialize)]
pub(super) struct UserView {
    id: UserId,
    tenant_id: TenantId,
    username: String,
    role: Role,
    email: Option<String>,
    disabled: bool,
    locked_until: Option<i64>,
    created_at: i64,
}

/// Returns the location of a user's sealed e-mail.
fn email_column(tenant: TenantId, row: &str) -> ColumnRef<'_> {
    ColumnRef {
        tenant,
        table: "users",
        row,
        column: "email",
    }
}

/// Builds the view of a user, opening the sealed e-mail.
pub(super) async fn view(state: &AppState, user: &User) -> Result<UserView, ApiError> {
    let email = match &user.email_sealed {
        Some(sealed) => {
            let row = user.id.to_string();
            let plain = state
                .vault
                .open_for_user(&email_column(user.tenant_id, &row), user.id, sealed)
                .await?;
            let text = std::str::from_utf8(&plain).map_err(|_| {
                ApiError::Internal(format!("sealed e-mail of user `{}` is not UTF-8", user.id))
            })?;
            Some(text.to_owned())
        }
        None => None,
    };
    let now = now_unix();
    Ok(UserView {
        id: user.id,
        tenant_id: user.tenant_id,
        username: user.username.clone(),
        role: user.role,
        email,
        disabled: user.disabled,
        locked_until: user.locked_until.filter(|until| *until > now),
        created_at: user.created_at,
    })
}

async fn seal_email(
    state: &AppState,
    tenant: TenantId,
    id: UserId,
    email: &str,
) -> Result<Vec<u8>, ApiError> {
    let row = id.to_string();
    Ok(state
        .vault
        .seal_for_user(&email_column(tenant, &row), id, email.as_bytes())
        .await?)
}

fn parse_username(raw: &str) -> Result<String, ApiError> {
    users::normalize_username(raw).ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid `username`: expected {}",
            users::USERNAME_RULE
        ))
    })
}

fn check_email(email: &str) -> Result<(), ApiError> {
    let valid = email.len() <= MAX_EMAIL_BYTES
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        && !email.chars().any(|c| c.is_control() || c.is_whitespace());
    if valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid `email`: expected an address such as `name@example.com` of at most {MAX_EMAIL_BYTES} bytes"
        )))
    }
}

/// Fails when the caller may not grant `role`: only platform admins grant
/// `platform_admin`.
fn check_grantable(caller: &Caller, role: Role) -> Result<(), ApiError> {
    if role == Role::PlatformAdmin && !caller.is_platform_admin() {
        return Err(ApiError::Forbidden(
            "only a platform_admin may grant the platform_admin role",
        ));
    }
    Ok(())
}

/// Fails when the caller may not manage `target`: tenant admins do not
/// manage platform admins.
fn check_manageable(caller: &Caller, target: &User) -> Result<(), ApiError> {
    if target.role == Role::PlatformAdmin && !caller.is_platform_admin() {
        return Err(ApiError::Forbidden(
            "only a platform_admin may manage a platform_admin",
        ));
    }
    Ok(())
}

fn parse_user_id(raw: &str) -> Result<UserId, ApiError> {
    Uuid::parse_str(raw)
        .map(UserId)
        .map_err(|_| ApiError::NotFound)
}

async fn find_user(state: &AppState, tenant: &Tenant, raw_id: &str) -> Result<User, ApiError> {
    let id = parse_user_id(raw_id)?;
    users::find(&state.db, tenant.id, id)
        .await?
        .ok_or(ApiError::NotFound)
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Json<Vec<UserView>>, ApiError> {
    let tenant = caller.administered_tenant(&state, &tenant).await?;
    let mut views = Vec::new();
    for user in users::list(&state.db, tenant.id).await? {
        views.push(view(&state, &user).await?);
    }
    Ok(Json(views))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    username: String,
    password: Password,
    #[serde(default = "default_role")]
    role: Role,
    email: Option<String>,
}

fn default_role() -> Role {
    Role::User
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    ApiJson(request): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let tenant = caller.administered_tenant(&state, &tenant).await?;
    let username = parse_username(&request.username)?;
    check_grantable(&caller, request.role)?;
    check_policy(&request.password, &username)?;
    if let Some(email) = &request.email {
        check_email(email)?;
    }

    let id = UserId(Uuid::new_v4());
    let email_sealed = match &request.email {
        Some(email) => Some(seal_email(&state, tenant.id, id, email).await?),
        None => None,
    };
    let password_hash = state.auth.hasher().hash(&request.password).await?;
    let new_user = NewUser {
        id,
        tenant_id: tenant.id,
        username: &username,
        password_hash: &password_hash,
        role: request.role,
        email_sealed,
    };
    users::insert(&state.db, new_user)
        .await
        .map_err(|error| match error {
            crate::storage::StorageError::Conflict => {
                ApiError::Conflict("a user with that username already exists")
            }
            other => other.into(),
        })?;
    tracing::info!(tenant.id = %tenant.id, user.id = %id, "user created");
    if request.role != Role::User {
        state.metrics.privilege_changed(PrivilegeChange::Role);
    }
    let user = users::find(&state.db, tenant.id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok((StatusCode::CREATED, Json(view(&state, &user).await?)))
}

async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<Json<UserView>, ApiError> {
    let tenant = caller.administered_tenant(&state, &tenant).await?;
    let user = find_user(&state, &tenant, &user).await?;
    Ok(Json(view(&state, &user).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateUser {
    role: Option<Role>,
    /// A new address; an empty string removes it.
    email: Option<String>,
    disabled: Option<bool>,
    password: Option<Password>,
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, user)): Path<(String, String)>,
    ApiJson(request): ApiJson<UpdateUser>,
) -> Result<Json<UserView>, ApiError> {
    let tenant = caller.administered_tenant(&state, &tenant).await?;
    let target = find_user(&state, &tenant, &user).await?;
    check_manageable(&caller, &target)?;
    if let Some(role) = request.role {
        check_grantable(&caller, role)?;
    }

    let mut changes = UserChanges {
        role: request.role,
        disabled: request.disabled,
        ..UserChanges::default()
    };
    if let Some(email) = &request.email {
        changes.email_sealed = Some(if email.is_empty() {
            None
        } else {
            check_email(email)?;
            Some(seal_email(&state, tenant.id, target.id, email).await?)
        });
    }
    if let Some(password) = &request.password {
        check_policy(password, &target.username)?;
        changes.password_hash = Some(state.auth.hasher().hash(password).await?);
    }
    let ends_sessions = request.disabled == Some(true) || request.password.is_some();

    if !users::update(&state.db, tenant.id, target.id, changes).await? {
        return Err(ApiError::NotFound);
    }
    if ends_sessions {
        state.auth.revoke_user_sessions(target.id).await?;
    }
    if request.role.is_some_and(|role| role != target.role) {
        state.metrics.privilege_changed(PrivilegeChange::Role);
        tracing::info!(tenant.id = %tenant.id, user.id = %target.id, "user role changed");
    }
    let user = users::find(&state.db, tenant.id, target.id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(view(&state, &user).await?))
}

async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.administered_tenant(&state, &tenant).await?;
    let target = find_user(&state, &tenant, &user).await?;
    check_manageable(&caller, &target)?;
    super::privacy::erase(&state, &target).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Resolves a user that the caller may manage: in a tenant the caller
/// administers, and not a platform admin unless the caller is one.
///
/// # Errors
///
/// Returns [`ApiError::NotFound`] or [`ApiError::Forbidden`] as the user
/// routes do.
pub(super) async fn managed_user(
    state: &AppState,
    caller: &Caller,
    tenant: &str,
    user: &str,
) -> Result<User, ApiError> {
    let tenant = caller.administered_tenant(state, tenant).await?;
    let target = find_user(state, &tenant, user).await?;
    check_manageable(caller, &target)?;
    Ok(target)
}

async fn unlock(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.administered_tenant(&state, &tenant).await?;
    let target = find_user(&state, &tenant, &user).await?;
    check_manageable(&caller, &target)?;
    if !users::unlock(&state.db, tenant.id, target.id).await? {
        return Err(ApiError::NotFound);
    }
    tracing::info!(tenant.id = %tenant.id, user.id = %target.id, "user unlocked");
    Ok(StatusCode::NO_CONTENT)
}

async fn end_sessions(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.administered_tenant(&state, &tenant).await?;
    let target = find_user(&state, &tenant, &user).await?;
    check_manageable(&caller, &target)?;
    state.auth.revoke_user_sessions(target.id).await?;
    tracing::info!(tenant.id = %tenant.id, user.id = %target.id, "sessions terminated by an admin");
    Ok(StatusCode::NO_CONTENT)
}
