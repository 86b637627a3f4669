//! Forged and malformed access tokens: every one is 401.

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::{
    KeyPair as _, RSA_PKCS1_SHA256, RSA_PKCS1_SHA384, RsaEncoding, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::api::jwt_claims;
use crate::both_backends;
use crate::harness::{Backend, TestServer};

both_backends!(forged_tokens_are_401, kid_injection_is_401);

fn b64(value: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(value)
}

/// Reads the server's RSA private key from its data directory.
fn server_key(server: &TestServer) -> RsaKeyPair {
    let pem =
        std::fs::read_to_string(server.data_dir.path().join("data/jwt-signing-key.pem")).unwrap();
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    RsaKeyPair::from_pkcs8(&STANDARD.decode(body).unwrap()).unwrap()
}

fn sign_rsa(
    key: &RsaKeyPair,
    encoding: &'static dyn RsaEncoding,
    header: &Value,
    claims: &Value,
) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let mut signature = vec![0u8; key.public_modulus_len()];
    key.sign(encoding, &rng, input.as_bytes(), &mut signature)
        .unwrap();
    format!("{input}.{}", b64(&signature))
}

fn sign_hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn public_key_pem(key: &RsaKeyPair) -> String {
    let der = key.public_key().as_der().unwrap();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(der.as_ref())
    )
}

async fn status_of(server: &TestServer, token: &str) -> StatusCode {
    server
        .call(Method::GET, "/api/v1/me", Some(token), None)
        .await
        .status()
}

async fn forged_tokens_are_401(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, root) = server.bootstrap().await;
    let key = server_key(&server);
    let kid = jsonwebtoken::decode_header(&root).unwrap().kid.unwrap();
    let good_claims = jwt_claims(&root);
    let rs256 = json!({"alg": "RS256", "typ": "JWT", "kid": kid});

    // The harness signs like the server: a correct token is accepted.
    let control = sign_rsa(&key, &RSA_PKCS1_SHA256, &rs256, &good_claims);
    assert_eq!(
        status_of(&server, &control).await,
        StatusCode::OK,
        "control token must pass"
    );

    let now = botserver::storage::now_unix();
    let with = |field: &str, value: Value| {
        let mut claims = good_claims.clone();
        claims[field] = value;
        claims
    };
    let without = |field: &str| {
        let mut claims = good_claims.clone();
        claims.as_object_mut().unwrap().remove(field);
        claims
    };

    let mut cases: Vec<(&str, String)> = Vec::new();
    for alg in ["none", "None", "NONE", "nOnE"] {
        cases.push((
            "alg none",
            unsigned(&json!({"alg": alg, "kid": kid}), &good_claims),
        ));
    }
    let public_pem = public_key_pem(&key);
    let hs256 = json!({"alg": "HS256", "typ": "JWT", "kid": kid});
    cases.push((
        "HS256 keyed with the public key PEM",
        sign_hs256(public_pem.as_bytes(), &hs256, &good_claims),
    ));
    cases.push((
        "HS256 keyed with the public key DER",
        sign_hs256(key.public_key().as_ref(), &hs256, &good_claims),
    ));
    cases.push((
        "RS384",
        sign_rsa(
            &key,
            &RSA_PKCS1_SHA384,
            &json!({"alg": "RS384", "kid": kid}),
            &good_claims,
        ),
    ));
    cases.push((
        "missing kid",
        sign_rsa(
            &key,
            &RSA_PKCS1_SHA256,
            &json!({"alg": "RS256"}),
            &good_claims,
        ),
    ));
    cases.push((
        "unknown kid",
        sign_rsa(
            &key,
            &RSA_PKCS1_SHA256,
            &json!({"alg": "RS256", "kid": "retired-key"}),
            &good_claims,
        ),
    ));
    let sign = |claims: &Value| sign_rsa(&key, &RSA_PKCS1_SHA256, &rs256, claims);
    cases.push(("expired", sign(&with("exp", json!(now - 3600)))));
    cases.push(("exp as a string", sign(&with("exp", json!("never")))));
    cases.push((
        "exp as a past float",
        sign(&with("exp", json!((now - 3600) as f64 + 0.5))),
    ));
    cases.push(("exp missing", sign(&without("exp"))));
    cases.push(("not yet valid", sign(&with("nbf", json!(now + 3600)))));
    cases.push(("nbf as a string", sign(&with("nbf", json!("9999999999")))));
    cases.push(("nbf missing", sign(&without("nbf"))));
    cases.push(("wrong audience", sign(&with("aud", json!("someone-else")))));
    cases.push(("audience missing", sign(&without("aud"))));
    cases.push((
        "wrong issuer",
        sign(&with("iss", json!("https://evil.test"))),
    ));
    cases.push(("issuer missing", sign(&without("iss"))));
    cases.push(("subject missing", sign(&without("sub"))));
    cases.push((
        "unknown session",
        sign(&with("sid", json!(uuid::Uuid::new_v4().to_string()))),
    ));
    cases.push((
        "other user's session",
        sign(&with("sub", json!(uuid::Uuid::new_v4().to_string()))),
    ));
    let mut tampered = root.clone();
    tampered.pop();
    tampered.push(if root.ends_with('A') { 'B' } else { 'A' });
    cases.push(("tampered signature", tampered));
    cases.push(("garbage", "not.a.jwt".to_owned()));
    cases.push(("empty", String::new()));

    for (name, token) in &cases {
        assert_eq!(
            status_of(&server, token).await,
            StatusCode::UNAUTHORIZED,
            "{name}"
        );
    }
}

async fn kid_injection_is_401(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, root) = server.bootstrap().await;
    let key = server_key(&server);
    let kid = jsonwebtoken::decode_header(&root).unwrap().kid.unwrap();
    let claims = jwt_claims(&root);

    // A key the attacker controls, offered in the header in several ways.
    let attacker_der = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .unwrap()
        .as_der()
        .unwrap();
    let attacker = RsaKeyPair::from_pkcs8(attacker_der.as_ref()).unwrap();
    let attacker_pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(attacker_der.as_ref())
    );
    let attacker_encoding =
        jsonwebtoken::EncodingKey::from_rsa_pem(attacker_pem.as_bytes()).unwrap();
    let mut attacker_jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(
        &attacker_encoding,
        jsonwebtoken::Algorithm::RS256,
    )
    .unwrap();
    attacker_jwk.common.key_id = Some(kid.clone());
    let attacker_jwk = serde_json::to_value(&attacker_jwk).unwrap();
    let headers = [
        json!({"alg": "RS256", "kid": "../../../../dev/null"}),
        json!({"alg": "RS256", "kid": "' OR '1'='1"}),
        json!({"alg": "RS256", "kid": "k".repeat(5000)}),
        json!({"alg": "RS256", "kid": kid, "jwk": attacker_jwk}),
        json!({"alg": "RS256", "kid": kid, "jku": "https://evil.test/jwks"}),
        json!({"alg": "RS256", "kid": kid, "x5u": "https://evil.test/cert"}),
    ];
    for header in &headers {
        let token = sign_rsa(&attacker, &RSA_PKCS1_SHA256, header, &claims);
        assert_eq!(
            status_of(&server, &token).await,
            StatusCode::UNAUTHORIZED,
            "attacker-signed {header}"
        );
    }
    // Even signed with the server's own key, a header that points at other
    // key material is rejected instead of followed.
    for header in &headers[3..] {
        let token = sign_rsa(&key, &RSA_PKCS1_SHA256, header, &claims);
        assert_eq!(
            status_of(&server, &token).await,
            StatusCode::UNAUTHORIZED,
            "server-signed {header}"
        );
    }
}

/// `jsonwebtoken` before 10.3.0 skipped `exp` and `nbf` checks when the
/// claim had the wrong JSON type (GHSA-h395-gr6q-cpjc).
#[test]
fn jsonwebtoken_is_at_least_10_3() {
    let lock =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap();
    let mut lines = lock.lines();
    let mut versions = Vec::new();
    while let Some(line) = lines.next() {
        if line == "name = \"jsonwebtoken\"" {
            let version = lines
                .next()
                .unwrap()
                .trim_start_matches("version = ")
                .trim_matches('"');
            let parts: Vec<u32> = version
                .split('.')
                .map(|part| part.parse().unwrap())
                .collect();
            versions.push((parts[0], parts[1]));
        }
    }
    assert!(!versions.is_empty(), "jsonwebtoken not in Cargo.lock");
    for version in versions {
        assert!(
            version >= (10, 3),
            "jsonwebtoken {version:?} is older than 10.3"
        );
    }
}
