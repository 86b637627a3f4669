//! End-to-end tests of the server core through a real HTTP client. Every
//! scenario runs twice: against SQLite with in-process sessions, and
//! against PostgreSQL with Redis sessions (both on loopback).

#![cfg(feature = "server")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod api;
mod audit;
mod bots;
mod chat;
mod chat_attacks;
mod chat_cli;
mod demo;
mod durability;
mod edge;
mod harness;
mod lockout;
mod mfa;
mod observability;
mod page;
mod privacy;
mod ratelimit;
mod refresh;
mod secrets;
#[path = "../support/mod.rs"]
mod support;
mod tenancy;
mod tls;
mod tokens;
mod validation;
mod ws_limits;
