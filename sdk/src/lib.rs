//! Write BotServer chat bots as WebAssembly components in safe Rust.
//!
//! A bot is a type that implements [`Bot`], exported with [`export_bot!`]
//! from a `cdylib` crate built for `wasm32-wasip2`. The host calls
//! [`Bot::handle`] once per event (a user message, a conversation start, a
//! resumed dialog), each time in a fresh instance, and shows the returned
//! [`Response`] to the user.
//!
//! Everything beyond computing a reply is a capability that a tenant admin
//! grants: [`kv`] storage, [`http`] requests, [`secrets`] and [`config`].
//! The built component imports only the interfaces whose functions the bot
//! calls, and the host reads the capabilities it requests from those
//! imports. A bot that never calls [`kv`] needs no `kv` grant. [`log`]
//! needs no grant.
//!
//! # Example
//!
//! A bot that counts each user's messages. `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "message-counter"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! botserver-sdk = { path = "../sdk" }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```no_run
//! use botserver_sdk::kv::{self, Scope};
//! use botserver_sdk::{Bot, Context, Event, HandlerError, Response};
//!
//! struct MessageCounter;
//!
//! impl Bot for MessageCounter {
//!     fn handle(ctx: &Context, event: Event) -> Result<Response, HandlerError> {
//!         match event {
//!             Event::ConversationStarted => {
//!                 Ok(Response::text("Hello! Say anything.").with_suggestions(["hi"]))
//!             }
//!             Event::UserMessage { text, .. } => {
//!                 // `?` turns a storage error into a `HandlerError`.
//!                 let seen = kv::get_u64(Scope::User, "seen")?.unwrap_or(0) + 1;
//!                 kv::set_u64(Scope::User, "seen", seen)?;
//!                 let reply = format!("Message {seen} in locale {}: {text}", ctx.locale);
//!                 Ok(Response::text(reply))
//!             }
//!             // `Event` is `#[non_exhaustive]`: later contract versions add events.
//!             other => Err(HandlerError::Unsupported(format!("event `{}`", other.kind()))),
//!         }
//!     }
//! }
//!
//! botserver_sdk::export_bot!(MessageCounter);
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the
//! component is `target/wasm32-wasip2/release/message_counter.wasm`. It imports
//! `botserver:bot/kv`, so it loads only with a `kv` grant.
//!
//! # Targets
//!
//! The SDK compiles on any target so that a bot's own logic can be unit
//! tested natively, but host calls ([`kv`], [`secrets`], [`config`],
//! [`log`], [`http`]) exist only inside the component: called natively,
//! they panic.

pub mod bindings;
pub mod config;
mod event;
mod handler;
pub mod http;
pub mod kv;
pub mod log;
mod response;
pub mod secrets;

pub use event::{Attribute, Context, Event};
pub use handler::{Bot, HandlerError};
pub use response::{Reply, Response, Suggestion};

/// Exports a [`Bot`] implementation as the plugin's
/// `botserver:bot/handler` interface.
///
/// Use it once, in the crate that is built into the component:
///
/// ```no_run
/// # use botserver_sdk::{Bot, Context, Event, HandlerError, Response};
/// struct Echo;
///
/// impl Bot for Echo {
///     fn handle(_: &Context, _: Event) -> Result<Response, HandlerError> {
///         Ok(Response::text("hi"))
///     }
/// }
///
/// botserver_sdk::export_bot!(Echo);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_bot {
    ($bot:ty) => {
        const _: () = {
            struct BotServerHandler;

            impl $crate::bindings::exports::botserver::bot::handler::Guest for BotServerHandler {
                fn handle(
                    ctx: $crate::bindings::botserver::bot::types::Context,
                    event: $crate::bindings::botserver::bot::types::Event,
                ) -> ::core::result::Result<
                    $crate::bindings::botserver::bot::types::Response,
                    $crate::bindings::botserver::bot::types::HandlerError,
                > {
                    $crate::__private::dispatch::<$bot>(ctx, event)
                }
            }

            $crate::bindings::export! {
                BotServerHandler with_types_in $crate::bindings
            }
        };
    };
}

/// Items used by [`export_bot!`]; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::handler::dispatch;
}
