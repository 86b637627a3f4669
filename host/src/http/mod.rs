//! The HTTP API: state, router, middleware and one module per resource.
//!
//! [`router`] builds the whole API from an [`AppState`], so tests can serve
//! it on any listener; [`AppState::build`] opens the database, keys and
//! session store from a [`Config`].

mod audit;
mod auth;
mod bots;
pub mod client_ip;
mod client_stream;
pub mod error;
pub mod extract;
mod headers;
mod health;
mod listener;
mod me;
mod metrics;
mod mfa;
pub mod operator;
mod page;
mod plugins;
mod privacy;
pub mod ratelimit;
mod secrets;
mod tenants;
pub mod tls;
mod users;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::MatchedPath;
use axum::http::{HeaderName, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::audit::{AuditLog, AuditSettings};
use crate::auth::mfa::{MfaPolicy, MfaService};
use crate::auth::password::PasswordHasher;
use crate::auth::sessions::SessionStore;
use crate::auth::{AuthError, AuthService, LockoutPolicy, TicketStore, TokenKeys};
use crate::bots::BotService;
use crate::config::Config;
use crate::crypto::keyfile::{MasterKeys, ensure_private_dir};
use crate::crypto::{CryptoError, Vault};
use crate::metrics::Metrics;
use crate::runtime::{LoadError, PluginRuntime, RuntimeConfig};
use crate::storage::{Db, StorageError, secs};
use error::{ApiError, problem_response};

pub(crate) use bots::is_bot_name;

/// Largest request body accepted by the API. Every body here is a small
/// JSON object; the cap stops memory exhaustion by huge or endless bodies.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Header carrying the request id on every response.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Maximum time a request may take before the server returns 408. This also
/// bounds clients that send their body very slowly.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a request handler needs.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The database.
    pub db: Db,
    /// Identity operations.
    pub auth: AuthService,
    /// Sealing of secret columns.
    pub vault: Arc<Vault>,
    /// The configuration the server started with.
    pub config: Arc<Config>,
    /// Bots, their plugins and the runtime that runs them.
    pub bots: Arc<BotService>,
    /// One-time tickets that open chat WebSockets.
    pub tickets: TicketStore,
    /// Counters and histograms served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Request and chat-message budgets per address and per user.
    pub limiter: ratelimit::RateLimiter,
    /// Caps on open chat connections per user and per address.
    pub chat_connections: crate::ws::ConnectionCaps,
    /// The audit trail.
    pub audit: AuditLog,
}

/// Failures while starting the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Keys could not be loaded or generated.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The signing key or session store failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The plugin runtime could not start.
    #[error("failed to start the plugin runtime")]
    Runtime(#[from] LoadError),
    /// The Redis connection of the rate limiter could not be set up.
    #[error("failed to set up the shared rate limiter")]
    RateLimiter(#[source] redis::RedisError),
    /// The TLS certificate, key or client CA could not be loaded.
    #[error("failed to set up TLS")]
    Tls(#[from] tls::TlsError),
}

impl AppState {
    /// Opens the data directory, keys, database (migrated) and session
    /// store described by `config`.
    ///
    /// # Errors
    ///
    /// Returns [`StartError`] naming the part that failed.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        ensure_private_dir(&config.data_dir)?;
        let keys = MasterKeys::load(&config)?;
        let db = Db::connect(config.database_url.as_deref(), &config.sqlite_path()).await?;
        db.migrate().await?;
        let tokens = TokenKeys::load(
            config.jwt_key_path.as_deref(),
            &config.data_dir,
            !config.production,
        )?;
        let sessions = match &config.redis_url {
            Some(url) => {
                SessionStore::redis(url, &config.redis_key_prefix, config.session_timeout).await?
            }
            None => SessionStore::memory(config.session_timeout),
        };
        let tickets = TicketStore::new(&sessions, keys.jwt_secret.clone());
        let hasher = PasswordHasher::new(max_concurrent_hashes())?;
        let lockout = LockoutPolicy {
            max_attempts: config.max_login_attempts,
            duration_secs: secs(config.lockout_duration),
        };
        let vault = Arc::new(Vault::new(db.clone(), keys.database, Vec::new()));
        let audit = AuditLog::start(db.clone(), AuditSettings::from_config(&config));
        let metrics = Arc::new(Metrics::new());
        let mfa = MfaService::new(
            db.clone(),
            Arc::clone(&vault),
            MfaPolicy::from_config(&config),
        );
        let auth = AuthService::new(
            db.clone(),
            hasher,
            Arc::new(tokens),
            sessions,
            lockout,
            mfa,
            Arc::clone(&metrics),
        )
        .with_audit(audit.clone());
        let runtime = Arc::new(PluginRuntime::new(RuntimeConfig::default())?);
        let bots = Arc::new(
            BotService::new(
                db.clone(),
                Arc::clone(&vault),
                runtime,
                Arc::clone(&metrics),
            )
            .with_audit(audit.clone()),
        );
        let limiter = ratelimit::RateLimiter::from_config(&config, Arc::clone(&metrics))
            .map_err(StartError::RateLimiter)?;
        let chat_connections = crate::ws::ConnectionCaps::from_config(&config);
        Ok(Self {
            db,
            auth,
            vault,
            bots,
            tickets,
            metrics,
            limiter,
            chat_connections,
            audit,
            config: Arc::new(config),
        })
    }
}

/// Concurrent Argon2 hashes. Each uses 19 MiB and one core for tens of
/// milliseconds, so a login flood queues instead of exhausting memory.
fn max_concurrent_hashes() -> usize {
    std::thread::available_parallelism().map_or(2, |cores| cores.get().clamp(1, 16))
}

/// Builds the API router.
pub fn router(state: AppState) -> Router {
    let max_upload = plugins::max_upload_bytes(&state.config);
    let request_metrics = Arc::clone(&state.metrics);
    let limiter = state.limiter.clone();
    let audit = state.audit.clone();
    let config = Arc::clone(&state.config);
    let small_bodies = Router::new()
        .merge(plugins::routes())
        .merge(bots::routes())
        .merge(secrets::routes())
        .merge(auth::routes())
        .merge(tenants::routes())
        .merge(users::routes())
        .merge(me::routes())
        .merge(privacy::routes())
        .merge(audit::routes())
        .merge(mfa::routes())
        .merge(health::routes())
        .merge(metrics::routes())
        .merge(crate::ws::routes())
        .merge(page::routes())
        .fallback(not_found)
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            MAX_BODY_BYTES,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES));
    // Plugin uploads carry their own, larger limit; every other route keeps
    // the small one above.
    let api = small_bodies
        .merge(plugins::upload_routes(max_upload))
        .with_state(state);
    // Inside the rate limiter, so that audit events carry the client
    // address it resolved.
    let api = api.layer(axum::middleware::from_fn_with_state(
        audit,
        crate::audit::request::middleware,
    ));
    let api = ratelimit::layer(api, limiter);
    let api = api.layer(axum::middleware::from_fn_with_state(
        Arc::clone(&config),
        operator::guard,
    ));

    api.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        REQUEST_TIMEOUT,
    ))
    .layer(SetResponseHeaderLayer::if_not_present(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    ))
    .layer(axum::middleware::map_response(payload_too_large_as_problem))
    .layer(headers::cors(&config.extra.allowed_origins))
    .layer(axum::middleware::map_response_with_state(
        config.serves_tls(),
        headers::set_security_headers,
    ))
    .layer(axum::middleware::from_fn_with_state(
        request_metrics,
        metrics::track,
    ))
    .layer(PropagateRequestIdLayer::new(REQUEST_ID))
    .layer(
        TraceLayer::new_for_http()
            .make_span_with(request_span)
            // 5xx details are logged once by `ApiError`; the layer's own
            // failure line stays at debug so it does not repeat them.
            .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
    )
    .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// The span of one request: method, matched route and request id only;
/// never the query string, headers or body.
fn request_span<B>(request: &Request<B>) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("<unmatched>", MatchedPath::as_str);
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    // ERROR level keeps the span, and so the request id, on every error
    // event even when the filter drops info and debug.
    tracing::error_span!(
        "http.request",
        http.method = %request.method(),
        http.route = route,
        request.id = request_id,
        // Filled in by the `Caller` extractor once the token is checked.
        user.id = tracing::field::Empty,
        tenant.id = tracing::field::Empty,
    )
}

async fn not_found() -> Response {
    ApiError::NotFound.into_response()
}

/// Serves the API on `listener` until `shutdown` completes, over TLS when
/// the configuration names a certificate and key. Each request carries the
/// peer address as `ConnectInfo<SocketAddr>`, which the rate limiter reads.
///
/// # Errors
///
/// Returns [`StartError::Tls`] when the TLS files fail to load.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let tls = match tls::TlsSettings::from_config(&state.config) {
        Some(settings) => Some(Arc::new(tls::Tls::new(settings)?)),
        None => None,
    };
    let limits = listener::ConnectionLimits::from_config(&state.config);
    let metrics = Arc::clone(&state.metrics);
    listener::run(listener, router(state), tls, limits, metrics, shutdown).await;
    Ok(())
}

/// Gives the plain-text 413 of the body limit a problem-details body.
async fn payload_too_large_as_problem(response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_none_or(|value| value != "application/problem+json")
    {
        return problem_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some(format!(
                "request body too large: expected at most {MAX_BODY_BYTES} bytes"
            )),
        );
    }
    response
}
