//! `/api/v1/tenants/{tenant}/secrets/{name}`: write-only secrets for
//! plugins, for tenant admins. No route returns a value.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::put;
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use crate::capabilities::secrets::{SecretValue, validate_secret_name};
use crate::storage::secrets;

/// Maximum length of a secret value, in bytes. Secrets are keys and tokens, not files.
const MAX_SECRET_BYTES: usize = 16 * 1024;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/tenants/{tenant}/secrets/{name}", put(store))
}

/// The body of a secret write. `Debug` leaves the value out.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretBody {
    value: String,
}

impl std::fmt::Debug for SecretBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBody(<redacted>)")
    }
}

async fn store(
    State(state): State<AppState>,
    caller: Caller,
    Path((tenant, name)): Path<(String, String)>,
    ApiJson(body): ApiJson<SecretBody>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.administered_tenant(&state, &tenant).await?;
    let name =
        validate_secret_name(&name).map_err(|error| ApiError::bad_request(error.to_string()))?;
    if body.value.len() > MAX_SECRET_BYTES {
        return Err(ApiError::bad_request(format!(
            "secret value too long: expected at most {MAX_SECRET_BYTES} bytes"
        )));
    }
    let value = SecretValue::new(body.value);
    secrets::put(&state.db, &state.vault, tenant.id, &name, &value).await?;
    tracing::info!(tenant.id = %tenant.id, secret.name = %name, "secret stored");
    Ok(StatusCode::NO_CONTENT)
}
