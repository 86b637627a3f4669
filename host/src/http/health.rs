//! `/healthz` and `/readyz` for load balancers and orchestrators.
//!
//! `/healthz` returns 200 while the process serves requests and checks nothing
//! else, so a restart is only triggered by a hung or dead process.
//! `/readyz` checks the database and, when configured, Redis, so traffic is
//! only routed to a node that can serve it. Neither needs a login, and
//! neither says which dependency failed: that goes to the log.

use std::future::Future;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use super::error::problem_response;

/// Maximum time one dependency check may take. A probe that hangs would
/// keep an orchestrator waiting instead of taking the node out.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
}

/// Returns 200 while the process serves requests.
async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Returns 200 when the database and Redis (when configured) respond, and
/// 503 with a generic body otherwise.
async fn ready(State(state): State<AppState>) -> Response {
    let database = check("database", async {
        sqlx::query("SELECT 1")
            .execute(state.db.pool())
            .await
            .map(drop)
            .map_err(|error| error.to_string())
    });
    let redis = check("redis", async {
        state
            .auth
            .sessions()
            .ping()
            .await
            .map_err(|error| error.to_string())
    });
    let (database, redis) = tokio::join!(database, redis);
    if database && redis {
        Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        problem_response(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("not ready".to_owned()),
        )
    }
}

/// Runs one check under [`CHECK_TIMEOUT`]; logs and returns `false` when
/// it fails.
async fn check(name: &'static str, probe: impl Future<Output = Result<(), String>>) -> bool {
    match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::warn!(dependency = name, %error, "readiness check failed");
            false
        }
        Err(_) => {
            tracing::warn!(
                dependency = name,
                timeout_ms = CHECK_TIMEOUT.as_millis(),
                "readiness check timed out"
            );
            false
        }
    }
}
