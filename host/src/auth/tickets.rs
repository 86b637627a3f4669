//! One-time tickets that open a WebSocket.
//!
//! A browser cannot set an `Authorization` header on a WebSocket upgrade,
//! and a bearer token in the URL would end up in proxy and access logs. So
//! an authenticated request trades its token for a ticket: 256 random bits,
//! valid for [`TICKET_TTL`] and for one upgrade only. The store keeps the
//! ticket's HMAC under `BOTSERVER_JWT_SECRET`, never the ticket itself, in
//! the same backend as the sessions, so any node can redeem a ticket another
//! node issued.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AuthError;
use super::sessions::{SessionId, SessionStore};
use crate::crypto::{KeyBytes, fill_random};
use crate::storage::{TenantId, UserId};

/// How long a ticket stays redeemable. Short, because it travels in a URL.
pub const TICKET_TTL: Duration = Duration::from_secs(30);

/// Random bytes in a ticket.
const TICKET_BYTES: usize = 32;

/// Issues between sweeps of expired tickets from the in-process store.
const SWEEP_EVERY: u64 = 64;

/// The holder a ticket admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TicketHolder {
    /// A signed-in user, for as long as the login session lives.
    User {
        /// The account.
        user: UserId,
        /// The login session the ticket was issued under.
        session: SessionId,
    },
    /// An anonymous visitor of a public bot.
    Anonymous {
        /// A random id that stands for the visitor.
        visitor: Uuid,
    },
}

/// The access a redeemed ticket grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The tenant whose bots the ticket opens.
    pub tenant: TenantId,
    /// The person chatting.
    pub holder: TicketHolder,
    /// The only bot the ticket opens; `None` opens any bot the holder may
    /// use.
    pub bot: Option<String>,
}

/// The ticket text handed to the client. Its `Debug` is redacted.
#[derive(Serialize)]
#[serde(transparent)]
pub struct TicketText(String);

impl TicketText {
    /// Returns the text, to put in a response body.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for TicketText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketText(<redacted>)")
    }
}

/// Issues and redeems tickets.
#[derive(Clone, Debug)]
pub struct TicketStore {
    key: KeyBytes,
    ttl: Duration,
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Memory(Arc<MemoryTickets>),
    Redis {
        connection: redis::aio::ConnectionManager,
        prefix: String,
    },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Memory(_) => "Memory",
            Self::Redis { .. } => "Redis",
        })
    }
}

#[derive(Default)]
struct MemoryTickets {
    tickets: Mutex<HashMap<[u8; 32], (Ticket, Instant)>>,
    issued: AtomicU64,
}

/// A ticket as stored in Redis. Redeeming checks the expiry again, so it
/// is exact to the millisecond whatever Redis does with the key's TTL.
#[derive(Serialize, Deserialize)]
struct StoredTicket {
    ticket: Ticket,
    expires_at_ms: u128,
}

impl TicketStore {
    /// Creates a store in the same backend as `sessions`, keyed by `key`.
    pub fn new(sessions: &SessionStore, key: KeyBytes) -> Self {
        let backend = match sessions.redis_parts() {
            Some((connection, prefix)) => Backend::Redis {
                connection,
                prefix: prefix.to_owned(),
            },
            None => Backend::Memory(Arc::default()),
        };
        Self {
            key,
            ttl: TICKET_TTL,
            backend,
        }
    }

    /// Returns the store with tickets valid for `ttl` instead of
    /// [`TICKET_TTL`]; tests use it to get tickets that are already expired.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Returns how long a ticket stays redeemable.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues a ticket for `ticket`.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::SessionStore`] when the backend fails, or
    /// [`AuthError::Crypto`] when the random generator fails.
    pub async fn issue(&self, ticket: &Ticket) -> Result<TicketText, AuthError> {
        let mut random = [0u8; TICKET_BYTES];
        fill_random(&mut random)?;
        let text = URL_SAFE_NO_PAD.encode(random);
        let id = self.key.mac(text.as_bytes());
        match &self.backend {
            Backend::Memory(store) => store.insert(id, ticket.clone(), self.ttl),
            Backend::Redis { connection, prefix } => {
                let stored = StoredTicket {
                    ticket: ticket.clone(),
                    expires_at_ms: unix_ms().saturating_add(self.ttl.as_millis()),
                };
                let value = serde_json::to_string(&stored)
                    .map_err(|error| AuthError::SessionStore(error.to_string()))?;
                let ttl_ms = u64::try_from(self.ttl.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1);
                let options = redis::SetOptions::default()
                    .conditional_set(redis::ExistenceCheck::NX)
                    .with_expiration(redis::SetExpiry::PX(ttl_ms));
                let mut connection = connection.clone();
                let stored: bool = connection
                    .set_options(redis_key(prefix, &id), value, options)
                    .await
                    .map_err(redis_error)?;
                if !stored {
                    return Err(AuthError::SessionStore("ticket id collision".to_owned()));
                }
            }
        }
        Ok(TicketText(text))
    }

    /// Redeems `presented`: returns what it grants and makes it unusable,
    /// or `None` when it is malformed, unknown, used or expired.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::SessionStore`] when the backend fails.
    pub async fn redeem(&self, presented: &str) -> Result<Option<Ticket>, AuthError> {
        let well_formed = URL_SAFE_NO_PAD
            .decode(presented)
            .is_ok_and(|bytes| bytes.len() == TICKET_BYTES);
        if !well_formed {
            return Ok(None);
        }
        let id = self.key.mac(presented.as_bytes());
        match &self.backend {
            Backend::Memory(store) => Ok(store.take(&id)),
            Backend::Redis { connection, prefix } => {
                let mut connection = connection.clone();
                let value: Option<String> = connection
                    .get_del(redis_key(prefix, &id))
                    .await
                    .map_err(redis_error)?;
                let Some(value) = value else { return Ok(None) };
                let stored: StoredTicket = serde_json::from_str(&value)
                    .map_err(|error| AuthError::SessionStore(error.to_string()))?;
                Ok((unix_ms() < stored.expires_at_ms).then_some(stored.ticket))
            }
        }
    }
}

impl MemoryTickets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Ticket, Instant)>> {
        self.tickets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(&self, id: [u8; 32], ticket: Ticket, ttl: Duration) {
        let mut tickets = self.lock();
        let now = Instant::now();
        if self
            .issued
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY)
        {
            tickets.retain(|_, (_, expires)| now < *expires);
        }
        tickets.insert(id, (ticket, now.checked_add(ttl).unwrap_or(now)));
    }

    fn take(&self, id: &[u8; 32]) -> Option<Ticket> {
        let (ticket, expires) = self.lock().remove(id)?;
        (Instant::now() < expires).then_some(ticket)
    }
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis())
}

fn redis_key(prefix: &str, id: &[u8; 32]) -> String {
    format!("{prefix}ws-ticket:{}", hex::encode(id))
}

fn redis_error(error: redis::RedisError) -> AuthError {
    AuthError::SessionStore(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> TicketStore {
        let sessions = SessionStore::memory(Duration::from_secs(60));
        TicketStore::new(&sessions, KeyBytes::generate().unwrap())
    }

    fn ticket() -> Ticket {
        Ticket {
            tenant: TenantId(Uuid::new_v4()),
            holder: TicketHolder::Anonymous {
                visitor: Uuid::new_v4(),
            },
            bot: Some("faq".to_owned()),
        }
    }

    #[tokio::test]
    async fn ticket_redeems_once() {
        let store = store();
        let issued = ticket();
        let text = store.issue(&issued).await.unwrap();
        assert_eq!(store.redeem(text.as_str()).await.unwrap(), Some(issued));
        assert_eq!(store.redeem(text.as_str()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn forged_and_malformed_tickets_are_unknown() {
        let store = store();
        store.issue(&ticket()).await.unwrap();
        let forged = URL_SAFE_NO_PAD.encode([7u8; TICKET_BYTES]);
        for presented in [forged.as_str(), "", "short", &"A".repeat(5000)] {
            assert_eq!(store.redeem(presented).await.unwrap(), None, "{presented}");
        }
    }

    #[tokio::test]
    async fn another_key_cannot_redeem() {
        let sessions = SessionStore::memory(Duration::from_secs(60));
        let first = TicketStore::new(&sessions, KeyBytes::generate().unwrap());
        let text = first.issue(&ticket()).await.unwrap();
        let mut second = first.clone();
        second.key = KeyBytes::generate().unwrap();
        assert_eq!(second.redeem(text.as_str()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn expired_ticket_is_refused() {
        let store = store().with_ttl(Duration::ZERO);
        let text = store.issue(&ticket()).await.unwrap();
        assert_eq!(store.redeem(text.as_str()).await.unwrap(), None);
    }

    #[test]
    fn debug_hides_the_ticket() {
        let text = TicketText("secret-ticket".to_owned());
        assert!(!format!("{text:?}").contains("secret-ticket"));
    }
}
