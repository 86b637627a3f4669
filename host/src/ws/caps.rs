//! Caps on open chat connections per user and per client address.
//!
//! Each open chat keeps a socket, a task and a conversation, so the caps
//! stop one account or one address from exhausting them. They count the
//! connections of this server only: several nodes behind a load balancer
//! each allow the cap, which bounds each node's resources, which is what the
//! caps protect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::Config;
use crate::http::client_ip::AddressKey;
use crate::storage::UserId;

/// Default `BOTSERVER_WS_MAX_CONNECTIONS_PER_USER`. A user rarely keeps
/// more than a few tabs or devices chatting at once.
pub const DEFAULT_MAX_CONNECTIONS_PER_USER: u32 = 8;

/// Default `BOTSERVER_WS_MAX_CONNECTIONS_PER_IP`. Higher than the per-user
/// cap because many visitors can share one address behind NAT.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 64;

/// The cap that rejected a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapExceeded {
    /// The user has as many chats open as allowed.
    User,
    /// The client address has as many chats open as allowed.
    Address,
}

impl CapExceeded {
    /// Returns the reason, for the rejection's problem details.
    pub fn detail(self) -> &'static str {
        match self {
            Self::User => "too many open chat connections for this user",
            Self::Address => "too many open chat connections from this address",
        }
    }
}

/// The open-connection counts of this server; clones share them.
#[derive(Clone, Debug)]
pub struct ConnectionCaps {
    inner: Arc<Caps>,
}

#[derive(Debug)]
struct Caps {
    per_user: u32,
    per_address: u32,
    open: Mutex<OpenCounts>,
}

#[derive(Debug, Default)]
struct OpenCounts {
    users: HashMap<UserId, u32>,
    addresses: HashMap<AddressKey, u32>,
}

impl ConnectionCaps {
    /// Returns the caps configured in `config`, or the defaults.
    pub fn from_config(config: &Config) -> Self {
        let extra = &config.extra;
        Self::new(
            extra
                .ws_max_connections_per_user
                .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_USER),
            extra
                .ws_max_connections_per_ip
                .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IP),
        )
    }

    fn new(per_user: u32, per_address: u32) -> Self {
        Self {
            inner: Arc::new(Caps {
                per_user,
                per_address,
                open: Mutex::new(OpenCounts::default()),
            }),
        }
    }

    /// Counts one more connection of `user` (none for a visitor) from
    /// `address`, and returns the slot that releases it when dropped.
    ///
    /// # Errors
    ///
    /// Returns the cap that is full; nothing is counted then.
    pub fn acquire(
        &self,
        user: Option<UserId>,
        address: AddressKey,
    ) -> Result<ConnectionSlot, CapExceeded> {
        let caps = &*self.inner;
        let mut open = caps.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.addresses.get(&address).copied().unwrap_or(0) >= caps.per_address {
            return Err(CapExceeded::Address);
        }
        if let Some(user) = user
            && open.users.get(&user).copied().unwrap_or(0) >= caps.per_user
        {
            return Err(CapExceeded::User);
        }
        *open.addresses.entry(address).or_default() += 1;
        if let Some(user) = user {
            *open.users.entry(user).or_default() += 1;
        }
        Ok(ConnectionSlot {
            caps: Arc::clone(&self.inner),
            user,
            address,
        })
    }
}

/// One counted connection; dropping it releases the count.
#[derive(Debug)]
pub struct ConnectionSlot {
    caps: Arc<Caps>,
    user: Option<UserId>,
    address: AddressKey,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self
            .caps
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        release(&mut open.addresses, self.address);
        if let Some(user) = self.user {
            release(&mut open.users, user);
        }
    }
}

/// Decrements a count and removes it at zero, so the maps contain only
/// keys with open connections.
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, u32>, key: K) {
    if let Some(count) = counts.get_mut(&key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            counts.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn address(text: &str) -> AddressKey {
        AddressKey::of(text.parse().unwrap())
    }

    #[test]
    fn caps_users_and_addresses_and_releases_on_drop() {
        let caps = ConnectionCaps::new(2, 3);
        let alice = Some(UserId(Uuid::new_v4()));
        let home = address("198.51.100.7");
        let first = caps.acquire(alice, home).unwrap();
        let _second = caps.acquire(alice, home).unwrap();
        assert_eq!(caps.acquire(alice, home).unwrap_err(), CapExceeded::User);
        // The rejection counted nothing: one visitor still fits.
        let _visitor = caps.acquire(None, home).unwrap();
        assert_eq!(caps.acquire(None, home).unwrap_err(), CapExceeded::Address);
        drop(first);
        let _again = caps.acquire(alice, address("192.0.2.1")).unwrap();
        let open = caps.inner.open.lock().unwrap();
        assert_eq!(open.users.len(), 1);
        assert_eq!(open.addresses.len(), 2);
    }

    #[test]
    fn removes_keys_without_connections() {
        let caps = ConnectionCaps::new(1, 1);
        let slot = caps.acquire(None, address("2001:db8::1")).unwrap();
        assert_eq!(
            caps.acquire(None, address("2001:db8::2")).unwrap_err(),
            CapExceeded::Address
        );
        drop(slot);
        let open = caps.inner.open.lock().unwrap();
        assert!(open.addresses.is_empty());
    }
}
