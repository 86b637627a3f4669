//! `/api/v1/me/mfa/*`: a user's own second factor, and an admin's reset
//! of another user's.
//!
//! Enrolment is two steps: `POST /api/v1/me/mfa/totp` returns a new secret
//! and its `otpauth://` URI, and `POST /api/v1/me/mfa/totp/confirm` with the
//! first code from the app turns it on and returns the recovery codes. Both
//! and `GET /api/v1/me/mfa` stay open to users whom the policy requires to
//! enrol (see [`EnrolmentCaller`]). The checks themselves live in
//! [`crate::auth::mfa`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Caller, EnrolmentCaller};
use crate::auth::Role;
use crate::auth::mfa::{MfaStatus, OneTimeCode, SecondFactor, TOTP_DIGITS, TOTP_STEP_SECS};
use crate::metrics::PrivilegeChange;
use crate::storage::{UserId, tenants, users};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/me/mfa", get(status))
        .route("/api/v1/me/mfa/totp", post(enrol))
        .route("/api/v1/me/mfa/totp/confirm", post(confirm))
        .route("/api/v1/me/mfa/totp/disable", post(disable))
        .route("/api/v1/tenants/{tenant}/users/{user}/mfa", delete(reset))
}

async fn status(
    State(state): State<AppState>,
    EnrolmentCaller(caller): EnrolmentCaller,
) -> Result<Json<MfaStatus>, ApiError> {
    Ok(Json(state.auth.mfa().status(&caller.user).await?))
}

/// A new secret for the user's authenticator app.
#[derive(Serialize)]
struct EnrolmentView {
    secret: String,
    otpauth_uri: String,
    algorithm: &'static str,
    digits: u8,
    period: u64,
}

/// Starts an enrolment, replacing an unconfirmed one.
async fn enrol(
    State(state): State<AppState>,
    EnrolmentCaller(caller): EnrolmentCaller,
) -> Result<Json<EnrolmentView>, ApiError> {
    let user = &caller.user;
    let tenant = tenants::find(&state.db, &user.tenant_id.to_string())
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    let account = format!("{}/{}", tenant.name, user.username);
    let enrolment = state.auth.mfa().begin_enrolment(user, &account).await?;
    tracing::info!(user.id = %user.id, "second factor enrolment started");
    Ok(Json(EnrolmentView {
        secret: enrolment.secret.as_str().to_owned(),
        otpauth_uri: enrolment.uri.as_str().to_owned(),
        algorithm: "SHA1",
        digits: TOTP_DIGITS,
        period: TOTP_STEP_SECS,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmRequest {
    code: OneTimeCode,
}

#[derive(Serialize)]
struct RecoveryCodes {
    recovery_codes: Vec<String>,
}

/// Turns the pending secret on and returns the recovery codes, shown only
/// this once. Every session of the user ends, this one included, so each
/// session from then on was opened with the second factor.
async fn confirm(
    State(state): State<AppState>,
    EnrolmentCaller(caller): EnrolmentCaller,
    ApiJson(request): ApiJson<ConfirmRequest>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    let user = &caller.user;
    let codes = state
        .auth
        .mfa()
        .confirm(user, request.code.as_str())
        .await?;
    state.auth.revoke_user_sessions(user.id).await?;
    tracing::info!(user.id = %user.id, "second factor enabled: sessions revoked");
    Ok(Json(RecoveryCodes {
        recovery_codes: codes.iter().map(|code| code.as_str().to_owned()).collect(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DisableRequest {
    totp: Option<OneTimeCode>,
    recovery_code: Option<OneTimeCode>,
}

/// Turns the second factor off after checking a current code.
async fn disable(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<DisableRequest>,
) -> Result<StatusCode, ApiError> {
    let factor = SecondFactor::from_fields(
        request.totp.as_ref().map(OneTimeCode::as_str),
        request.recovery_code.as_ref().map(OneTimeCode::as_str),
    )?;
    state.auth.disable_mfa(&caller.user, factor).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes another user's second factor, for a user who lost both the
/// authenticator and the recovery codes. Their sessions end, and a policy
/// that requires a second factor makes them enrol again at the next login.
async fn reset(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.administered_tenant(&state, &tenant).await?;
    let id = Uuid::parse_str(&user)
        .map(UserId)
        .map_err(|_| ApiError::NotFound)?;
    let target = users::find(&state.db, tenant.id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if target.role == Role::PlatformAdmin && !caller.is_platform_admin() {
        return Err(ApiError::Forbidden(
            "only a platform_admin may manage a platform_admin",
        ));
    }
    if !state.auth.mfa().remove(target.id).await? {
        return Err(ApiError::Conflict("the user has no second factor"));
    }
    state.auth.revoke_user_sessions(target.id).await?;
    state.metrics.privilege_changed(PrivilegeChange::MfaReset);
    tracing::info!(
        tenant.id = %tenant.id,
        user.id = %target.id,
        "second factor reset by an admin: sessions revoked"
    );
    Ok(StatusCode::NO_CONTENT)
}
