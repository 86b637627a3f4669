//! Hostile test bot: recurses without bound, with a 4 KiB buffer on the
//! stack in each frame, until the stack overflows and the guest traps.
//!
//! The host must report the trap for this event only. The frames live on the
//! stack that the wasm32 build keeps in linear memory, so the trap is
//! usually an out-of-bounds memory access rather than the engine's own
//! call stack overflow.

use std::hint::black_box;

use botserver_sdk::{Bot, Context, Event, HandlerError, Response};

/// Stack buffer per frame.
const FRAME_BYTES: usize = 4096;

struct DeepRecursion;

impl Bot for DeepRecursion {
    fn handle(_ctx: &Context, _event: Event) -> Result<Response, HandlerError> {
        let depth = descend(0);
        Ok(Response::text(format!("returned from depth {depth}")))
    }
}

/// Recurses until the stack overflows.
///
/// The stop condition depends on a `black_box` value, so the compiler can
/// neither prove that recursion is endless nor rule out that it ends. The
/// buffer is read after the recursive call returns, so the call is not in
/// tail position and cannot become a loop.
#[inline(never)]
fn descend(depth: u64) -> u64 {
    let mut frame = [0u8; FRAME_BYTES];
    frame[..8].copy_from_slice(&depth.to_le_bytes());
    let frame = black_box(frame);
    if black_box(depth) == u64::MAX {
        return depth;
    }
    let deepest = descend(depth + 1);
    deepest.wrapping_add(u64::from(frame[FRAME_BYTES - 1]))
}

botserver_sdk::export_bot!(DeepRecursion);
