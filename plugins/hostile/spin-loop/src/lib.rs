//! Hostile test bot: loops forever on every event.
//!
//! The host must stop it by running out of fuel or by the epoch deadline,
//! without affecting other bots.

use std::hint::black_box;

use botserver_sdk::{Bot, Context, Event, HandlerError, Response};

struct SpinLoop;

impl Bot for SpinLoop {
    fn handle(_ctx: &Context, _event: Event) -> Result<Response, HandlerError> {
        let mut iterations = 0u64;
        loop {
            // `black_box` keeps the optimiser from proving the loop has no
            // effect and deleting it.
            iterations = black_box(iterations.wrapping_add(1));
        }
    }
}

botserver_sdk::export_bot!(SpinLoop);
