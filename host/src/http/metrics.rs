//! `GET /metrics` and the middleware that counts every HTTP request.
//!
//! The text reveals traffic, failure and attack patterns, so scraping is
//! not public: it takes either the scrape token configured in
//! `BOTSERVER_METRICS_TOKEN` or the access token of a platform admin, as
//! `Authorization: Bearer`. Without either the response is 401, and a valid
//! access token of anyone else gets 403. What is counted is defined in
//! [`crate::metrics`].

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use super::error::ApiError;
use super::extract::bearer_token;
use crate::auth::Role;
use crate::metrics::Metrics;

/// Media type of the OpenMetrics text format.
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Route label of requests that matched no route; their paths are never
/// used as labels.
const UNMATCHED: &str = "<unmatched>";

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let token = bearer_token(request.headers()).ok_or(ApiError::Unauthenticated)?;
    let scrape_token = state.config.extra.metrics_token.as_ref();
    if !scrape_token.is_some_and(|expected| expected.matches(token)) {
        let (_, user) = state.auth.authenticate(token).await?;
        if state.auth.mfa().must_enrol(&user).await? {
            return Err(ApiError::MfaEnrolmentRequired);
        }
        if user.role != Role::PlatformAdmin {
            return Err(ApiError::Forbidden("requires the platform_admin role"));
        }
    }
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(OPENMETRICS_TEXT),
    );
    Ok(response)
}

/// Counts a request by method, route template and status class, and
/// records its time to the response head.
pub(super) async fn track(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let in_flight = metrics.request_started();
    let response = next.run(request).await;
    drop(in_flight);
    metrics.http_request(
        method.as_str(),
        route.as_deref().unwrap_or(UNMATCHED),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
