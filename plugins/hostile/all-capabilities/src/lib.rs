//! Hostile test bot: calls every capability on each message, so the
//! component imports all of them: `botserver:bot/kv`, `secrets`, `config`,
//! `logging` and `wasi:http/outgoing-handler`.
//!
//! The message text is the URL it fetches. It replies with one line that
//! sums up what each call returned, never a secret value. Its use in tests
//! is to check that the host lists every missing grant and denies calls
//! whose grant was revoked.

use botserver_sdk::kv::{self, Scope};
use botserver_sdk::{Bot, Context, Event, HandlerError, Response, config, http, log, secrets};

/// Key that the kv probe reads and writes in the bot scope.
const PROBE_KEY: &str = "all-capabilities/probe";
/// Secret that the secrets probe opens.
const SECRET_NAME: &str = "API_KEY";
/// Configuration key that the config probe reads.
const CONFIG_KEY: &str = "greeting";

struct AllCapabilities;

impl Bot for AllCapabilities {
    fn handle(_ctx: &Context, event: Event) -> Result<Response, HandlerError> {
        let Event::UserMessage { text, .. } = event else {
            return Ok(Response::text("Send a URL to probe every capability."));
        };
        log::info("all-capabilities: probing kv, secrets, config and http");
        let summary = format!(
            "kv: {}; secrets: {}; config: {}; http: {}",
            probe_kv(),
            probe_secrets(),
            probe_config(),
            probe_http(text.trim()),
        );
        Ok(Response::text(summary))
    }
}

fn probe_kv() -> String {
    let previous = match kv::get(Scope::Bot, PROBE_KEY) {
        Ok(Some(value)) => format!("{} bytes", value.len()),
        Ok(None) => "absent".to_owned(),
        Err(error) => return format!("get failed: {error}"),
    };
    match kv::set(Scope::Bot, PROBE_KEY, b"probed") {
        Ok(()) => format!("get returned {previous}, set ok"),
        Err(error) => format!("get returned {previous}, set failed: {error}"),
    }
}

fn probe_secrets() -> String {
    let secret = match secrets::open(SECRET_NAME) {
        Ok(secret) => secret,
        Err(error) => return format!("open failed: {error}"),
    };
    match secret.reveal() {
        Ok(value) => format!("revealed {} characters", value.char_count()),
        Err(error) => format!("reveal failed: {error}"),
    }
}

fn probe_config() -> String {
    match config::get(CONFIG_KEY) {
        Ok(Some(value)) => format!("`{CONFIG_KEY}` is {} bytes", value.len()),
        Ok(None) => format!("`{CONFIG_KEY}` is not set"),
        Err(error) => format!("get failed: {error}"),
    }
}

fn probe_http(url: &str) -> String {
    match http::get(url) {
        Ok(response) => format!("status {}, {} bytes", response.status, response.body.len()),
        Err(error) => format!("request failed: {error}"),
    }
}

botserver_sdk::export_bot!(AllCapabilities);
