//! Sessions: one per login, named by a random UUID v4, shared by the
//! refresh-token family of that login.
//!
//! Every authenticated request and every refresh touches the session, which
//! expires after the idle timeout. Revoking it (logout, password change,
//! lockout, deletion, an admin's "terminate all") makes the access tokens
//! and refresh tokens of that login stop working at once. Sessions live in
//! process memory by default and in Redis when configured, so several nodes
//! can share them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AuthError;
use crate::storage::{TenantId, UserId};

/// How many creations pass between sweeps of expired in-process sessions.
const SWEEP_EVERY: u64 = 256;

/// A session id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub Uuid);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Data stored with a session.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Session {
    /// The user who logged in.
    pub user: UserId,
    /// The user's tenant.
    pub tenant: TenantId,
}

/// Backend that stores sessions.
#[derive(Clone, Debug)]
pub enum SessionStore {
    /// In this process only.
    Memory(Arc<MemoryStore>),
    /// In Redis, shared by every node.
    Redis(RedisStore),
}

impl SessionStore {
    /// Creates an in-process store.
    pub fn memory(idle_timeout: Duration) -> Self {
        Self::Memory(Arc::new(MemoryStore {
            idle_timeout,
            sessions: Mutex::new(HashMap::new()),
            created: AtomicU64::new(0),
        }))
    }

    /// Connects to Redis; every key starts with `prefix`.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::SessionStore`] when Redis cannot be reached.
    pub async fn redis(url: &str, prefix: &str, idle_timeout: Duration) -> Result<Self, AuthError> {
        let client = redis::Client::open(url).map_err(redis_error)?;
        let connection = redis::aio::ConnectionManager::new(client)
            .await
            .map_err(redis_error)?;
        Ok(Self::Redis(RedisStore {
            connection,
            prefix: prefix.to_owned(),
            idle_timeout,
        }))
    }

    /// Creates a session with a fresh id. The id is never taken from the
    /// client, and creation fails rather than overwrite an existing id.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::SessionStore`] when the store fails.
    pub async fn create(&self, session: Session) -> Result<SessionId, AuthError> {
        match self {
            Self::Memory(store) => Ok(store.create(session)),
            Self::Redis(store) => store.create(session).await,
        }
    }

    /// Returns the session and restarts its idle timer, or `None` when it
    /// expired or was revoked.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::SessionStore`] when the store fails.
    pub async fn touch(&self, id: SessionId) -> Result<Option<Session>, AuthError> {
        match self {
            Self::Memory(store) => Ok(store.touch(id)),
            Self::Redis(store) => store.touch(id).await,
        }
    }

    /// Ends one session.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::SessionStore`] when the store fails.
    pub async fn revoke(&self, id: SessionId) -> Result<(), AuthError> {
        match self {
            Self::Memory(store) => {
                store.lock().remove(&id);
                Ok(())
            }
            Self::Redis(store) => store.revoke(id).await,
        }
    }

    /// Returns the Redis connection and key prefix when sessions live in
    /// Redis, so that other short-lived state can share the backend.
    pub(super) fn redis_parts(&self) -> Option<(redis::aio::ConnectionManager, &str)> {
        match self {
            Self::Memory(_) => None,
            Self::Redis(store) => Some((store.connection.clone(), store.prefix.as_str())),
        }
    }

    /// Checks that the store responds: a `PING` to Redis, nothing for the
    /// in-process store. Readiness checks call it.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::SessionStore`] when Redis fails to respond.
    pub async fn ping(&self) -> Result<(), AuthError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(store) => {
                let mut connection = store.connection.clone();
                redis::cmd("PING")
                    .query_async::<()>(&mut connection)
                    .await
                    .map_err(redis_error)
            }
        }
    }

    /// Ends every session of a user.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::SessionStore`] when the store fails.
    pub async fn revoke_user(&self, user: UserId) -> Result<(), AuthError> {
        match self {
            Self::Memory(store) => {
                store.lock().retain(|_, entry| entry.session.user != user);
                Ok(())
            }
            Self::Redis(store) => store.revoke_user(user).await,
        }
    }
}

/// In-process sessions.
#[derive(Debug)]
pub struct MemoryStore {
    idle_timeout: Duration,
    sessions: Mutex<HashMap<SessionId, MemoryEntry>>,
    created: AtomicU64,
}

#[derive(Debug)]
struct MemoryEntry {
    session: Session,
    last_seen: Instant,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, MemoryEntry>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn create(&self, session: Session) -> SessionId {
        let mut sessions = self.lock();
        if self
            .created
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY)
        {
            let timeout = self.idle_timeout;
            sessions.retain(|_, entry| entry.last_seen.elapsed() < timeout);
        }
        loop {
            let id = SessionId(Uuid::new_v4());
            if let std::collections::hash_map::Entry::Vacant(slot) = sessions.entry(id) {
                slot.insert(MemoryEntry {
                    session,
                    last_seen: Instant::now(),
                });
                return id;
            }
        }
    }

    fn touch(&self, id: SessionId) -> Option<Session> {
        let mut sessions = self.lock();
        let entry = sessions.get_mut(&id)?;
        if entry.last_seen.elapsed() >= self.idle_timeout {
            sessions.remove(&id);
            return None;
        }
        entry.last_seen = Instant::now();
        Some(entry.session)
    }
}

/// Sessions in Redis: one key per session with the idle timeout as TTL,
/// and one set per user listing that user's session ids.
#[derive(Clone)]
pub struct RedisStore {
    connection: redis::aio::ConnectionManager,
    prefix: String,
    idle_timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    fn session_key(&self, id: SessionId) -> String {
        format!("{}session:{id}", self.prefix)
    }

    fn user_key(&self, user: UserId) -> String {
        format!("{}user-sessions:{user}", self.prefix)
    }

    fn ttl_secs(&self) -> u64 {
        self.idle_timeout.as_secs().max(1)
    }

    async fn create(&self, session: Session) -> Result<SessionId, AuthError> {
        let value = serde_json::to_string(&session)
            .map_err(|error| AuthError::SessionStore(error.to_string()))?;
        let mut connection = self.connection.clone();
        loop {
            let id = SessionId(Uuid::new_v4());
            let options = redis::SetOptions::default()
                .conditional_set(redis::ExistenceCheck::NX)
                .with_expiration(redis::SetExpiry::EX(self.ttl_secs()));
            let created: bool = connection
                .set_options(self.session_key(id), &value, options)
                .await
                .map_err(redis_error)?;
            if !created {
                continue;
            }
            let user_key = self.user_key(session.user);
            redis::pipe()
                .sadd(&user_key, id.to_string())
                .ignore()
                .expire(
                    &user_key,
                    i64::try_from(self.ttl_secs()).unwrap_or(i64::MAX),
                )
                .ignore()
                .query_async::<()>(&mut connection)
                .await
                .map_err(redis_error)?;
            return Ok(id);
        }
    }

    async fn touch(&self, id: SessionId) -> Result<Option<Session>, AuthError> {
        let mut connection = self.connection.clone();
        let value: Option<String> = connection
            .get_ex(self.session_key(id), redis::Expiry::EX(self.ttl_secs()))
            .await
            .map_err(redis_error)?;
        let Some(value) = value else { return Ok(None) };
        let session: Session = serde_json::from_str(&value)
            .map_err(|error| AuthError::SessionStore(error.to_string()))?;
        let user_key = self.user_key(session.user);
        let _: () = connection
            .expire(
                &user_key,
                i64::try_from(self.ttl_secs()).unwrap_or(i64::MAX),
            )
            .await
            .map_err(redis_error)?;
        Ok(Some(session))
    }

    async fn revoke(&self, id: SessionId) -> Result<(), AuthError> {
        let mut connection = self.connection.clone();
        let _: () = connection
            .del(self.session_key(id))
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    async fn revoke_user(&self, user: UserId) -> Result<(), AuthError> {
        let mut connection = self.connection.clone();
        let user_key = self.user_key(user);
        let ids: Vec<String> = connection.smembers(&user_key).await.map_err(redis_error)?;
        let mut keys: Vec<String> = ids
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .map(|id| self.session_key(SessionId(id)))
            .collect();
        keys.push(user_key);
        let _: () = connection.del(keys).await.map_err(redis_error)?;
        Ok(())
    }
}

fn redis_error(error: redis::RedisError) -> AuthError {
    AuthError::SessionStore(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            user: UserId(Uuid::new_v4()),
            tenant: TenantId(Uuid::new_v4()),
        }
    }

    #[tokio::test]
    async fn memory_session_expires_when_idle() {
        let store = SessionStore::memory(Duration::from_millis(0));
        let id = store.create(session()).await.unwrap();
        assert!(store.touch(id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn memory_revoke_user_ends_only_theirs() {
        let store = SessionStore::memory(Duration::from_secs(60));
        let mine = session();
        let a = store.create(mine).await.unwrap();
        let b = store.create(mine).await.unwrap();
        let other = store.create(session()).await.unwrap();
        assert_ne!(a, b);
        store.revoke_user(mine.user).await.unwrap();
        assert!(store.touch(a).await.unwrap().is_none());
        assert!(store.touch(b).await.unwrap().is_none());
        assert!(store.touch(other).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn unknown_session_id_is_not_adopted() {
        let store = SessionStore::memory(Duration::from_secs(60));
        assert!(
            store
                .touch(SessionId(Uuid::new_v4()))
                .await
                .unwrap()
                .is_none()
        );
    }
}
