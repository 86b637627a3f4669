//! Prometheus metrics of the server, rendered as text when `/metrics` is
//! scraped.
//!
//! [`Metrics`] owns one registry and a typed method for every event the
//! server counts, so callers never build metric names or labels themselves.
//! Every label value comes from a fixed set: a route template (never the
//! raw path), a status class, a method name, or a `&'static str` kind chosen
//! by the code. No user, tenant, bot or session id becomes a label, so the
//! number of series stays bounded whatever clients send. Who may scrape the
//! text is decided by the HTTP layer.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Prefix of every metric name.
const PREFIX: &str = "botserver";

/// Upper bounds, in seconds, of the latency histograms' buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The reason a login failed, as the `reason` label of
/// `botserver_login_failures_total`. The client gets the same response for
/// all of them, and only operators see the split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginFailure {
    /// The tenant or the user does not exist.
    UnknownUser,
    /// The password is wrong.
    Password,
    /// The account is locked.
    Locked,
    /// The account is disabled.
    Disabled,
    /// The password was right, but the one-time code or recovery code was
    /// wrong, reused or outside the clock window.
    SecondFactor,
}

impl LoginFailure {
    const ALL: [Self; 5] = [
        Self::UnknownUser,
        Self::Password,
        Self::Locked,
        Self::Disabled,
        Self::SecondFactor,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::UnknownUser => "unknown_user",
            Self::Password => "password",
            Self::Locked => "locked",
            Self::Disabled => "disabled",
            Self::SecondFactor => "second_factor",
        }
    }
}

/// A change of what someone may do, as the `kind` label of
/// `botserver_privilege_changes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrivilegeChange {
    /// A user was created with, or changed to, a role other than `user`,
    /// or lost such a role.
    Role,
    /// A plugin's capability grants were replaced.
    Grant,
    /// One capability grant was revoked.
    Revoke,
    /// An admin removed a user's second factor.
    MfaReset,
}

impl PrivilegeChange {
    const ALL: [Self; 4] = [Self::Role, Self::Grant, Self::Revoke, Self::MfaReset];

    fn label(self) -> &'static str {
        match self {
            Self::Role => "role",
            Self::Grant => "grant",
            Self::Revoke => "revoke",
            Self::MfaReset => "mfa_reset",
        }
    }
}

/// The end of one plugin invocation, as the `outcome` label of
/// `botserver_plugin_invocations_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvocationOutcome {
    /// The plugin returned a response.
    Ok,
    /// The plugin returned an error, or the host failed.
    Error,
    /// The plugin trapped or broke a limit.
    Trap,
}

impl InvocationOutcome {
    const ALL: [Self; 3] = [Self::Ok, Self::Error, Self::Trap];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Trap => "trap",
        }
    }
}

/// Trap kinds created at zero, so that the first trap of a kind already
/// moves `increase()` in an alert. Kinds outside this list are still
/// counted; their series starts at the first trap.
const KNOWN_TRAP_KINDS: [&str; 7] = [
    "fuel",
    "deadline",
    "memory",
    "stack",
    "host_call_bytes",
    "resource",
    "trap",
];

/// Route classes of the rate limiter created at zero, for the same reason
/// as [`KNOWN_TRAP_KINDS`]; they are the names `RouteClass::as_str` of
/// `crate::http::ratelimit` returns.
const KNOWN_RATE_LIMIT_CLASSES: [&str; 7] = [
    "login",
    "refresh",
    "ws_ticket",
    "anonymous_session",
    "chat",
    "operator",
    "api",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    method: &'static str,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteClassLabel {
    route_class: &'static str,
}

type LatencyFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Every metric of the server.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<RequestLabels, Counter>,
    http_duration: LatencyFamily,
    http_in_flight: Gauge,
    connections_open: Gauge,
    ws_open: Gauge,
    ws_connections: Counter,
    ws_messages: Family<DirectionLabel, Counter>,
    ws_turn_duration: Histogram,
    login_failures: Family<ReasonLabel, Counter>,
    lockouts: Counter,
    rate_limited: Family<RouteClassLabel, Counter>,
    privilege_changes: Family<KindLabel, Counter>,
    invocations: Family<OutcomeLabel, Counter>,
    fuel_used: Counter,
    traps: Family<KindLabel, Counter>,
    breaker_trips: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric, with the bounded label sets
    /// already at zero.
    pub fn new() -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix(PREFIX),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram),
            http_in_flight: Gauge::default(),
            connections_open: Gauge::default(),
            ws_open: Gauge::default(),
            ws_connections: Counter::default(),
            ws_messages: Family::default(),
            ws_turn_duration: latency_histogram(),
            login_failures: Family::default(),
            lockouts: Counter::default(),
            rate_limited: Family::default(),
            privilege_changes: Family::default(),
            invocations: Family::default(),
            fuel_used: Counter::default(),
            traps: Family::default(),
            breaker_trips: Counter::default(),
        };
        metrics.register();
        metrics.create_known_series();
        metrics
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "http_requests",
            "HTTP requests by method, route template and status class",
            self.http_requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Time from request to response head, by method and route template",
            self.http_duration.clone(),
        );
        r.register(
            "http_requests_in_flight",
            "HTTP requests being handled",
            self.http_in_flight.clone(),
        );
        r.register(
            "http_connections_open",
            "HTTP connections open; an upgraded chat WebSocket counts in ws_connections_open instead",
            self.connections_open.clone(),
        );
        r.register(
            "ws_connections_open",
            "Chat WebSocket connections open",
            self.ws_open.clone(),
        );
        r.register(
            "ws_connections",
            "Chat WebSocket connections opened",
            self.ws_connections.clone(),
        );
        r.register(
            "ws_messages",
            "Chat WebSocket messages: `received` data frames from clients, `sent` bot replies",
            self.ws_messages.clone(),
        );
        r.register(
            "ws_turn_duration_seconds",
            "Time from a chat message to the bot's reply",
            self.ws_turn_duration.clone(),
        );
        r.register(
            "login_failures",
            "Rejected logins by reason",
            self.login_failures.clone(),
        );
        r.register(
            "account_lockouts",
            "Accounts locked after repeated failed logins",
            self.lockouts.clone(),
        );
        r.register(
            "rate_limited",
            "Requests and messages rejected by a rate limit, by route class",
            self.rate_limited.clone(),
        );
        r.register(
            "privilege_changes",
            "Role changes, capability grants and revocations, and MFA resets",
            self.privilege_changes.clone(),
        );
        r.register(
            "plugin_invocations",
            "Plugin invocations by outcome",
            self.invocations.clone(),
        );
        r.register(
            "plugin_fuel_used",
            "Fuel spent by plugin invocations, host calls included",
            self.fuel_used.clone(),
        );
        r.register(
            "plugin_traps",
            "Plugin traps and broken limits by kind",
            self.traps.clone(),
        );
        r.register(
            "bot_breaker_trips",
            "Bots disabled by their breaker after repeated traps",
            self.breaker_trips.clone(),
        );
    }

    /// Creates the series of every known label value at zero, so a
    /// scrape shows them and the first event moves `increase()`.
    fn create_known_series(&self) {
        for failure in LoginFailure::ALL {
            let _ = self.login_failures.get_or_create(&ReasonLabel {
                reason: failure.label(),
            });
        }
        for change in PrivilegeChange::ALL {
            let _ = self.privilege_changes.get_or_create(&KindLabel {
                kind: change.label(),
            });
        }
        for outcome in InvocationOutcome::ALL {
            let _ = self.invocations.get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            });
        }
        for kind in KNOWN_TRAP_KINDS {
            let _ = self.traps.get_or_create(&KindLabel { kind });
        }
        for route_class in KNOWN_RATE_LIMIT_CLASSES {
            let _ = self
                .rate_limited
                .get_or_create(&RouteClassLabel { route_class });
        }
        for direction in ["received", "sent"] {
            let _ = self
                .ws_messages
                .get_or_create(&DirectionLabel { direction });
        }
    }

    /// Renders every metric in the OpenMetrics text format, which
    /// Prometheus scrapes natively.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // `encode` fails only when the writer does, and a `String` never does.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// Counts one finished HTTP request. `route` is the matched route
    /// template, never the request path.
    pub fn http_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let method = method_label(method);
        self.http_requests
            .get_or_create(&RequestLabels {
                method,
                route: route.to_owned(),
                status: status_class(status),
            })
            .inc();
        self.http_duration
            .get_or_create(&LatencyLabels {
                method,
                route: route.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts an HTTP request as in flight until the guard drops.
    pub fn request_started(&self) -> InFlight {
        self.http_in_flight.inc();
        InFlight {
            gauge: self.http_in_flight.clone(),
        }
    }

    /// Counts one client connection as open until the guard drops. The
    /// accept loop of the HTTP listener calls it for each accepted
    /// connection.
    pub fn connection_opened(&self) -> InFlight {
        self.connections_open.inc();
        InFlight {
            gauge: self.connections_open.clone(),
        }
    }

    /// Counts a chat WebSocket as open until the guard drops.
    pub fn ws_opened(&self) -> InFlight {
        self.ws_connections.inc();
        self.ws_open.inc();
        InFlight {
            gauge: self.ws_open.clone(),
        }
    }

    /// Counts one chat data message the client sent.
    pub fn ws_received(&self) {
        self.ws_message("received");
    }

    /// Counts one bot reply frame sent to a chat client.
    pub fn ws_sent(&self) {
        self.ws_message("sent");
    }

    fn ws_message(&self, direction: &'static str) {
        self.ws_messages
            .get_or_create(&DirectionLabel { direction })
            .inc();
    }

    /// Records the time one chat turn took, from the user's message to the
    /// bot's reply.
    pub fn ws_turn(&self, elapsed: Duration) {
        self.ws_turn_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts one rejected login.
    pub fn login_failed(&self, reason: LoginFailure) {
        self.login_failures
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
    }

    /// Counts one account lock.
    pub fn account_locked(&self) {
        self.lockouts.inc();
    }

    /// Counts one request or WebSocket message that a rate limit rejected.
    ///
    /// `route_class` names the budget that ran out (for example `login`,
    /// `refresh`, `ws_ticket`, `chat`, `ip`, `user`). It must come from a
    /// fixed set of constants in the limiter, never from the request, so
    /// the number of series stays bounded. The limiter calls this once per
    /// rejection, next to its `botserver::security` log line.
    pub fn rate_limited(&self, route_class: &'static str) {
        self.rate_limited
            .get_or_create(&RouteClassLabel { route_class })
            .inc();
    }

    /// Counts one change of roles, grants or second factors.
    pub fn privilege_changed(&self, change: PrivilegeChange) {
        self.privilege_changes
            .get_or_create(&KindLabel {
                kind: change.label(),
            })
            .inc();
    }

    /// Counts one plugin invocation and the fuel it used.
    pub fn invocation(&self, outcome: InvocationOutcome, fuel_used: u64) {
        self.invocations
            .get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            })
            .inc();
        self.fuel_used.inc_by(fuel_used);
    }

    /// Counts one trap of `kind` (from `InvocationError::kind`).
    pub fn trap(&self, kind: &'static str) {
        self.traps.get_or_create(&KindLabel { kind }).inc();
    }

    /// Counts one breaker trip.
    pub fn breaker_tripped(&self) {
        self.breaker_trips.inc();
    }
}

/// The bearer token a Prometheus server presents at `/metrics`, from
/// `BOTSERVER_METRICS_TOKEN`. Only its SHA-256 is kept, and `Debug` shows
/// nothing of it.
#[derive(Clone)]
pub struct ScrapeToken([u8; 32]);

impl ScrapeToken {
    /// Shortest accepted token. 32 random characters cannot be guessed
    /// through the API, whatever rate limits allow.
    pub const MIN_CHARS: usize = 32;

    /// Longest accepted token, which keeps it within one header line.
    pub const MAX_CHARS: usize = 512;

    /// Parses a token of [`Self::MIN_CHARS`] to [`Self::MAX_CHARS`]
    /// printable ASCII characters without spaces.
    pub fn parse(text: &str) -> Option<Self> {
        let valid = (Self::MIN_CHARS..=Self::MAX_CHARS).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_graphic());
        valid.then(|| Self(Sha256::digest(text.as_bytes()).into()))
    }

    /// Returns whether `presented` is the token, comparing digests in
    /// constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&self.0).into()
    }
}

impl std::fmt::Debug for ScrapeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScrapeToken(<redacted>)")
    }
}

/// Keeps a gauge raised while it lives.
#[derive(Debug)]
#[must_use = "the gauge goes down when this guard drops"]
pub struct InFlight {
    gauge: Gauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Maps a method to one of the standard names, and anything else to
/// `other`, so a client inventing methods cannot create series.
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("other")
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn renders_known_series_at_zero() {
        let text = Metrics::new().render();
        assert!(text.ends_with("# EOF\n"), "{text}");
        let failures = r#"botserver_login_failures_total{reason="second_factor"}"#;
        assert_eq!(sample(&text, failures), Some(0.0));
        let traps = r#"botserver_plugin_traps_total{kind="fuel"}"#;
        assert_eq!(sample(&text, traps), Some(0.0));
        assert_eq!(sample(&text, "botserver_account_lockouts_total"), Some(0.0));
    }

    #[test]
    fn labels_requests_by_template_and_class() {
        let metrics = Metrics::new();
        let elapsed = Duration::from_millis(3);
        metrics.http_request("GET", "/api/v1/tenants/{tenant}", 404, elapsed);
        metrics.http_request("BREW", "/api/v1/tenants/{tenant}", 404, elapsed);
        let text = metrics.render();
        let get = r#"botserver_http_requests_total{method="GET",route="/api/v1/tenants/{tenant}",status="4xx"}"#;
        assert_eq!(sample(&text, get), Some(1.0), "{text}");
        let other = r#"botserver_http_requests_total{method="other",route="/api/v1/tenants/{tenant}",status="4xx"}"#;
        assert_eq!(sample(&text, other), Some(1.0), "{text}");
        assert!(!text.contains("BREW"));
    }

    #[test]
    fn guards_lower_gauges_on_drop() {
        let metrics = Metrics::new();
        let first = metrics.ws_opened();
        let second = metrics.ws_opened();
        drop(first);
        let text = metrics.render();
        assert_eq!(sample(&text, "botserver_ws_connections_open"), Some(1.0));
        assert_eq!(sample(&text, "botserver_ws_connections_total"), Some(2.0));
        drop(second);
        let text = metrics.render();
        assert_eq!(sample(&text, "botserver_ws_connections_open"), Some(0.0));
    }

    #[test]
    fn scrape_token_needs_length_and_matches_exactly() {
        assert!(ScrapeToken::parse("short").is_none());
        assert!(ScrapeToken::parse(&format!("{} x", "a".repeat(40))).is_none());
        let text = "b".repeat(ScrapeToken::MIN_CHARS);
        let token = ScrapeToken::parse(&text).unwrap();
        assert!(token.matches(&text));
        assert!(!token.matches(&"b".repeat(ScrapeToken::MIN_CHARS + 1)));
        assert_eq!(format!("{token:?}"), "ScrapeToken(<redacted>)");
    }

    #[test]
    fn known_rate_limit_classes_match_the_limiter() {
        use crate::http::ratelimit::RouteClass;

        // The match has no wildcard, so a new class fails to compile here
        // until it is listed.
        let classes = [
            RouteClass::Login,
            RouteClass::Refresh,
            RouteClass::WsTicket,
            RouteClass::AnonymousSession,
            RouteClass::Chat,
            RouteClass::Operator,
            RouteClass::Api,
        ];
        for class in classes {
            match class {
                RouteClass::Login
                | RouteClass::Refresh
                | RouteClass::WsTicket
                | RouteClass::AnonymousSession
                | RouteClass::Chat
                | RouteClass::Operator
                | RouteClass::Api => {
                    assert!(
                        KNOWN_RATE_LIMIT_CLASSES.contains(&class.as_str()),
                        "{class:?}"
                    );
                }
            }
        }
        assert_eq!(classes.len(), KNOWN_RATE_LIMIT_CLASSES.len());
    }

    #[test]
    fn counts_fuel_and_traps() {
        let metrics = Metrics::new();
        metrics.invocation(InvocationOutcome::Trap, 1_500);
        metrics.invocation(InvocationOutcome::Ok, 500);
        metrics.trap("deadline");
        metrics.breaker_tripped();
        let text = metrics.render();
        assert_eq!(
            sample(&text, "botserver_plugin_fuel_used_total"),
            Some(2_000.0)
        );
        let trap = r#"botserver_plugin_traps_total{kind="deadline"}"#;
        assert_eq!(sample(&text, trap), Some(1.0));
        assert_eq!(
            sample(&text, "botserver_bot_breaker_trips_total"),
            Some(1.0)
        );
    }
}
