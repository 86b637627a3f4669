//! Per-user data keys: values an account owns are sealed with a key of
//! their own, wrapped by the tenant's data key. Erasing the account deletes
//! that key, and with it the means to open every copy of those values,
//! whichever backup or replica they sit in. User keys are never cached, so
//! an erasure on one server takes effect on every server at once.

use zeroize::Zeroizing;

use super::{ColumnRef, Vault, key_from};
use crate::crypto::{CryptoError, KeyBytes, encode_aad, open, seal};
use crate::storage::user_keys::{self, WrappedUserKey};
use crate::storage::{TenantId, UserId};

/// Domain label of the associated data of user-sealed values.
const USER_COLUMN_LABEL: &str = "botserver user column";
/// Domain label of the associated data of wrapped user keys.
const USER_KEY_WRAP_LABEL: &str = "botserver user key";
/// Version written into user-sealed values: user keys have one version.
const USER_KEY_VERSION: u32 = 1;

impl ColumnRef<'_> {
    fn user_aad(&self, user: UserId) -> Vec<u8> {
        let tenant = self.tenant.to_string();
        let user = user.to_string();
        let fields: [&[u8]; 5] = [
            tenant.as_bytes(),
            user.as_bytes(),
            self.table.as_bytes(),
            self.row.as_bytes(),
            self.column.as_bytes(),
        ];
        encode_aad(USER_COLUMN_LABEL, USER_KEY_VERSION, &fields)
    }
}

impl Vault {
    /// Seals `plaintext` for the column `at` with `user`'s key, creating the
    /// key on first use.
    ///
    /// # Errors
    ///
    /// Returns [`CryptoError`] when the key cannot be loaded or created.
    pub async fn seal_for_user(
        &self,
        at: &ColumnRef<'_>,
        user: UserId,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let key = match self.user_key(at.tenant, user).await? {
            Some(key) => key,
            None => self.create_user_key(at.tenant, user).await?,
        };
        seal(&key, USER_KEY_VERSION, &at.user_aad(user), plaintext)
    }

    /// Opens a value sealed by [`Vault::seal_for_user`].
    ///
    /// # Errors
    ///
    /// Returns [`CryptoError::Open`] when the user's key was erased, or the
    /// value belongs elsewhere or was changed.
    pub async fn open_for_user(
        &self,
        at: &ColumnRef<'_>,
        user: UserId,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let key = self
            .user_key(at.tenant, user)
            .await?
            .ok_or(CryptoError::Open)?;
        open(&key, &at.user_aad(user), sealed)
    }

    /// Deletes `user`'s key, so that nothing sealed with it opens again;
    /// returns whether there was one.
    ///
    /// # Errors
    ///
    /// Returns [`CryptoError`] when the delete fails.
    pub async fn erase_user_key(
        &self,
        tenant: TenantId,
        user: UserId,
    ) -> Result<bool, CryptoError> {
        Ok(user_keys::delete(&self.db, tenant, user).await?)
    }

    async fn user_key(
        &self,
        tenant: TenantId,
        user: UserId,
    ) -> Result<Option<KeyBytes>, CryptoError> {
        let Some(wrapped) = user_keys::find(&self.db, tenant, user).await? else {
            return Ok(None);
        };
        let version = wrapped.tenant_key_version;
        let tenant_key = self.data_key(tenant, version).await?;
        let plain = open(
            &tenant_key,
            &wrap_aad(tenant, user, version),
            &wrapped.wrapped_key,
        )?;
        key_from(&plain).map(Some)
    }

    /// Creates and stores a key for `user`. When another request created
    /// one first, that one wins and is returned.
    async fn create_user_key(
        &self,
        tenant: TenantId,
        user: UserId,
    ) -> Result<KeyBytes, CryptoError> {
        let version = self.current_version(tenant).await?;
        let tenant_key = self.data_key(tenant, version).await?;
        let key = KeyBytes::generate()?;
        let wrapped = WrappedUserKey {
            tenant_key_version: version,
            wrapped_key: seal(
                &tenant_key,
                version,
                &wrap_aad(tenant, user, version),
                key.as_bytes(),
            )?,
        };
        if user_keys::insert(&self.db, tenant, user, &wrapped).await? {
            return Ok(key);
        }
        self.user_key(tenant, user).await?.ok_or(CryptoError::Open)
    }
}

fn wrap_aad(tenant: TenantId, user: UserId, version: u32) -> Vec<u8> {
    let tenant = tenant.to_string();
    let user = user.to_string();
    encode_aad(
        USER_KEY_WRAP_LABEL,
        version,
        &[tenant.as_bytes(), user.as_bytes()],
    )
}
