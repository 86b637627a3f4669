//! Request extractors: JSON bodies with problem-details rejections, and the
//! authenticated caller with its tenant checks.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use super::ratelimit::RequestOrigin;
use crate::audit;
use crate::auth::{AccessClaims, AuthError, Role};
use crate::storage::{Tenant, User, tenants};

/// A JSON body whose rejections render as problem details.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::Request(rejection.status(), rejection.body_text())),
        }
    }
}

/// The caller of a route, authenticated by a bearer access token whose
/// session is live. A user whom the server's policy requires to have a
/// second factor is rejected until they enrol one.
#[derive(Debug)]
pub struct Caller {
    /// Claims of the access token.
    pub claims: AccessClaims,
    /// The user as stored now; its role, not the token's, is checked.
    pub user: User,
    /// Whether the connection may carry admin actions: false only when
    /// `BOTSERVER_TLS_CLIENT_CA` is set and the client sent no certificate.
    operator_access: bool,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let EnrolmentCaller(caller) = EnrolmentCaller::from_request_parts(parts, state).await?;
        if state.auth.mfa().must_enrol(&caller.user).await? {
            return Err(ApiError::MfaEnrolmentRequired);
        }
        Ok(caller)
    }
}

/// The caller of a route that stays open to users who must still enrol a
/// second factor: the enrolment routes and logout. Every other route takes
/// [`Caller`].
#[derive(Debug)]
pub struct EnrolmentCaller(pub Caller);

impl FromRequestParts<AppState> for EnrolmentCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers).ok_or(ApiError::Unauthenticated)?;
        let authenticated = state.auth.authenticate(token).await;
        if matches!(authenticated, Err(AuthError::InvalidToken)) {
            audit::request::note_token_rejected();
        }
        let (claims, user) = authenticated?;
        audit::request::note_caller(user.id, user.tenant_id);
        let span = tracing::Span::current();
        span.record("user.id", tracing::field::display(user.id));
        span.record("tenant.id", tracing::field::display(user.tenant_id));
        let origin = parts
            .extensions
            .get::<RequestOrigin>()
            .copied()
            .unwrap_or_default();
        state
            .limiter
            .check_user(origin.class, user.id, origin.client)
            .await
            .into_result()?;
        let operator_access =
            super::operator::has_operator_access(&state.config, &parts.extensions);
        Ok(Self(Caller {
            claims,
            user,
            operator_access,
        }))
    }
}

/// Returns the token of an `Authorization: Bearer` header.
pub(super) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        })
}

impl Caller {
    /// Returns whether the caller manages every tenant.
    pub fn is_platform_admin(&self) -> bool {
        self.user.role == Role::PlatformAdmin
    }

    /// Resolves a tenant id or name from a path. Another tenant's tenant is
    /// `NotFound`, as is an unknown one, unless the caller is a platform
    /// admin.
    ///
    /// # Errors
    ///
    /// Returns [`ApiError::NotFound`] or a storage failure.
    pub async fn visible_tenant(&self, state: &AppState, key: &str) -> Result<Tenant, ApiError> {
        let tenant = tenants::find(&state.db, key)
            .await?
            .ok_or(ApiError::NotFound)?;
        if self.is_platform_admin() || tenant.id == self.user.tenant_id {
            audit::request::note_tenant(tenant.id);
            Ok(tenant)
        } else {
            audit::request::note_denied("another tenant");
            Err(ApiError::NotFound)
        }
    }

    /// Resolves a tenant the caller administers: visible, and the caller
    /// is a platform admin or that tenant's admin.
    ///
    /// # Errors
    ///
    /// Returns [`ApiError::NotFound`] for other tenants and
    /// [`ApiError::Forbidden`] for non-admins of the caller's own tenant.
    pub async fn administered_tenant(
        &self,
        state: &AppState,
        key: &str,
    ) -> Result<Tenant, ApiError> {
        let tenant = self.visible_tenant(state, key).await?;
        if self.user.role.is_admin() {
            self.require_operator_access()?;
            Ok(tenant)
        } else {
            audit::request::note_denied("requires the tenant_admin or platform_admin role");
            Err(ApiError::Forbidden(
                "requires the tenant_admin or platform_admin role",
            ))
        }
    }

    /// Fails unless the caller is a platform admin.
    ///
    /// # Errors
    ///
    /// Returns [`ApiError::Forbidden`].
    pub fn require_platform_admin(&self) -> Result<(), ApiError> {
        if self.is_platform_admin() {
            self.require_operator_access()
        } else {
            audit::request::note_denied("requires the platform_admin role");
            Err(ApiError::Forbidden("requires the platform_admin role"))
        }
    }

    /// Fails unless the caller is a tenant admin or platform admin, for
    /// admin routes that are not bound to one tenant.
    ///
    /// # Errors
    ///
    /// Returns [`ApiError::Forbidden`].
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.user.role.is_admin() {
            self.require_operator_access()
        } else {
            audit::request::note_denied("requires the tenant_admin or platform_admin role");
            Err(ApiError::Forbidden(
                "requires the tenant_admin or platform_admin role",
            ))
        }
    }

    /// Fails when an admin action arrives without the client certificate
    /// that `BOTSERVER_TLS_CLIENT_CA` requires of operator requests.
    fn require_operator_access(&self) -> Result<(), ApiError> {
        if self.operator_access {
            Ok(())
        } else {
            audit::request::note_denied(super::operator::CERTIFICATE_REQUIRED);
            Err(ApiError::Forbidden(super::operator::CERTIFICATE_REQUIRED))
        }
    }
}
