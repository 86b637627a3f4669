//! Hostile test bot: allocates memory in 1 MiB blocks, writes to every byte
//! of each block and keeps them all, until allocation fails and the guest
//! traps.
//!
//! The host must stop it at its memory cap, without affecting other bots.

use std::hint::black_box;

use botserver_sdk::{Bot, Context, Event, HandlerError, Response};

/// Size of each allocation.
const BLOCK_BYTES: usize = 1024 * 1024;

struct MemoryBomb;

impl Bot for MemoryBomb {
    fn handle(_ctx: &Context, _event: Event) -> Result<Response, HandlerError> {
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        loop {
            // A non-zero fill writes every page, so the memory is really
            // used rather than only reserved.
            let block = vec![0xA5_u8; BLOCK_BYTES];
            blocks.push(black_box(block));
            black_box(&blocks);
        }
    }
}

botserver_sdk::export_bot!(MemoryBomb);
