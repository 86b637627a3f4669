//! Request extractors: JSON bodies with problem-details rejections, and the
//! authenticated caller with its tenant checks.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use crate::auth::{AccessClaims, Role};
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
/// session is live.
#[derive(Debug)]
pub struct Caller {
    /// Claims of the access token.
    pub claims: AccessClaims,
    /// The user as stored now; its role, not the token's, is checked.
    pub user: User,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(token.trim())
            })
            .ok_or(ApiError::Unauthenticated)?;
        let (claims, user) = state.auth.authenticate(token).await?;
        Ok(Self { claims, user })
    }
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
            Ok(tenant)
        } else {
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
            Ok(tenant)
        } else {
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
            Ok(())
        } else {
            Err(ApiError::Forbidden("requires the platform_admin role"))
        }
    }
}
