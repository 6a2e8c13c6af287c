//! Sign-in with bearer JWTs: an HS256 secret; a JWKS served on a loopback
//! port (RS256, ES256, a key rotation picked up without a restart); every
//! way a token is refused, each a 401 `invalid token` with no WARN or ERROR
//! line; API keys alongside.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::{
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents},
};
use serde_json::{Value, json};

use crate::{both, helpers::*};

const ISSUER: &str = "https://id.test/";
const AUDIENCE: &str = "agentstream-test";

/// The variable holding the HS256 secret, and its value. A test cannot set
/// a variable for the server it runs in-process (`std::env::set_var` is
/// unsafe in edition 2024, and the workspace forbids unsafe code), so it
/// names one cargo sets for every test binary it runs, with the same value
/// it had at compile time.
const SECRET_ENV: &str = "CARGO_PKG_DESCRIPTION";
const SECRET: &str = env!("CARGO_PKG_DESCRIPTION");

/// The RSA key: a TEST-ONLY key committed as a fixture (ring cannot make
/// RSA keys); it protects nothing.
const RSA_PEM: &str = include_str!("../fixtures/jwt-rs256-test-key.pem");

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

/// Claims every check accepts, for `sub`.
fn claims(sub: &str) -> Value {
    json!({
        "sub": sub,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now(),
        "exp": now() + 3600,
        "tenant": "acme",
    })
}

/// `claims(sub)` with `changes` laid over it (a null removes the claim).
fn claims_with(sub: &str, changes: Value) -> Value {
    let mut claims = claims(sub);
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

/// An unsigned token, as an attacker would write it by hand.
fn unsigned(kid: Option<&str>, claims: &Value) -> String {
    let header = match kid {
        Some(kid) => json!({"alg": "none", "typ": "JWT", "kid": kid}),
        None => json!({"alg": "none", "typ": "JWT"}),
    };
    format!("{}.{}.", b64(header.to_string()), b64(claims.to_string()))
}

/// `token` with its payload swapped for `claims`, its signature kept.
fn tampered(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", parts[0], b64(claims.to_string()), parts[2])
}

/// A signing key and its public JWK.
struct TestKey {
    signing: EncodingKey,
    jwk: Value,
}

/// The RSA test key, published with `alg: RS256`.
fn rsa_key(kid: &str) -> TestKey {
    let body: String = RSA_PEM
        .lines()
        .skip_while(|line| !line.starts_with("-----BEGIN RSA PRIVATE KEY"))
        .skip(1)
        .take_while(|line| !line.starts_with("-----END"))
        .collect();
    let der = STANDARD.decode(body).unwrap();
    let pair = RsaKeyPair::from_der(&der).unwrap();
    let public = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
    TestKey {
        signing: EncodingKey::from_rsa_der(&der),
        jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": b64(&public.n), "e": b64(&public.e)}),
    }
}

/// A new P-256 key, published without `alg` (its curve says ES256).
fn ec_key(kid: &str) -> TestKey {
    let rng = SystemRandom::new();
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    // An uncompressed point: 0x04, then x and y, 32 bytes each.
    let point = pair.public_key().as_ref();
    TestKey {
        signing: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65])}),
    }
}

/// A JWKS served on a loopback port, whose keys the test changes.
struct JwksServer {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    hits: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    _server: LoopbackServer,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> JwksServer {
        let keys = Arc::new(Mutex::new(keys));
        let hits = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let (served, counted, fails) = (keys.clone(), hits.clone(), failing.clone());
        let router = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let answer = if fails.load(Ordering::SeqCst) {
                    Err(axum::http::StatusCode::SERVICE_UNAVAILABLE)
                } else {
                    Ok(axum::Json(json!({ "keys": *served.lock().unwrap() })))
                };
                async move { answer }
            }),
        );
        let server = LoopbackServer::start(router).await;
        JwksServer {
            url: format!("http://{}/jwks.json", server.addr),
            keys,
            hits,
            failing,
            _server: server,
        }
    }

    fn publish(&self, jwk: &Value) {
        self.keys.lock().unwrap().push(jwk.clone());
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn hs256_file() -> String {
    format!(
        "[auth.jwt]\nsecret_env = \"{SECRET_ENV}\"\nissuer = \"{ISSUER}\"\n\
         audience = \"{AUDIENCE}\"\n"
    )
}

fn jwks_file(url: &str, refetch_ms: u64) -> String {
    format!(
        "[auth.jwt]\njwks_url = \"{url}\"\nissuer = [\"https://other.test/\", \"{ISSUER}\"]\n\
         audience = [\"{AUDIENCE}\"]\njwks_refetch_ms = {refetch_ms}\n"
    )
}

async fn get_with(app: &TestApp, token: &str, path: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// The caller's conversations: 200 and their IDs.
async fn conversations_of(app: &TestApp, token: &str) -> Vec<String> {
    let response = get_with(app, token, "/v1/conversations").await;
    let (status, body) = status_and_body(response).await;
    assert_eq!(status, 200, "{body}");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn create_with(app: &TestApp, token: &str) -> String {
    let response = app
        .client
        .post(app.url("/v1/conversations"))
        .bearer_auth(token)
        .json(&json!({ "kind": "chat" }))
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_body(response).await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// 401, `invalid token` and nothing else, the RFC 6750 challenge.
async fn assert_refused(app: &TestApp, token: &str, what: &str) {
    let response = get_with(app, token, "/v1/conversations").await;
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\"",
        "{what}"
    );
    let (status, body) = status_and_body(response).await;
    assert_eq!(status, 401, "{what}: {body}");
    assert_eq!(
        body,
        json!({"error": {"code": "unauthorized", "message": "invalid token"}}),
        "{what}"
    );
}

/// HS256: a token's subject is a user, created on first sight, whose
/// conversations are its own; claims reach the caller; API keys work
/// alongside; every bad token is refused alike.
async fn hs256_subjects_are_users(backend: Backend) {
    assert_eq!(
        std::env::var(SECRET_ENV).as_deref(),
        Ok(SECRET),
        "cargo sets {SECRET_ENV} for the tests it runs"
    );
    let (app, _dir) = spawn_app_with_file(backend, &hs256_file(), |_| {}).await;
    let store = app.state.store();

    // With JWTs on, no header is never the local user, even with no key.
    let (status, body) = status_and_body(
        app.client
            .get(app.url("/v1/conversations"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");

    let ada = hs256(&claims("ada"));
    let grace = hs256(&claims("grace"));
    assert!(store.user_named("ada").await.unwrap().is_none());
    let mine = create_with(&app, &ada).await;
    let created = store.user_named("ada").await.unwrap().unwrap();
    assert_eq!(conversations_of(&app, &ada).await, [mine.as_str()]);
    assert!(conversations_of(&app, &grace).await.is_empty());
    let hers = create_with(&app, &grace).await;
    assert_eq!(conversations_of(&app, &grace).await, [hers.as_str()]);
    assert_eq!(conversations_of(&app, &ada).await, [mine.as_str()]);
    assert_eq!(
        store.user_named("ada").await.unwrap().unwrap().id,
        created.id
    );
    // A token expired within the leeway (60 s) still works.
    let late = hs256(&claims_with("ada", json!({"exp": now() - 30})));
    assert_eq!(conversations_of(&app, &late).await, [mine.as_str()]);

    // The caller carries the verified claims; API keys carry none.
    let (parts, ()) = axum::http::Request::builder()
        .header("authorization", format!("Bearer {ada}"))
        .body(())
        .unwrap()
        .into_parts();
    let caller = app.state.auth().authenticate(&parts, store).await.unwrap();
    assert_eq!(caller.user.id, created.id);
    let verified = caller.claims.unwrap();
    assert_eq!(verified["tenant"], "acme");
    assert_eq!(verified["sub"], "ada");

    // API keys keep working; they share the names: a key for "ada" is ada.
    let key = store.create_api_key("ada").await.unwrap().key;
    assert_eq!(conversations_of(&app, &key).await, [mine.as_str()]);
    let (parts, ()) = axum::http::Request::builder()
        .header("authorization", format!("Bearer {key}"))
        .body(())
        .unwrap()
        .into_parts();
    let caller = app.state.auth().authenticate(&parts, store).await.unwrap();
    assert!(caller.claims.is_none());

    let wrong_secret = EncodingKey::from_secret(b"another secret of at least 32 bytes!");
    let rsa = rsa_key("rsa-1");
    let refused = [
        (
            hs256(&claims_with("ada", json!({"exp": now() - 3600}))),
            "expired",
        ),
        (hs256(&claims_with("ada", json!({"exp": null}))), "no exp"),
        (
            hs256(&claims_with("ada", json!({"nbf": now() + 3600}))),
            "nbf in the future",
        ),
        (
            hs256(&claims_with("ada", json!({"aud": "someone-else"}))),
            "wrong audience",
        ),
        (hs256(&claims_with("ada", json!({"aud": null}))), "no aud"),
        (
            hs256(&claims_with("ada", json!({"iss": "https://evil.test/"}))),
            "wrong issuer",
        ),
        (hs256(&claims_with("ada", json!({"iss": null}))), "no iss"),
        (hs256(&claims_with("ada", json!({"sub": null}))), "no sub"),
        (hs256(&claims_with("ada", json!({"sub": ""}))), "empty sub"),
        (
            sign(Algorithm::HS256, None, &claims("ada"), &wrong_secret),
            "wrong secret",
        ),
        (tampered(&ada, &claims("mallory")), "tampered payload"),
        (unsigned(None, &claims("ada")), "alg none"),
        (
            sign(
                Algorithm::HS512,
                None,
                &claims("ada"),
                &EncodingKey::from_secret(SECRET.as_bytes()),
            ),
            "HS512, not allowed",
        ),
        (
            sign(Algorithm::RS256, None, &claims("ada"), &rsa.signing),
            "RS256 with a secret",
        ),
        ("aaaa.bbbb.cccc".to_owned(), "garbage shaped like a JWT"),
        ("hello".to_owned(), "garbage"),
        (format!("ask_{}", "0".repeat(64)), "an unknown API key"),
    ];
    for (token, what) in &refused {
        assert_refused(&app, token, what).await;
    }
    // A refused token creates no user.
    assert!(store.user_named("mallory").await.unwrap().is_none());
    app.stop().await;
}
both!(hs256_subjects_are_users);

/// A JWKS: RS256 and ES256 tokens accepted; a key published after start-up
/// (a rotation) accepted without a restart; algorithm confusion, `alg:
/// none`, a key of the wrong type and a wrong signature refused.
async fn jwks_keys_and_rotation(backend: Backend) {
    let rsa = rsa_key("rsa-1");
    let ec = ec_key("ec-2");
    let jwks = JwksServer::start(vec![rsa.jwk.clone()]).await;
    let (app, _dir) = spawn_app_with_file(backend, &jwks_file(&jwks.url, 0), |_| {}).await;
    assert_eq!(jwks.hits(), 1, "fetched once at start-up");

    let rs256 = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &claims("ada"),
        &rsa.signing,
    );
    let mine = create_with(&app, &rs256).await;
    assert_eq!(conversations_of(&app, &rs256).await, [mine.as_str()]);
    let no_kid = sign(Algorithm::RS256, None, &claims("ada"), &rsa.signing);
    assert_eq!(conversations_of(&app, &no_kid).await, [mine.as_str()]);

    // The key server starts serving a new key: a token naming it fetches
    // the set again, and is accepted.
    let es256 = sign(Algorithm::ES256, Some("ec-2"), &claims("ada"), &ec.signing);
    assert_refused(&app, &es256, "a kid not published yet").await;
    jwks.publish(&ec.jwk);
    assert_eq!(conversations_of(&app, &es256).await, [mine.as_str()]);
    let grace = sign(
        Algorithm::ES256,
        Some("ec-2"),
        &claims("grace"),
        &ec.signing,
    );
    assert!(conversations_of(&app, &grace).await.is_empty());
    let hits = jwks.hits();
    assert_eq!(conversations_of(&app, &rs256).await, [mine.as_str()]);
    assert_eq!(jwks.hits(), hits, "known kids are served from the cache");

    let public_as_secret = EncodingKey::from_secret(rsa.jwk.to_string().as_bytes());
    let refused = [
        (
            sign(
                Algorithm::HS256,
                Some("rsa-1"),
                &claims("ada"),
                &public_as_secret,
            ),
            "HS256 signed with the public key (algorithm confusion)",
        ),
        (unsigned(Some("rsa-1"), &claims("ada")), "alg none"),
        (
            sign(Algorithm::ES256, Some("rsa-1"), &claims("ada"), &ec.signing),
            "ES256 naming the RSA key",
        ),
        (
            sign(Algorithm::RS256, Some("ec-2"), &claims("ada"), &rsa.signing),
            "RS256 naming the EC key",
        ),
        (
            sign(
                Algorithm::ES256,
                Some("ec-2"),
                &claims("ada"),
                &ec_key("x").signing,
            ),
            "signed by a key not in the set",
        ),
        (tampered(&rs256, &claims("grace")), "tampered payload"),
        (
            sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &claims_with("ada", json!({"exp": now() - 3600})),
                &rsa.signing,
            ),
            "expired",
        ),
        (
            sign(
                Algorithm::ES256,
                Some("ec-2"),
                &claims_with("ada", json!({"aud": "other"})),
                &ec.signing,
            ),
            "wrong audience",
        ),
        (
            sign(
                Algorithm::RS384,
                Some("rsa-1"),
                &claims("ada"),
                &rsa.signing,
            ),
            "RS384, not allowed",
        ),
    ];
    for (token, what) in &refused {
        assert_refused(&app, token, what).await;
    }
    app.stop().await;
}
both!(jwks_keys_and_rotation);

/// Made-up `kid`s fetch the set at most once per `jwks_refetch_ms`; known
/// ones keep working. (No database is involved past start-up: SQLite only.)
#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_the_jwks_at_most_once_per_interval() {
    let rsa = rsa_key("rsa-1");
    let jwks = JwksServer::start(vec![rsa.jwk.clone()]).await;
    let (app, _dir) =
        spawn_app_with_file(Backend::Sqlite, &jwks_file(&jwks.url, 600_000), |_| {}).await;
    assert_eq!(jwks.hits(), 1);
    for n in 0..50 {
        let kid = format!("bogus-{n}");
        let token = sign(Algorithm::RS256, Some(&kid), &claims("ada"), &rsa.signing);
        assert_refused(&app, &token, &kid).await;
    }
    assert_eq!(
        jwks.hits(),
        1,
        "start-up's fetch was less than 10 minutes ago"
    );
    let good = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &claims("ada"),
        &rsa.signing,
    );
    assert!(conversations_of(&app, &good).await.is_empty());
    app.stop().await;
}

/// A JWKS that cannot be fetched at start-up is a warning, not a failure;
/// tokens work once it answers, without a restart.
#[tokio::test]
async fn an_unreachable_jwks_at_start_up_is_a_warning() {
    let rsa = rsa_key("rsa-1");
    let jwks = JwksServer::start(vec![rsa.jwk.clone()]).await;
    jwks.failing.store(true, Ordering::SeqCst);
    let (mut app, _dir) =
        spawn_app_with_file(Backend::Sqlite, &jwks_file(&jwks.url, 0), |_| {}).await;
    assert_eq!(app.logs_matching("the JWKS cannot be fetched now").len(), 1);
    app.accept_logs_so_far();
    let token = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &claims("ada"),
        &rsa.signing,
    );
    jwks.failing.store(false, Ordering::SeqCst);
    assert!(conversations_of(&app, &token).await.is_empty());
    app.stop().await;
}

/// Settings that cannot work stop start-up with a message naming the key.
#[tokio::test]
async fn bad_jwt_settings_stop_start_up() {
    let cases = [
        (
            "[auth.jwt]\nsecret_env = \"AGENTSTREAM_TEST_SURELY_UNSET_JWT_SECRET\"\nissuer = \"i\"\n",
            "secret_env: the environment variable AGENTSTREAM_TEST_SURELY_UNSET_JWT_SECRET is not set",
        ),
        (
            &format!("[auth.jwt]\nsecret_env = \"{SECRET_ENV}\"\n"),
            "needs `issuer`",
        ),
        (
            &format!(
                "[auth.jwt]\nsecret_env = \"{SECRET_ENV}\"\njwks_url = \"http://127.0.0.1:9/\"\nissuer = \"i\"\n"
            ),
            "both `secret_env` and `jwks_url`",
        ),
    ];
    for (file, expected) in cases {
        let db = TestDb::new(Backend::Sqlite).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentstream.toml");
        std::fs::write(&path, file).unwrap();
        let mut config = test_config(&db);
        config.config_file = Some(path);
        let error = match agentstream::App::build(config).await {
            Ok(_) => panic!("started with {file}"),
            Err(error) => format!("{error:#}"),
        };
        assert!(
            error.contains("[auth.jwt]") && error.contains(expected),
            "{error}"
        );
    }
}
