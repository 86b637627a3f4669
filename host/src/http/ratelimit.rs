//! Rate limits per client address and per user.
//!
//! Every request counts against the budget of its client address
//! (`BOTSERVER_RATE_LIMIT_PER_IP` per minute). The login, refresh, ws-ticket
//! and anonymous-session routes also count against a tighter budget per
//! address and route, because each of them costs a password hash or issues a
//! credential. Requests with a valid access token count against the user's
//! budget (`BOTSERVER_RATE_LIMIT_PER_USER` per hour) once
//! [`Caller`](super::extract::Caller) has authenticated them, and so do the
//! chat messages of signed-in users. Chat messages of anonymous visitors
//! count against their address. Health and metrics routes have a separate,
//! generous budget per address on each node, so a load balancer's probes
//! neither spend nor depend on anyone else's budget.
//!
//! Budgets follow GCRA: N per period allows a burst of N, then one more
//! every period / N. Without Redis each node keeps them in process with
//! `governor`. With `BOTSERVER_REDIS_URL`, every node checks the same
//! budgets through one Lua script (see `shared`). When Redis is unreachable,
//! the classes that guard credentials and anonymous sessions fail closed
//! with 503, and the others fall back to this node's own limiter.
//!
//! A request over a budget gets 429 with `Retry-After`. Each rejection is an
//! info event with target [`SECURITY_TARGET`], at most
//! [`SECURITY_EVENTS_PER_SECOND`] a second; the next event's `suppressed`
//! field counts the ones left out.

mod local;
mod shared;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultDirectRateLimiter, Quota};
use uuid::Uuid;

use self::local::LocalBuckets;
use self::shared::SharedBuckets;
use super::client_ip::{AddressKey, ClientIp, ClientIpResolver};
use super::error::ApiError;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::storage::UserId;

/// Target of security events, for log filters, audit and metrics.
pub const SECURITY_TARGET: &str = "botserver::security";

/// Default `BOTSERVER_RATE_LIMIT_PER_IP`: requests per minute per client
/// address. It bounds what one address can make the server do, whatever
/// identity it claims.
pub const DEFAULT_PER_IP_PER_MINUTE: u32 = 100;

/// Default `BOTSERVER_RATE_LIMIT_PER_USER`: requests and chat messages per
/// hour per account. It bounds one account spread over many addresses.
pub const DEFAULT_PER_USER_PER_HOUR: u32 = 1000;

/// Default `BOTSERVER_RATE_LIMIT_LOGIN_PER_IP`: login requests, and
/// separately refresh requests, per minute per client address. Each login
/// costs an Argon2 hash, so this slows password guessing and hash floods.
pub const DEFAULT_LOGIN_PER_IP_PER_MINUTE: u32 = 10;

/// Default `BOTSERVER_RATE_LIMIT_TICKET_PER_IP`: ws-ticket requests, and
/// separately anonymous-session requests, per minute per client address.
/// It stops one address from minting chat tickets and visitor identities
/// in bulk.
pub const DEFAULT_TICKET_PER_IP_PER_MINUTE: u32 = 30;

/// Health and metrics requests per minute per client address. Probes poll
/// every few seconds; the cap only stops a flood of readiness checks, each
/// of which queries the database.
pub const OPERATOR_PER_IP_PER_MINUTE: u32 = 600;

/// `Retry-After` of a 503 while Redis is unreachable.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Security events per second; a flood of rejections logs this many, so it
/// cannot flood the log too.
pub const SECURITY_EVENTS_PER_SECOND: u32 = 20;

/// The kind of a request, which decides its budgets and what happens when
/// Redis is unreachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RouteClass {
    /// `POST /api/v1/auth/login`.
    Login,
    /// `POST /api/v1/auth/refresh`.
    Refresh,
    /// `POST /api/v1/auth/ws-ticket`.
    WsTicket,
    /// `POST /api/v1/tenants/{tenant}/bots/{bot}/anonymous-session`.
    AnonymousSession,
    /// A chat message on an open WebSocket.
    Chat,
    /// Health and metrics routes.
    Operator,
    /// Every other route, and unknown paths.
    #[default]
    Api,
}

impl RouteClass {
    /// Returns the class of a route, by its path template.
    pub fn of(route: &str) -> Self {
        match route {
            "/api/v1/auth/login" => Self::Login,
            "/api/v1/auth/refresh" => Self::Refresh,
            "/api/v1/auth/ws-ticket" => Self::WsTicket,
            "/api/v1/tenants/{tenant}/bots/{bot}/anonymous-session" => Self::AnonymousSession,
            "/healthz" | "/readyz" | "/metrics" => Self::Operator,
            _ => Self::Api,
        }
    }

    /// Returns the name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Refresh => "refresh",
            Self::WsTicket => "ws_ticket",
            Self::AnonymousSession => "anonymous_session",
            Self::Chat => "chat",
            Self::Operator => "operator",
            Self::Api => "api",
        }
    }

    /// Returns whether requests of this class are rejected while Redis is
    /// unreachable. These routes hand out credentials or identities, so a
    /// per-node budget would multiply an attacker's budget by the number of
    /// nodes. Every other class falls back to the node's own limiter.
    pub fn fails_closed(self) -> bool {
        matches!(
            self,
            Self::Login | Self::Refresh | Self::WsTicket | Self::AnonymousSession
        )
    }

    /// The per-address buckets a request of this class counts against.
    fn address_buckets(self) -> &'static [Bucket] {
        match self {
            Self::Login => &[Bucket::Login, Bucket::Address],
            Self::Refresh => &[Bucket::Refresh, Bucket::Address],
            Self::WsTicket => &[Bucket::WsTicket, Bucket::Address],
            Self::AnonymousSession => &[Bucket::AnonymousSession, Bucket::Address],
            Self::Operator => &[Bucket::Operator],
            Self::Chat | Self::Api => &[Bucket::Address],
        }
    }
}

/// One budget. Each subject has its own state in each bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// Every request of an address, except operator routes.
    Address,
    /// Authenticated requests and chat messages of an account.
    User,
    /// Login requests of an address.
    Login,
    /// Refresh requests of an address.
    Refresh,
    /// Ticket requests of an address.
    WsTicket,
    /// Anonymous-session requests of an address.
    AnonymousSession,
    /// Health and metrics requests of an address.
    Operator,
}

impl Bucket {
    /// Returns the name used in logs and Redis keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Address => "ip",
            Self::User => "user",
            Self::Login => "login",
            Self::Refresh => "refresh",
            Self::WsTicket => "ws_ticket",
            Self::AnonymousSession => "anonymous_session",
            Self::Operator => "operator",
        }
    }
}

/// The subject a bucket counts: an address or an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Subject {
    Address(AddressKey),
    User(Uuid),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Address(key) => write!(f, "ip:{key}"),
            Self::User(id) => write!(f, "user:{id}"),
        }
    }
}

/// The quota of every bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    per_ip: Quota,
    per_user: Quota,
    login: Quota,
    tickets: Quota,
    operator: Quota,
}

impl RateLimits {
    /// Returns the limits configured in `config`, or the defaults.
    pub fn from_config(config: &Config) -> Self {
        let extra = &config.extra;
        let per_minute =
            |value: Option<u32>, default: u32| Quota::per_minute(nonzero(value.unwrap_or(default)));
        Self {
            per_ip: per_minute(extra.rate_limit_per_ip, DEFAULT_PER_IP_PER_MINUTE),
            per_user: Quota::per_hour(nonzero(
                extra
                    .rate_limit_per_user
                    .unwrap_or(DEFAULT_PER_USER_PER_HOUR),
            )),
            login: per_minute(
                extra.rate_limit_login_per_ip,
                DEFAULT_LOGIN_PER_IP_PER_MINUTE,
            ),
            tickets: per_minute(
                extra.rate_limit_ticket_per_ip,
                DEFAULT_TICKET_PER_IP_PER_MINUTE,
            ),
            operator: Quota::per_minute(nonzero(OPERATOR_PER_IP_PER_MINUTE)),
        }
    }

    fn quota(&self, bucket: Bucket) -> Quota {
        match bucket {
            Bucket::Address => self.per_ip,
            Bucket::User => self.per_user,
            Bucket::Login | Bucket::Refresh => self.login,
            Bucket::WsTicket | Bucket::AnonymousSession => self.tickets,
            Bucket::Operator => self.operator,
        }
    }
}

/// Settings are checked to be positive; the fallback only keeps this total.
fn nonzero(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).unwrap_or(NonZeroU32::MIN)
}

/// The outcome of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within every budget; the budgets were charged.
    Allowed,
    /// Over a budget; the next attempt may pass after this delay.
    Limited(Duration),
    /// Redis is unreachable and this class fails closed.
    Unavailable,
}

impl Verdict {
    /// Maps a rejection to its API error: 429 or 503, both with
    /// `Retry-After`.
    ///
    /// # Errors
    ///
    /// Returns [`ApiError::RateLimited`] or [`ApiError::Unavailable`].
    pub fn into_result(self) -> Result<(), ApiError> {
        match self {
            Self::Allowed => Ok(()),
            Self::Limited(retry_after) => Err(ApiError::RateLimited { retry_after }),
            Self::Unavailable => Err(ApiError::Unavailable {
                detail: "the rate limiter is unavailable; try again later",
                retry_after: UNAVAILABLE_RETRY_AFTER,
            }),
        }
    }
}

/// Route class and client address of a request, stored as a request
/// extension by the middleware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestOrigin {
    /// The route's class.
    pub class: RouteClass,
    /// The client address.
    pub client: ClientIp,
}

impl Default for RequestOrigin {
    fn default() -> Self {
        Self {
            class: RouteClass::Api,
            client: ClientIp(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        }
    }
}

/// The rate limiter of one node; clones share state.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limits: RateLimits,
    resolver: ClientIpResolver,
    local: LocalBuckets,
    shared: Option<SharedBuckets>,
    events: SecurityEvents,
    metrics: Arc<Metrics>,
}

impl RateLimiter {
    /// Builds the limiter `config` describes: shared through Redis when
    /// `BOTSERVER_REDIS_URL` is set, in process otherwise. The Redis
    /// connection opens on first use. Every rejection is counted in
    /// `metrics`.
    ///
    /// # Errors
    ///
    /// Returns the Redis error when the URL is invalid.
    pub fn from_config(config: &Config, metrics: Arc<Metrics>) -> Result<Self, redis::RedisError> {
        let limits = RateLimits::from_config(config);
        let shared = match &config.redis_url {
            Some(url) => Some(SharedBuckets::connect(url, &config.redis_key_prefix)?),
            None => None,
        };
        let resolver = ClientIpResolver::new(
            config.extra.trusted_proxies.clone(),
            config.extra.forwarded_header,
        );
        Ok(Self {
            inner: Arc::new(Inner {
                limits,
                resolver,
                local: LocalBuckets::new(&limits),
                shared,
                events: SecurityEvents::new(),
                metrics,
            }),
        })
    }

    /// Returns the configured quotas.
    pub fn limits(&self) -> &RateLimits {
        &self.inner.limits
    }

    /// Charges a request of `class` from `client` to its address budgets.
    pub async fn check_request(&self, class: RouteClass, client: ClientIp) -> Verdict {
        let subject = Subject::Address(client.key());
        let checks: Vec<(Bucket, Subject)> = class
            .address_buckets()
            .iter()
            .map(|bucket| (*bucket, subject))
            .collect();
        self.check(class, &checks, client, None).await
    }

    /// Charges an authenticated request of `class` to `user`'s budget.
    pub async fn check_user(&self, class: RouteClass, user: UserId, client: ClientIp) -> Verdict {
        let checks = [(Bucket::User, Subject::User(user.0))];
        self.check(class, &checks, client, Some(user)).await
    }

    /// Charges one chat message: to the account of a signed-in `user`, or
    /// to the address of an anonymous visitor.
    pub async fn check_chat_message(&self, user: Option<UserId>, client: ClientIp) -> Verdict {
        let check = match user {
            Some(user) => (Bucket::User, Subject::User(user.0)),
            None => (Bucket::Address, Subject::Address(client.key())),
        };
        self.check(RouteClass::Chat, &[check], client, user).await
    }

    async fn check(
        &self,
        class: RouteClass,
        checks: &[(Bucket, Subject)],
        client: ClientIp,
        user: Option<UserId>,
    ) -> Verdict {
        let outcome = self.decide(class, checks).await;
        match outcome {
            Ok(None) => Verdict::Allowed,
            Ok(Some((bucket, retry_after))) => {
                self.inner.metrics.rate_limited(class.as_str());
                self.inner.events.limited(class, bucket, client, user);
                Verdict::Limited(retry_after)
            }
            Err(Unreachable) => Verdict::Unavailable,
        }
    }

    /// Returns the bucket that rejected the request and its delay, `None` when all
    /// passed, or [`Unreachable`] for a class that fails closed.
    async fn decide(
        &self,
        class: RouteClass,
        checks: &[(Bucket, Subject)],
    ) -> Result<Option<(Bucket, Duration)>, Unreachable> {
        let inner = &*self.inner;
        // Operator routes stay on the node: a probe must not depend on Redis.
        if let Some(shared) = inner
            .shared
            .as_ref()
            .filter(|_| class != RouteClass::Operator)
        {
            match shared.check(&inner.limits, checks).await {
                Ok(outcome) => return Ok(outcome),
                Err(Unreachable) if class.fails_closed() => return Err(Unreachable),
                Err(Unreachable) => {}
            }
        }
        Ok(inner.local.check(checks))
    }
}

/// Redis could not be asked.
#[derive(Clone, Copy, Debug)]
struct Unreachable;

/// Throttled security events about rejected requests.
#[derive(Debug)]
struct SecurityEvents {
    throttle: DefaultDirectRateLimiter,
    suppressed: AtomicU64,
}

impl SecurityEvents {
    fn new() -> Self {
        Self {
            throttle: governor::RateLimiter::direct(Quota::per_second(nonzero(
                SECURITY_EVENTS_PER_SECOND,
            ))),
            suppressed: AtomicU64::new(0),
        }
    }

    fn limited(&self, class: RouteClass, bucket: Bucket, client: ClientIp, user: Option<UserId>) {
        if self.throttle.check().is_err() {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        let (class, bucket) = (class.as_str(), bucket.as_str());
        match user {
            Some(user) => tracing::info!(
                target: SECURITY_TARGET,
                suppressed,
                security.event = "rate_limited",
                route.class = class,
                rate_limit.bucket = bucket,
                client.ip = %client,
                user.id = %user,
                "request over the rate limit",
            ),
            None => tracing::info!(
                target: SECURITY_TARGET,
                suppressed,
                security.event = "rate_limited",
                route.class = class,
                rate_limit.bucket = bucket,
                client.ip = %client,
                "request over the rate limit",
            ),
        }
    }
}

/// Adds the middleware that resolves the client address and charges every
/// request to its address budgets before routing it on.
pub(super) fn layer(router: Router, limiter: RateLimiter) -> Router {
    router.layer(axum::middleware::from_fn_with_state(limiter, enforce))
}

async fn enforce(State(limiter): State<RateLimiter>, mut request: Request, next: Next) -> Response {
    // Without `ConnectInfo` (a router served without it) every request
    // shares the unspecified address, so limits still hold, if coarsely.
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    let client = ClientIp(limiter.inner.resolver.resolve(peer, request.headers()));
    let class = match request.extensions().get::<MatchedPath>() {
        Some(route) => RouteClass::of(route.as_str()),
        None => RouteClass::Api,
    };
    request.extensions_mut().insert(client);
    request
        .extensions_mut()
        .insert(RequestOrigin { class, client });
    match limiter.check_request(class, client).await.into_result() {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn limiter(pairs: &[(&str, &str)]) -> RateLimiter {
        let config = Config::load(&Overrides::default(), |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        })
        .unwrap();
        RateLimiter::from_config(&config, Arc::new(Metrics::new())).unwrap()
    }

    fn client(text: &str) -> ClientIp {
        ClientIp(text.parse().unwrap())
    }

    #[test]
    fn defaults_match_the_documented_budgets() {
        let limits = *limiter(&[]).limits();
        assert_eq!(limits.per_ip, Quota::per_minute(nonzero(100)));
        assert_eq!(limits.per_user, Quota::per_hour(nonzero(1000)));
        assert_eq!(limits.login, Quota::per_minute(nonzero(10)));
        assert_eq!(limits.tickets, Quota::per_minute(nonzero(30)));
    }

    #[test]
    fn classifies_routes_by_template() {
        assert_eq!(RouteClass::of("/api/v1/auth/login"), RouteClass::Login);
        assert_eq!(
            RouteClass::of("/api/v1/tenants/{tenant}/bots/{bot}/anonymous-session"),
            RouteClass::AnonymousSession
        );
        assert_eq!(RouteClass::of("/readyz"), RouteClass::Operator);
        assert_eq!(RouteClass::of("/metrics"), RouteClass::Operator);
        assert_eq!(RouteClass::of("/api/v1/me"), RouteClass::Api);
        assert!(RouteClass::Login.fails_closed());
        assert!(!RouteClass::Chat.fails_closed());
        assert!(!RouteClass::Api.fails_closed());
    }

    #[tokio::test]
    async fn login_budget_is_tighter_than_the_address_budget() {
        let limiter = limiter(&[
            ("BOTSERVER_RATE_LIMIT_PER_IP", "5"),
            ("BOTSERVER_RATE_LIMIT_LOGIN_PER_IP", "2"),
        ]);
        let attacker = client("203.0.113.9");
        for _ in 0..2 {
            let verdict = limiter.check_request(RouteClass::Login, attacker).await;
            assert_eq!(verdict, Verdict::Allowed);
        }
        let third = limiter.check_request(RouteClass::Login, attacker).await;
        assert!(matches!(third, Verdict::Limited(delay) if delay > Duration::ZERO));
        // The rejected login left the address budget alone: 3 of 5 remain.
        for _ in 0..3 {
            let verdict = limiter.check_request(RouteClass::Api, attacker).await;
            assert_eq!(verdict, Verdict::Allowed);
        }
        let over = limiter.check_request(RouteClass::Api, attacker).await;
        assert!(matches!(over, Verdict::Limited(_)));
        let other = limiter
            .check_request(RouteClass::Api, client("198.51.100.7"))
            .await;
        assert_eq!(other, Verdict::Allowed);
    }

    #[tokio::test]
    async fn operator_routes_have_their_own_budget() {
        let limiter = limiter(&[("BOTSERVER_RATE_LIMIT_PER_IP", "1")]);
        let probe = client("192.0.2.1");
        assert_eq!(
            limiter.check_request(RouteClass::Api, probe).await,
            Verdict::Allowed
        );
        assert!(matches!(
            limiter.check_request(RouteClass::Api, probe).await,
            Verdict::Limited(_)
        ));
        for _ in 0..10 {
            let verdict = limiter.check_request(RouteClass::Operator, probe).await;
            assert_eq!(verdict, Verdict::Allowed);
        }
    }

    #[tokio::test]
    async fn visitor_messages_spend_the_address_budget() {
        let limiter = limiter(&[
            ("BOTSERVER_RATE_LIMIT_PER_IP", "2"),
            ("BOTSERVER_RATE_LIMIT_PER_USER", "1"),
        ]);
        let visitor = client("198.51.100.7");
        let member = UserId(Uuid::new_v4());
        assert_eq!(
            limiter.check_chat_message(None, visitor).await,
            Verdict::Allowed
        );
        assert_eq!(
            limiter.check_request(RouteClass::Api, visitor).await,
            Verdict::Allowed
        );
        assert!(matches!(
            limiter.check_chat_message(None, visitor).await,
            Verdict::Limited(_)
        ));
        assert_eq!(
            limiter.check_chat_message(Some(member), visitor).await,
            Verdict::Allowed
        );
        assert!(matches!(
            limiter
                .check_user(RouteClass::Api, member, client("192.0.2.1"))
                .await,
            Verdict::Limited(_)
        ));
    }

    #[test]
    fn rejections_map_to_429_and_503() {
        use axum::http::{StatusCode, header};
        let limited = Verdict::Limited(Duration::from_millis(1500)).into_result();
        let response = limited.unwrap_err().into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let unavailable = Verdict::Unavailable.into_result().unwrap_err();
        let response = unavailable.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
    }
}
