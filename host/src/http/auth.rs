//! `/api/v1/auth/*` and `/.well-known/jwks.json`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, EnrolmentCaller};
use crate::auth::refresh::RefreshToken;
use crate::auth::{IssuedTokens, LoginRequest};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/refresh", post(refresh))
        .route("/api/v1/auth/logout", post(logout))
        .route("/.well-known/jwks.json", get(jwks))
}

async fn login(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<Json<IssuedTokens>, ApiError> {
    Ok(Json(state.auth.login(&request).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshRequest {
    refresh_token: RefreshToken,
}

async fn refresh(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<Json<IssuedTokens>, ApiError> {
    Ok(Json(state.auth.refresh(&request.refresh_token).await?))
}

async fn logout(
    State(state): State<AppState>,
    EnrolmentCaller(caller): EnrolmentCaller,
) -> Result<StatusCode, ApiError> {
    state.auth.logout(&caller.claims).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn jwks(State(state): State<AppState>) -> Json<JwkSet> {
    Json(state.auth.tokens().jwks().clone())
}
