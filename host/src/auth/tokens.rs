//! Access tokens: JWTs signed RS256, checked against keys held in memory.
//!
//! The verifier pins the algorithm to RS256, requires `kid`, `iss`, `aud`,
//! `sub`, `exp` and `nbf`, and looks the key up only in the map loaded at
//! start-up. Header fields that point at other key material (`jwk`, `jku`,
//! `x5u`, `x5c`) make a token invalid rather than being followed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{
    AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse, ThumbprintHash,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::{AuthError, Role, SessionId};
use crate::crypto::keyfile::{self, JWT_SIGNING_KEY_FILE};
use crate::storage::{TenantId, UserId, now_unix};

/// Lifetime of an access token. Short, because a revoked session is only
/// noticed by servers that check the session store.
pub const ACCESS_TOKEN_TTL_SECS: i64 = 900;

/// Value of `iss` in every token.
pub const ISSUER: &str = "botserver";

/// Value of `aud` in every token.
pub const AUDIENCE: &str = "botserver-api";

/// Allowed clock difference between nodes when checking `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

/// Maximum accepted token length in bytes. Ours are well under 1 KiB.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Smallest accepted RSA modulus in bytes (2048 bits).
const MIN_MODULUS_BYTES: usize = 256;

/// Claims of an access token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// User id.
    pub sub: Uuid,
    /// Tenant id.
    pub tid: Uuid,
    /// Session id.
    pub sid: Uuid,
    /// Role when the token was issued; handlers read the current one.
    pub role: Role,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Not before, Unix seconds.
    pub nbf: i64,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Token id.
    pub jti: Uuid,
}

impl AccessClaims {
    /// Returns the user id.
    pub fn user(&self) -> UserId {
        UserId(self.sub)
    }

    /// Returns the session id.
    pub fn session(&self) -> SessionId {
        SessionId(self.sid)
    }
}

/// The signing key and the verification keys of access tokens.
///
/// NOTE: `jsonwebtoken::EncodingKey` keeps the private key in a plain
/// `Vec<u8>` that is not zeroized on drop. The key lives as long as the
/// process, and the PEM buffer it was read from is zeroized.
pub struct TokenKeys {
    kid: String,
    signing: EncodingKey,
    verifying: HashMap<String, DecodingKey>,
    jwks: JwkSet,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// Loads the RSA signing key from `path`, or from the data directory,
    /// generating it there when `generate` allows.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::SigningKey`] when the key is missing, unreadable,
    /// not RSA, or shorter than 2048 bits.
    pub fn load(path: Option<&Path>, data_dir: &Path, generate: bool) -> Result<Self, AuthError> {
        let path = path.map_or_else(|| data_dir.join(JWT_SIGNING_KEY_FILE), PathBuf::from);
        let pem = match std::fs::read(&path) {
            Ok(pem) => {
                keyfile::warn_if_shared(&path);
                Zeroizing::new(pem)
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && generate => {
                let pem = generate_pem()?;
                keyfile::write_secret_file(&path, &pem)?;
                pem
            }
            Err(error) => {
                return Err(AuthError::SigningKey(format!(
                    "failed to read `{}`: {error}",
                    path.display()
                )));
            }
        };
        Self::from_pem(&pem).map_err(|error| {
            AuthError::SigningKey(format!("invalid key in `{}`: {error}", path.display()))
        })
    }

    /// Builds the keys from a PEM RSA private key (PKCS#1 or PKCS#8).
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::SigningKey`] for a key that is not RSA or is
    /// shorter than 2048 bits.
    pub fn from_pem(pem: &[u8]) -> Result<Self, AuthError> {
        let signing = EncodingKey::from_rsa_pem(pem)
            .map_err(|error| AuthError::SigningKey(error.to_string()))?;
        let mut jwk = Jwk::from_encoding_key(&signing, Algorithm::RS256)
            .map_err(|error| AuthError::SigningKey(error.to_string()))?;
        let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
            return Err(AuthError::SigningKey("expected an RSA key".to_owned()));
        };
        let modulus = URL_SAFE_NO_PAD
            .decode(&rsa.n)
            .map_err(|error| AuthError::SigningKey(error.to_string()))?;
        if modulus.len() < MIN_MODULUS_BYTES {
            return Err(AuthError::SigningKey(
                "expected an RSA key of at least 2048 bits".to_owned(),
            ));
        }
        let kid = jwk.thumbprint(ThumbprintHash::SHA256);
        jwk.common.key_id = Some(kid.clone());
        jwk.common.key_algorithm = Some(KeyAlgorithm::RS256);
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let decoding = DecodingKey::from_jwk(&jwk)
            .map_err(|error| AuthError::SigningKey(error.to_string()))?;

        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = vec![Algorithm::RS256];
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;

        Ok(Self {
            verifying: HashMap::from([(kid.clone(), decoding)]),
            kid,
            signing,
            jwks: JwkSet { keys: vec![jwk] },
            validation,
        })
    }

    /// Returns the public keys as a JWK set.
    pub fn jwks(&self) -> &JwkSet {
        &self.jwks
    }

    /// Signs an access token for a session. Returns the token and its
    /// lifetime in seconds.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::SigningKey`] when signing fails.
    pub fn issue(
        &self,
        user: UserId,
        tenant: TenantId,
        session: SessionId,
        role: Role,
    ) -> Result<(String, i64), AuthError> {
        let now = now_unix();
        let claims = AccessClaims {
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            sub: user.0,
            tid: tenant.0,
            sid: session.0,
            role,
            iat: now,
            nbf: now,
            exp: now + ACCESS_TOKEN_TTL_SECS,
            jti: Uuid::new_v4(),
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.signing)
            .map_err(|error| AuthError::SigningKey(error.to_string()))?;
        Ok((token, ACCESS_TOKEN_TTL_SECS))
    }

    /// Verifies a token's header, signature and claims.
    ///
    /// # Errors
    ///
    /// Returns [`AuthError::InvalidToken`] for any token that is not one of
    /// ours and current.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::InvalidToken);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::InvalidToken)?;
        let points_elsewhere = header.jwk.is_some()
            || header.jku.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some();
        if header.alg != Algorithm::RS256 || points_elsewhere {
            return Err(AuthError::InvalidToken);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.verifying.get(kid))
            .ok_or(AuthError::InvalidToken)?;
        let data = jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation)
            .map_err(|_| AuthError::InvalidToken)?;
        Ok(data.claims)
    }
}

/// Generates a 2048-bit RSA key as PKCS#8 PEM.
fn generate_pem() -> Result<Zeroizing<Vec<u8>>, AuthError> {
    use aws_lc_rs::encoding::AsDer as _;
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .map_err(|_| AuthError::SigningKey("failed to generate an RSA key".to_owned()))?;
    let der = pair
        .as_der()
        .map_err(|_| AuthError::SigningKey("failed to encode the RSA key".to_owned()))?;
    let body = Zeroizing::new(STANDARD.encode(der.as_ref()));
    let mut pem = Zeroizing::new(b"-----BEGIN PRIVATE KEY-----\n".to_vec());
    for line in body.as_bytes().chunks(64) {
        pem.extend_from_slice(line);
        pem.push(b'\n');
    }
    pem.extend_from_slice(b"-----END PRIVATE KEY-----\n");
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_token_verifies_and_carries_claims() {
        let keys = TokenKeys::from_pem(&generate_pem().unwrap()).unwrap();
        let user = UserId(Uuid::new_v4());
        let tenant = TenantId(Uuid::new_v4());
        let session = SessionId(Uuid::new_v4());
        let (token, ttl) = keys.issue(user, tenant, session, Role::User).unwrap();
        assert!(ttl <= 900);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.kid.as_deref(), Some(keys.kid.as_str()));
        let claims = keys.verify(&token).unwrap();
        assert_eq!(claims.sub, user.0);
        assert_eq!(claims.iss, ISSUER);
        assert_eq!(claims.aud, AUDIENCE);
        assert!(claims.exp - claims.iat <= 900);
    }

    #[test]
    fn token_from_another_key_is_rejected() {
        let ours = TokenKeys::from_pem(&generate_pem().unwrap()).unwrap();
        let theirs = TokenKeys::from_pem(&generate_pem().unwrap()).unwrap();
        let ids = (
            UserId(Uuid::new_v4()),
            TenantId(Uuid::new_v4()),
            SessionId(Uuid::new_v4()),
        );
        let (token, _) = theirs.issue(ids.0, ids.1, ids.2, Role::User).unwrap();
        assert!(ours.verify(&token).is_err());
    }
}
