//! `/api/v1/me`: the caller's own account.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use super::users::{UserView, view};
use crate::auth::password::Password;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/me", get(me))
        .route("/api/v1/me/password", post(change_password))
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
