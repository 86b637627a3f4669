//! End-to-end tests of the server core through a real HTTP client. Every
//! scenario runs twice: against SQLite with in-process sessions, and
//! against PostgreSQL with Redis sessions (both on loopback).

#![cfg(feature = "server")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod api;
mod durability;
mod harness;
mod lockout;
mod refresh;
mod secrets;
mod tenancy;
mod tokens;
