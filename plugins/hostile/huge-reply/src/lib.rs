//! Hostile test bot: returns one reply of 16 MiB of `A` for every event.
//!
//! The host must reject the result at its host call byte cap and show the
//! user nothing of it.

use botserver_sdk::{Bot, Context, Event, HandlerError, Response};

/// Length of the reply text.
const REPLY_BYTES: usize = 16 * 1024 * 1024;

struct HugeReply;

impl Bot for HugeReply {
    fn handle(_ctx: &Context, _event: Event) -> Result<Response, HandlerError> {
        Ok(Response::text("A".repeat(REPLY_BYTES)))
    }
}

botserver_sdk::export_bot!(HugeReply);
