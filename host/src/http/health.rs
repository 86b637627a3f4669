//! `/health/live` and `/health/ready` for load balancers and orchestrators.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use super::error::problem_response;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
}

/// Returns 204 while the process serves requests.
async fn live() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// Returns 204 when a database query succeeds, 503 otherwise.
async fn ready(State(state): State<AppState>) -> Response {
    match sqlx::query("SELECT 1").execute(state.db.pool()).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed: database unavailable");
            problem_response(
                StatusCode::SERVICE_UNAVAILABLE,
                Some("database unavailable".to_owned()),
            )
        }
    }
}
