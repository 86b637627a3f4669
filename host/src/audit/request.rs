//! The audit side of one HTTP request: its id, client address and caller,
//! kept in a task-local scope while the request runs, and the middleware
//! that records one event per state-changing, data-reading or denied
//! request once the response is known.
//!
//! Code on the request's path adds to the scope without any handle: the
//! `Caller` extractor calls [`note_caller`] and [`note_tenant`], its tenant
//! checks call [`note_denied`], and a handler may add a detail with
//! [`note`]. Events recorded by [`super::AuditLog::record`] inside the
//! scope take their request id, source and default actor from it.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Map, Value};

use super::{AuditEvent, AuditLog, Outcome};
use crate::http::client_ip::ClientIp;
use crate::storage::{TenantId, UserId};

/// Maximum request id length kept; ids the server makes are 36 characters, and a
/// client may send its own.
const MAX_REQUEST_ID_CHARS: usize = 128;

tokio::task_local! {
    static SCOPE: Arc<RequestScope>;
}

/// The origin of an event: the request id and the client address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// The `x-request-id` of the request.
    pub request_id: Option<String>,
    /// The client address, as the rate-limit middleware resolved it behind
    /// trusted proxies, or the socket peer.
    pub source: Option<IpAddr>,
}

impl RequestInfo {
    /// Returns the info of the request running on this task, or an empty
    /// one outside a request.
    pub fn current() -> Self {
        current_scope()
            .map(|scope| scope.info.clone())
            .unwrap_or_default()
    }
}

/// Facts the request's handlers noted about it.
#[derive(Debug, Default)]
struct Notes {
    caller: Option<(UserId, TenantId)>,
    tenant: Option<TenantId>,
    denied: Option<&'static str>,
    token_rejected: bool,
    details: Map<String, Value>,
}

/// The audit scope of one request.
#[derive(Debug)]
pub struct RequestScope {
    info: RequestInfo,
    notes: Mutex<Notes>,
}

impl RequestScope {
    pub(super) fn info(&self) -> &RequestInfo {
        &self.info
    }

    /// Returns the caller, and the tenant the request resolved or else the
    /// caller's own.
    pub(super) fn caller(&self) -> (Option<UserId>, Option<TenantId>) {
        let notes = self.lock();
        let tenant = notes.tenant.or(notes.caller.map(|(_, tenant)| tenant));
        (notes.caller.map(|(user, _)| user), tenant)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Notes> {
        self.notes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(super) fn current_scope() -> Option<Arc<RequestScope>> {
    SCOPE.try_with(Arc::clone).ok()
}

fn with_notes(change: impl FnOnce(&mut Notes)) {
    if let Some(scope) = current_scope() {
        change(&mut scope.lock());
    }
}

/// Records the authenticated caller of the current request.
pub fn note_caller(user: UserId, tenant: TenantId) {
    with_notes(|notes| notes.caller = Some((user, tenant)));
}

/// Records the tenant the current request acts on.
pub fn note_tenant(tenant: TenantId) {
    with_notes(|notes| notes.tenant = Some(tenant));
}

/// Records that a policy refused the current request, whatever status it
/// ends with (another tenant's resources return 404).
pub fn note_denied(reason: &'static str) {
    with_notes(|notes| notes.denied = Some(reason));
}

/// Records that the request's bearer token was rejected.
pub fn note_token_rejected() {
    with_notes(|notes| notes.token_rejected = true);
}

/// Adds a detail to the event of the current request. The same rules as
/// for [`AuditEvent::detail`] apply: no secrets, tokens or message text.
pub fn note(key: &'static str, value: impl Into<Value>) {
    let value = value.into();
    with_notes(|notes| {
        notes.details.insert(key.to_owned(), value);
    });
}

/// Middleware: runs the request inside a fresh scope, then records its
/// event, if it has one, before the response leaves.
pub async fn middleware(State(audit): State<AuditLog>, request: Request, next: Next) -> Response {
    if !audit.is_enabled() {
        return next.run(request).await;
    }
    let scope = Arc::new(RequestScope {
        info: request_info(&request),
        notes: Mutex::default(),
    });
    let mut guard = UnfinishedGuard {
        audit: audit.clone(),
        scope: Arc::clone(&scope),
        method: request.method().clone(),
        route: request
            .extensions()
            .get::<MatchedPath>()
            .map(|matched| matched.as_str().to_owned()),
        path: request.uri().path().to_owned(),
        finished: false,
    };

    let response = SCOPE.scope(Arc::clone(&scope), next.run(request)).await;
    guard.finished = true;

    let exchange = Exchange {
        method: &guard.method,
        route: guard.route.as_deref(),
        path: &guard.path,
        status: Some(response.status()),
    };
    let event = event_for(&exchange, &scope.lock(), audit.records_api_calls());
    if let Some(event) = event {
        SCOPE.scope(scope, audit.record(event)).await;
    }
    response
}

/// Records a state-changing request whose handler never finished: the
/// request timed out or the client went away. Whether the change took
/// effect is unknown, and the event records that.
struct UnfinishedGuard {
    audit: AuditLog,
    scope: Arc<RequestScope>,
    method: Method,
    route: Option<String>,
    path: String,
    finished: bool,
}

impl Drop for UnfinishedGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let exchange = Exchange {
            method: &self.method,
            route: self.route.as_deref(),
            path: &self.path,
            status: None,
        };
        let notes = self.scope.lock();
        let Some(mut event) = event_for(&exchange, &notes, false) else {
            return;
        };
        drop(notes);
        let (caller, tenant) = self.scope.caller();
        if let Some(caller) = caller {
            event = event.actor(super::Actor::User(caller));
        }
        if let Some(tenant) = tenant {
            event = event.tenant(tenant);
        }
        self.audit.submit(event.request(&self.scope.info));
    }
}

fn request_info(request: &Request) -> RequestInfo {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            id.len() <= MAX_REQUEST_ID_CHARS && id.bytes().all(|byte| byte.is_ascii_graphic())
        })
        .map(str::to_owned);
    let source = request
        .extensions()
        .get::<ClientIp>()
        .map(|client| client.0)
        .or_else(|| {
            request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip())
        });
    RequestInfo { request_id, source }
}

/// One request and its response, as far as the audit trail cares.
struct Exchange<'a> {
    method: &'a Method,
    route: Option<&'a str>,
    path: &'a str,
    /// `None` when the handler never finished.
    status: Option<StatusCode>,
}

/// The route table's entry for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RouteAction {
    /// Recorded where the work happens, with more detail (login, refresh).
    Elsewhere,
    /// Recorded under this name.
    Named(&'static str),
    /// A read that is recorded only with `BOTSERVER_AUDIT_API_CALLS`.
    Unrecorded,
}

/// Builds the event of a request, if it has one.
fn event_for(exchange: &Exchange<'_>, notes: &Notes, api_calls: bool) -> Option<AuditEvent> {
    // A flood of rate-limited requests must not turn into a flood of rows;
    // the limiter logs those under `botserver::security`.
    if exchange.status == Some(StatusCode::TOO_MANY_REQUESTS) {
        return None;
    }
    let forbidden = exchange.status == Some(StatusCode::FORBIDDEN);
    let route = exchange.route.unwrap_or("<unmatched>");
    let event = if notes.denied.is_some() || forbidden {
        AuditEvent::new("authz.denied", Outcome::Denied)
            .detail("reason", notes.denied.unwrap_or("forbidden"))
    } else if notes.token_rejected {
        AuditEvent::new("auth.token.invalid", Outcome::Denied)
    } else {
        let action = match route_action(exchange.method, route) {
            RouteAction::Named(action) => action,
            RouteAction::Elsewhere | RouteAction::Unrecorded if !api_calls => return None,
            RouteAction::Elsewhere | RouteAction::Unrecorded => "api.call",
        };
        AuditEvent::new(action, exchange.status.map_or(Outcome::Failure, outcome_of))
    };
    let mut event = event
        .target(exchange.path)
        .detail("method", exchange.method.as_str())
        .detail("route", route);
    event = match exchange.status {
        Some(status) => event.detail("status", status.as_u16()),
        None => event.detail("unfinished", true),
    };
    for (key, value) in &notes.details {
        event
            .details
            .insert(key.clone(), super::bounded(value.clone()));
    }
    Some(event)
}

fn outcome_of(status: StatusCode) -> Outcome {
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Outcome::Denied,
        status if status.is_client_error() || status.is_server_error() => Outcome::Failure,
        _ => Outcome::Success,
    }
}

/// Returns the action of each audited route. State changes not listed here are
/// recorded as `api.change`, so a new route is never silently unaudited.
fn route_action(method: &Method, route: &str) -> RouteAction {
    use RouteAction::{Elsewhere, Named, Unrecorded};
    let tenant_route = route.strip_prefix("/api/v1/tenants/{tenant}");
    let action = match (method.as_str(), route) {
        ("POST", "/api/v1/auth/login" | "/api/v1/auth/refresh") => Elsewhere,
        ("POST", "/api/v1/auth/logout") => Named("auth.logout"),
        ("POST", "/api/v1/auth/ws-ticket") => Named("auth.ticket.issue"),
        ("POST", "/api/v1/me/password") => Named("auth.password.change"),
        ("POST", "/api/v1/me/mfa/totp") => Named("auth.mfa.enrol"),
        ("POST", "/api/v1/me/mfa/totp/confirm") => Named("auth.mfa.confirm"),
        ("POST", "/api/v1/me/mfa/totp/disable") => Named("auth.mfa.disable"),
        ("DELETE", "/api/v1/me") => Named("account.delete"),
        ("GET", "/api/v1/me/conversations/{conversation}/messages") => {
            Named("conversation.history.read")
        }
        ("GET", "/api/v1/audit") => Named("audit.read"),
        ("POST", "/api/v1/tenants") => Named("tenant.create"),
        ("PATCH", "/api/v1/tenants/{tenant}") => Named("tenant.update"),
        ("DELETE", "/api/v1/tenants/{tenant}") => Named("tenant.delete"),
        // Public bots hand out anonymous sessions to anyone; recording each
        // would let any visitor fill the table.
        ("POST", "/api/v1/tenants/{tenant}/bots/{bot}/anonymous-session") => Unrecorded,
        (method, _) => match tenant_route {
            Some(rest) => tenant_action(method, rest),
            None => Unrecorded,
        },
    };
    match action {
        Unrecorded if route.ends_with("/export") && method == Method::GET => Named("data.export"),
        Unrecorded if is_state_change(method) => Named("api.change"),
        other => other,
    }
}

/// Returns the actions of routes under `/api/v1/tenants/{tenant}`.
fn tenant_action(method: &str, rest: &str) -> RouteAction {
    use RouteAction::{Named, Unrecorded};
    match (method, rest) {
        ("POST", "/users") => Named("user.create"),
        ("PATCH", "/users/{user}") => Named("user.update"),
        ("DELETE", "/users/{user}") => Named("user.delete"),
        ("POST", "/users/{user}/unlock") => Named("user.unlock"),
        ("DELETE", "/users/{user}/sessions") => Named("user.sessions.revoke"),
        ("DELETE", "/users/{user}/mfa") => Named("user.mfa.reset"),
        ("POST", "/plugins") => Named("plugin.upload"),
        ("PUT", "/plugins/{digest}/grants") => Named("grant.replace"),
        ("DELETE", "/plugins/{digest}/grants/{capability}") => Named("grant.revoke"),
        ("POST", "/bots") => Named("bot.create"),
        ("PATCH", "/bots/{bot}") => Named("bot.update"),
        ("DELETE", "/bots/{bot}") => Named("bot.delete"),
        ("PUT", "/secrets/{name}") => Named("secret.write"),
        _ => Unrecorded,
    }
}

fn is_state_change(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::routing::post;
    use tower::ServiceExt as _;

    use super::*;
    use crate::audit::AuditSettings;
    use crate::audit::storage::{self, Filter, Order};
    use crate::storage::Db;

    #[tokio::test]
    async fn unfinished_change_is_still_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(None, &dir.path().join("audit.sqlite3"))
            .await
            .unwrap();
        db.migrate().await.unwrap();
        let audit = AuditLog::start(db.clone(), AuditSettings::default());
        let never = || std::future::pending::<()>();
        let app = Router::new()
            .route("/api/v1/tenants", post(never))
            .layer(axum::middleware::from_fn_with_state(audit, middleware));

        // The client gives up, so the request's future is dropped unfinished.
        let request = Request::post("/api/v1/tenants")
            .body(Body::empty())
            .unwrap();
        let cut = tokio::time::timeout(Duration::from_millis(50), app.oneshot(request)).await;
        assert!(cut.is_err());

        let filter = Filter {
            action: Some("tenant.create".to_owned()),
            ..Filter::default()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let found = loop {
            let found = storage::query(&db, &filter, Order::OldestFirst, 10)
                .await
                .unwrap();
            if !found.is_empty() || std::time::Instant::now() > deadline {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].outcome, "failure");
        assert!(
            found[0].details.contains(r#""unfinished":true"#),
            "{}",
            found[0].details
        );
    }

    fn exchange<'a>(method: &'a Method, route: &'a str, status: StatusCode) -> Exchange<'a> {
        Exchange {
            method,
            route: Some(route),
            path: "/some/path",
            status: Some(status),
        }
    }

    #[test]
    fn admin_changes_have_names() {
        let cases = [
            (
                Method::PUT,
                "/api/v1/tenants/{tenant}/plugins/{digest}/grants",
                "grant.replace",
            ),
            (
                Method::PATCH,
                "/api/v1/tenants/{tenant}/users/{user}",
                "user.update",
            ),
            (
                Method::PUT,
                "/api/v1/tenants/{tenant}/secrets/{name}",
                "secret.write",
            ),
            (Method::POST, "/api/v1/tenants", "tenant.create"),
            (Method::POST, "/api/v1/auth/logout", "auth.logout"),
            (Method::GET, "/api/v1/me/export", "data.export"),
            (Method::POST, "/api/v1/some/new/route", "api.change"),
        ];
        for (method, route, expected) in cases {
            assert_eq!(
                route_action(&method, route),
                RouteAction::Named(expected),
                "{method} {route}"
            );
        }
    }

    #[test]
    fn reads_are_recorded_only_with_api_calls() {
        let notes = Notes::default();
        let method = Method::GET;
        let read = exchange(&method, "/api/v1/tenants/{tenant}/bots", StatusCode::OK);
        assert!(event_for(&read, &notes, false).is_none());
        let event = event_for(&read, &notes, true).map(|event| event.action);
        assert_eq!(event, Some("api.call"));
    }

    #[test]
    fn denials_win_over_the_route_action() {
        let notes = Notes {
            denied: Some("other tenant"),
            ..Notes::default()
        };
        let method = Method::PATCH;
        let denied = exchange(&method, "/api/v1/tenants/{tenant}", StatusCode::NOT_FOUND);
        let event = event_for(&denied, &notes, false).map(|event| (event.action, event.outcome));
        assert_eq!(event, Some(("authz.denied", Outcome::Denied)));

        let forbidden = exchange(&method, "/api/v1/tenants/{tenant}", StatusCode::FORBIDDEN);
        let event = event_for(&forbidden, &Notes::default(), false).map(|event| event.action);
        assert_eq!(event, Some("authz.denied"));
    }

    #[test]
    fn rate_limited_requests_are_not_recorded() {
        let method = Method::POST;
        let limited = exchange(&method, "/api/v1/tenants", StatusCode::TOO_MANY_REQUESTS);
        assert!(event_for(&limited, &Notes::default(), true).is_none());
    }

    #[test]
    fn failed_changes_are_failures() {
        let method = Method::POST;
        let failed = exchange(&method, "/api/v1/tenants", StatusCode::CONFLICT);
        let event = event_for(&failed, &Notes::default(), false).map(|event| event.outcome);
        assert_eq!(event, Some(Outcome::Failure));
    }
}
