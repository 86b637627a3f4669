//! Login, refresh, logout, password change and session revocation.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AuthError;
use super::mfa::{MfaService, OneTimeCode, SecondFactor};
use super::password::{Password, PasswordHasher, check_policy};
use super::refresh::RefreshToken;
use super::sessions::{Session, SessionId, SessionStore};
use super::tokens::{AccessClaims, TokenKeys};
use crate::audit::{Actor, AuditEvent, AuditLog, Outcome};
use crate::metrics::{LoginFailure, Metrics};
use crate::storage::refresh_tokens::{self, NewRefreshToken, Rotation};
use crate::storage::{Db, User, UserId, now_unix, tenants, users};

/// Absolute lifetime of a refresh token. The session idle timeout usually
/// ends a family much earlier.
pub const REFRESH_TOKEN_TTL_SECS: i64 = 30 * 24 * 3600;

/// Body of `POST /api/v1/auth/login`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Tenant name.
    pub tenant: String,
    /// Login name.
    pub username: String,
    /// Password.
    pub password: Password,
    /// Current code of the authenticator app, for users with a second
    /// factor.
    #[serde(default)]
    pub totp: Option<OneTimeCode>,
    /// One of the recovery codes, instead of `totp`.
    #[serde(default)]
    pub recovery_code: Option<OneTimeCode>,
}

impl LoginRequest {
    /// Returns the second factor the request carries.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::BadRequest`] when it carries both kinds.
    pub fn second_factor(&self) -> Result<SecondFactor<'_>, AuthError> {
        SecondFactor::from_fields(
            self.totp.as_ref().map(OneTimeCode::as_str),
            self.recovery_code.as_ref().map(OneTimeCode::as_str),
        )
    }
}

/// Tokens returned by login and refresh, shaped as an OAuth 2 token
/// response.
#[derive(Debug, Serialize)]
pub struct IssuedTokens {
    /// RS256 JWT.
    pub access_token: String,
    /// Opaque token for `POST /api/v1/auth/refresh`.
    pub refresh_token: RefreshToken,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// Whether the server's policy requires a second factor the user has
    /// not enrolled yet. Until they do, the tokens work only for the
    /// enrolment routes and logout.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub mfa_enrolment_required: bool,
}

/// Lockout settings.
#[derive(Clone, Copy, Debug)]
pub struct LockoutPolicy {
    /// Failures in a row that lock an account.
    pub max_attempts: u32,
    /// Lock duration in seconds.
    pub duration_secs: i64,
}

/// The identity operations behind the auth routes.
#[derive(Clone, Debug)]
pub struct AuthService {
    db: Db,
    hasher: PasswordHasher,
    tokens: Arc<TokenKeys>,
    sessions: SessionStore,
    lockout: LockoutPolicy,
    mfa: MfaService,
    metrics: Arc<Metrics>,
    audit: AuditLog,
}

impl AuthService {
    /// Creates the service.
    pub fn new(
        db: Db,
        hasher: PasswordHasher,
        tokens: Arc<TokenKeys>,
        sessions: SessionStore,
        lockout: LockoutPolicy,
        mfa: MfaService,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            db,
            hasher,
            tokens,
            sessions,
            lockout,
            mfa,
            metrics,
            audit: AuditLog::disabled(),
        }
    }

    /// Records logins, lockouts and token refreshes in `audit`.
    #[must_use]
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = audit;
        self
    }

    /// Returns the second-factor operations.
    pub fn mfa(&self) -> &MfaService {
        &self.mfa
    }

    /// Returns the token keys, for the JWKS route.
    pub fn tokens(&self) -> &TokenKeys {
        &self.tokens
    }

    /// Returns the password hasher.
    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    /// Checks a login and opens a session. Every failure, whether unknown
    /// tenant, unknown user, wrong password, lock or disabled account, runs
    /// one password verification and returns the same error. Only after the
    /// password is right does a user with a second factor learn that one
    /// is missing or wrong. A wrong one counts towards the lockout.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::InvalidCredentials`] for any rejected password,
    /// [`AuthError::SecondFactorRequired`] or
    /// [`AuthError::InvalidSecondFactor`] for a missing or rejected second
    /// factor, [`AuthError::BadRequest`] for a request with both kinds of
    /// code, other [`AuthError`]s for failures of the server.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn login(&self, request: &LoginRequest) -> Result<IssuedTokens, AuthError> {
        let factor = request.second_factor()?;
        let user = self
            .find_login_user(&request.tenant, &request.username)
            .await?;
        let verification = self
            .hasher
            .verify(
                &request.password,
                user.as_ref().map(|user| user.password_hash.as_str()),
            )
            .await?;
        let Some(user) = user else {
            self.metrics.login_failed(LoginFailure::UnknownUser);
            let event = login_failure(None, "unknown_account")
                .detail("tenant", request.tenant.as_str())
                .detail("username", request.username.as_str());
            self.audit.record(event).await;
            return Err(AuthError::InvalidCredentials);
        };

        if user.is_locked(now_unix()) {
            tracing::debug!(user.id = %user.id, "login rejected: account locked");
            self.metrics.login_failed(LoginFailure::Locked);
            self.audit
                .record(login_failure(Some(&user), "locked"))
                .await;
            return Err(AuthError::InvalidCredentials);
        }
        if !verification.matched {
            self.metrics.login_failed(LoginFailure::Password);
            self.audit
                .record(login_failure(Some(&user), "wrong_password"))
                .await;
            self.record_failure(&user).await?;
            return Err(AuthError::InvalidCredentials);
        }
        if user.disabled {
            tracing::debug!(user.id = %user.id, "login rejected: account disabled");
            self.metrics.login_failed(LoginFailure::Disabled);
            self.audit
                .record(login_failure(Some(&user), "disabled"))
                .await;
            return Err(AuthError::InvalidCredentials);
        }
        // The failure counter is reset only after the second factor passed,
        // so requests without a code cannot clear the count of wrong ones.
        self.check_second_factor(&user, factor).await?;

        users::record_successful_login(&self.db, user.id).await?;
        if verification.needs_rehash {
            let hash = self.hasher.hash(&request.password).await?;
            users::set_password_hash(&self.db, user.id, &hash).await?;
        }
        let session = self
            .sessions
            .create(Session {
                user: user.id,
                tenant: user.tenant_id,
            })
            .await?;
        tracing::info!(user.id = %user.id, tenant.id = %user.tenant_id, "login succeeded");
        let event = AuditEvent::new("auth.login.success", Outcome::Success)
            .actor(Actor::User(user.id))
            .tenant(user.tenant_id)
            .target(format!("user:{}", user.id));
        self.audit.record(event).await;
        let mut tokens = self.start_family(&user, session).await?;
        tokens.mfa_enrolment_required = self.mfa.must_enrol(&user).await?;
        Ok(tokens)
    }

    /// Checks a second factor, counting a wrong one as a failed login.
    async fn check_second_factor(
        &self,
        user: &User,
        factor: SecondFactor<'_>,
    ) -> Result<(), AuthError> {
        let result = self.mfa.check(user, factor).await;
        let reason = match &result {
            Err(AuthError::InvalidSecondFactor) => Some("wrong_second_factor"),
            Err(AuthError::SecondFactorRequired) => Some("second_factor_missing"),
            _ => None,
        };
        if let Some(reason) = reason {
            self.audit.record(login_failure(Some(user), reason)).await;
        }
        if matches!(result, Err(AuthError::InvalidSecondFactor)) {
            tracing::debug!(user.id = %user.id, "second factor rejected");
            self.metrics.login_failed(LoginFailure::SecondFactor);
            self.record_failure(user).await?;
        }
        result
    }

    /// Removes the user's second factor after checking a current code.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::MfaState`] when the policy requires a second
    /// factor of the user or none is enabled,
    /// [`AuthError::SecondFactorRequired`] without a code and
    /// [`AuthError::InvalidSecondFactor`] for a rejected one, which counts
    /// towards the lockout.
    pub async fn disable_mfa(
        &self,
        user: &User,
        factor: SecondFactor<'_>,
    ) -> Result<(), AuthError> {
        if self.mfa.policy().requires(user.role) {
            return Err(AuthError::MfaState(
                "the server's policy requires a second factor for this account",
            ));
        }
        if !self.mfa.is_enabled(user.id).await? {
            return Err(AuthError::MfaState("no second factor is enabled"));
        }
        self.check_second_factor(user, factor).await?;
        self.mfa.remove(user.id).await?;
        tracing::info!(user.id = %user.id, "second factor disabled");
        Ok(())
    }

    async fn find_login_user(
        &self,
        tenant: &str,
        username: &str,
    ) -> Result<Option<User>, AuthError> {
        let Some(tenant) = tenants::find(&self.db, tenant).await? else {
            return Ok(None);
        };
        let username = username.trim().to_lowercase();
        Ok(users::find_by_username(&self.db, tenant.id, &username).await?)
    }

    async fn record_failure(&self, user: &User) -> Result<(), AuthError> {
        let locked = users::record_failed_login(
            &self.db,
            user.id,
            self.lockout.max_attempts,
            self.lockout.duration_secs,
        )
        .await?;
        if locked {
            tracing::info!(user.id = %user.id, "account locked after repeated failed logins");
            self.metrics.account_locked();
            let event = AuditEvent::new("auth.lockout", Outcome::Success)
                .actor(Actor::System)
                .tenant(user.tenant_id)
                .target(format!("user:{}", user.id))
                .detail("duration_secs", self.lockout.duration_secs);
            self.audit.record(event).await;
            self.revoke_user_sessions(user.id).await?;
        }
        Ok(())
    }

    async fn start_family(
        &self,
        user: &User,
        session: SessionId,
    ) -> Result<IssuedTokens, AuthError> {
        let refresh = RefreshToken::generate()?;
        let hash = refresh.hash().ok_or(AuthError::InvalidToken)?;
        let family = session.to_string();
        let token = NewRefreshToken {
            token_hash: hash.as_str(),
            family_id: &family,
            user: user.id,
            expires_at: now_unix() + REFRESH_TOKEN_TTL_SECS,
        };
        refresh_tokens::insert(&self.db, token).await?;
        self.issue(user, session, refresh)
    }

    fn issue(
        &self,
        user: &User,
        session: SessionId,
        refresh: RefreshToken,
    ) -> Result<IssuedTokens, AuthError> {
        let (access_token, expires_in) =
            self.tokens
                .issue(user.id, user.tenant_id, session, user.role)?;
        Ok(IssuedTokens {
            access_token,
            refresh_token: refresh,
            token_type: "Bearer",
            expires_in,
            mfa_enrolment_required: false,
        })
    }

    /// Rotates a refresh token. Presenting a token that was already rotated
    /// revokes its whole family and session.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::InvalidToken`] for unknown, expired, revoked or
    /// reused tokens and for ended sessions.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn refresh(&self, presented: &RefreshToken) -> Result<IssuedTokens, AuthError> {
        let hash = presented.hash().ok_or(AuthError::InvalidToken)?;
        let family = refresh_tokens::family_of(&self.db, hash.as_str())
            .await?
            .ok_or(AuthError::InvalidToken)?;
        let session = Uuid::parse_str(&family)
            .map(SessionId)
            .map_err(|_| AuthError::InvalidToken)?;
        if self.sessions.touch(session).await?.is_none() {
            refresh_tokens::revoke_family(&self.db, &family).await?;
            return Err(AuthError::InvalidToken);
        }

        let successor = RefreshToken::generate()?;
        let successor_hash = successor.hash().ok_or(AuthError::InvalidToken)?;
        let expires_at = now_unix() + REFRESH_TOKEN_TTL_SECS;
        let rotation =
            refresh_tokens::rotate(&self.db, hash.as_str(), successor_hash.as_str(), expires_at)
                .await?;
        let user = match rotation {
            Rotation::Rotated { user } => user,
            Rotation::Reused => {
                tracing::info!(session.id = %session, "refresh token reused: family revoked");
                let event = AuditEvent::new("auth.token.reuse", Outcome::Denied)
                    .detail("revoked", "token family and session");
                self.audit.record(event).await;
                self.sessions.revoke(session).await?;
                return Err(AuthError::InvalidToken);
            }
            Rotation::Invalid => return Err(AuthError::InvalidToken),
        };
        let user = users::find_by_id(&self.db, user)
            .await?
            .ok_or(AuthError::InvalidToken)?;
        if user.disabled {
            return Err(AuthError::InvalidToken);
        }
        let event = AuditEvent::new("auth.token.refresh", Outcome::Success)
            .actor(Actor::User(user.id))
            .tenant(user.tenant_id)
            .target(format!("user:{}", user.id));
        self.audit.record(event).await;
        self.issue(&user, session, successor)
    }

    /// Checks an access token and its session, and loads the current user.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::InvalidToken`] when the token is invalid, the
    /// session ended, or the user is gone or disabled.
    pub async fn authenticate(&self, token: &str) -> Result<(AccessClaims, User), AuthError> {
        let claims = self.tokens.verify(token)?;
        let session = self
            .sessions
            .touch(claims.session())
            .await?
            .ok_or(AuthError::InvalidToken)?;
        if session.user != claims.user() {
            return Err(AuthError::InvalidToken);
        }
        let user = users::find_by_id(&self.db, claims.user())
            .await?
            .ok_or(AuthError::InvalidToken)?;
        if user.disabled || user.tenant_id.0 != claims.tid {
            return Err(AuthError::InvalidToken);
        }
        Ok((claims, user))
    }

    /// Returns the user of a live session: the session exists, belongs to
    /// `user`, and the account is neither gone nor disabled. Touches the
    /// session, so chatting keeps a login alive.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError`] when the store or database fails.
    pub async fn live_session_user(
        &self,
        session: SessionId,
        user: UserId,
    ) -> Result<Option<User>, AuthError> {
        let live = self.sessions.touch(session).await?;
        if live.is_none_or(|live| live.user != user) {
            return Ok(None);
        }
        let found = users::find_by_id(&self.db, user).await?;
        Ok(found.filter(|found| !found.disabled))
    }

    /// Returns the session store.
    pub fn sessions(&self) -> &SessionStore {
        &self.sessions
    }

    /// Ends the session of `claims` and revokes its refresh tokens.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError`] when the store or database fails.
    pub async fn logout(&self, claims: &AccessClaims) -> Result<(), AuthError> {
        self.sessions.revoke(claims.session()).await?;
        refresh_tokens::revoke_family(&self.db, &claims.session().to_string()).await?;
        Ok(())
    }

    /// Ends every session of a user and revokes all their refresh tokens.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError`] when the store or database fails.
    pub async fn revoke_user_sessions(&self, user: UserId) -> Result<(), AuthError> {
        self.sessions.revoke_user(user).await?;
        refresh_tokens::revoke_user(&self.db, user).await?;
        Ok(())
    }

    /// Changes a password after checking the current one, then ends every
    /// session of the user, the calling one included.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::InvalidCredentials`] for a wrong current
    /// password and [`AuthError::WeakPassword`] for a new one the policy
    /// rejects.
    pub async fn change_password(
        &self,
        user: &User,
        current: &Password,
        new: &Password,
    ) -> Result<(), AuthError> {
        let verification = self
            .hasher
            .verify(current, Some(&user.password_hash))
            .await?;
        if !verification.matched {
            return Err(AuthError::InvalidCredentials);
        }
        check_policy(new, &user.username)?;
        let hash = self.hasher.hash(new).await?;
        users::set_password_hash(&self.db, user.id, &hash).await?;
        self.revoke_user_sessions(user.id).await?;
        tracing::info!(user.id = %user.id, "password changed: sessions revoked");
        Ok(())
    }
}

/// The audit event of a rejected login. The account, when it exists, is
/// the target; whoever tried is anonymous until a login succeeds.
fn login_failure(user: Option<&User>, reason: &'static str) -> AuditEvent {
    let event = AuditEvent::new("auth.login.failure", Outcome::Failure)
        .actor(Actor::Anonymous)
        .detail("reason", reason);
    match user {
        Some(user) => event
            .tenant(user.tenant_id)
            .target(format!("user:{}", user.id)),
        None => event,
    }
}
