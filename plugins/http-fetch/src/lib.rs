//! HTTP fetch bot: takes the message text as a URL, fetches it with `GET`
//! and replies `status {code}, {n} bytes`.
//!
//! Redirects are followed here, not by the host: each hop is a new request
//! that the host checks against the `http` grant again. The component
//! imports `wasi:http/outgoing-handler` and needs an `http` grant.

use botserver_sdk::http::{self, HttpResponse};
use botserver_sdk::{Bot, Context, Event, HandlerError, Response};

/// Redirects followed before giving up. It stops a redirect loop from
/// using up the event's request budget.
const MAX_REDIRECTS: usize = 5;

struct HttpFetch;

impl Bot for HttpFetch {
    fn handle(_ctx: &Context, event: Event) -> Result<Response, HandlerError> {
        match event {
            Event::ConversationStarted => Ok(Response::text("Send me a URL and I fetch it.")),
            Event::UserMessage { text, .. } => {
                let url = text.trim();
                if url.is_empty() {
                    return Ok(Response::text("Send me an http or https URL."));
                }
                let response = fetch(url)?;
                Ok(Response::text(format!(
                    "status {}, {} bytes",
                    response.status,
                    response.body.len()
                )))
            }
            other => Err(HandlerError::Unsupported(format!(
                "http-fetch does not handle `{}` events",
                other.kind()
            ))),
        }
    }
}

/// Fetches `start`, following up to [`MAX_REDIRECTS`] redirects.
fn fetch(start: &str) -> Result<HttpResponse, HandlerError> {
    let mut url = start.to_owned();
    for redirects in 0..=MAX_REDIRECTS {
        let response = http::get(&url).map_err(|error| {
            HandlerError::Unavailable(format!("request to {url} failed: {error}"))
        })?;
        // A 3xx without a `Location` cannot be followed, so it is the final response.
        let Some(location) = response.location().filter(|_| response.is_redirect()) else {
            return Ok(response);
        };
        if redirects == MAX_REDIRECTS {
            break;
        }
        url = http::resolve_reference(&url, location).map_err(|error| {
            HandlerError::Failed(format!(
                "redirect from {url} has an invalid location: {error}"
            ))
        })?;
    }
    Err(HandlerError::Unavailable(format!(
        "request to {start} failed: more than {MAX_REDIRECTS} redirects"
    )))
}

botserver_sdk::export_bot!(HttpFetch);
