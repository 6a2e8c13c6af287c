//! The public keys of a JSON Web Key Set: fetched from its URL, cached, and
//! fetched again when a token names a key the cache lacks (at most once per
//! refetch interval, so a flood of made-up `kid`s cannot hammer the server)
//! or when the cached set is older than the refresh interval.

use std::{
    collections::BTreeSet,
    fmt,
    str::FromStr,
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse},
};
use reqwest::{Url, header};
use serde::Deserialize;

/// How long one fetch of the set may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest key set read, in bytes; real ones are a few KiB.
const MAX_SET_BYTES: usize = 1024 * 1024;

/// The keys of one JWKS URL, shared by every request.
pub(super) struct Jwks {
    /// Where the set is served.
    url: Url,
    /// The URL without its password, for logs.
    shown: String,
    /// Fetches the set; its timeout is `FETCH_TIMEOUT`.
    client: reqwest::Client,
    /// Least time between two fetches.
    refetch: Duration,
    /// Age after which the set is fetched again on the next token.
    refresh: Duration,
    /// The set last fetched; replaced whole, never changed in place.
    set: RwLock<Arc<KeySet>>,
    /// When the last fetch started. Held across a fetch, so one runs at a
    /// time and requests that need it wait for its result.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

/// The usable keys of a fetched set.
#[derive(Default)]
struct KeySet {
    /// The keys that can verify a signature.
    keys: Vec<Key>,
    /// When they were fetched; `None` before the first fetch that worked.
    fetched: Option<Instant>,
}

/// One public key of the set.
struct Key {
    /// Its `kid`, if it has one.
    kid: Option<String>,
    /// The algorithms it may verify: its `alg`, or those its type allows.
    algorithms: Vec<Algorithm>,
    /// The key itself.
    key: DecodingKey,
}

/// The JSON of a key set; each key is read on its own, so one of a kind
/// agentstream cannot use does not spoil the others.
#[derive(Deserialize)]
struct SetDocument {
    keys: Vec<serde_json::Value>,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &self.shown)
            .field("keys", &self.current().keys)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// A cache of the set at `url`, empty until the first fetch.
    ///
    /// Errors: `url` is not an `http` or `https` URL, or no HTTP client can
    /// be built.
    pub(super) fn new(url: &str, refetch: Duration, refresh: Duration) -> Result<Jwks, String> {
        let url = Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{url} is not an http or https URL"));
        }
        let mut shown = url.clone();
        // Only fails for URLs that cannot have a password, which have none.
        let _ = shown.set_password(None);
        let shown = shown.to_string();
        let client = crate::tls::client_builder()
            .map_err(|e| format!("no TLS settings: {e}"))?
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| format!("no HTTP client: {e}"))?;
        Ok(Jwks {
            url,
            shown,
            client,
            refetch,
            refresh,
            set: RwLock::new(Arc::new(KeySet::default())),
            last_fetch: tokio::sync::Mutex::new(None),
        })
    }

    /// The set's URL, without its password if it has one.
    pub(super) fn url(&self) -> &str {
        &self.shown
    }

    /// Fetches the set now, whatever the refetch interval.
    ///
    /// Errors: why it cannot be fetched or holds no usable key.
    pub(super) async fn fetch_at_start(&self) -> Result<(), String> {
        let mut last = self.last_fetch.lock().await;
        self.fetch_locked(&mut last).await.map(|_| ())
    }

    /// The keys that may verify a token with this `kid` (any key, if it
    /// has none) and algorithm; empty when none does, even after fetching
    /// the set again (as often as the refetch interval allows).
    pub(super) async fn keys_for(&self, kid: Option<&str>, alg: Algorithm) -> Vec<DecodingKey> {
        let mut set = self.current();
        if set.fetched.is_some_and(|at| at.elapsed() > self.refresh) {
            set = self.refetch(&set, false).await;
        }
        if !set.has(kid) {
            tracing::debug!(?kid, "the token names a key the JWKS cache lacks");
            set = self.refetch(&set, true).await;
        }
        set.keys
            .iter()
            .filter(|k| kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
            .filter(|k| k.algorithms.contains(&alg))
            .map(|k| k.key.clone())
            .collect()
    }

    /// The set now cached.
    fn current(&self) -> Arc<KeySet> {
        self.set
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The set after fetching it again, if `seen` is still the cached set
    /// and the last fetch is at least `refetch` ago; else the cached set.
    /// With `wait`, waits for a fetch under way (its result may be what the
    /// caller needs); without, leaves it to that fetch.
    async fn refetch(&self, seen: &Arc<KeySet>, wait: bool) -> Arc<KeySet> {
        let mut last = if wait {
            self.last_fetch.lock().await
        } else {
            match self.last_fetch.try_lock() {
                Ok(last) => last,
                Err(_) => return seen.clone(),
            }
        };
        let current = self.current();
        if !Arc::ptr_eq(&current, seen) || last.is_some_and(|at| at.elapsed() < self.refetch) {
            return current;
        }
        match self.fetch_locked(&mut last).await {
            Ok(set) => set,
            Err(reason) => {
                // The key server's fault, not the client's: worth a warning,
                // at most one per refetch interval.
                tracing::warn!(
                    url = %self.shown,
                    %reason,
                    "cannot fetch the JWKS; keeping the keys cached, and tokens signed \
                     with other keys are refused"
                );
                current
            }
        }
    }

    /// Fetches the set and caches it; `last` is the held fetch lock.
    async fn fetch_locked(&self, last: &mut Option<Instant>) -> Result<Arc<KeySet>, String> {
        *last = Some(Instant::now());
        let keys = self.fetch().await?;
        let set = Arc::new(KeySet {
            keys,
            fetched: Some(Instant::now()),
        });
        let before = std::mem::replace(
            &mut *self.set.write().unwrap_or_else(PoisonError::into_inner),
            set.clone(),
        );
        let kids = |set: &KeySet| -> BTreeSet<Option<String>> {
            set.keys.iter().map(|k| k.kid.clone()).collect()
        };
        if kids(&before) == kids(&set) {
            tracing::debug!(url = %self.shown, keys = set.keys.len(), "fetched the JWKS");
        } else {
            tracing::info!(
                url = %self.shown,
                kids = ?kids(&set),
                "fetched the JWKS: its keys changed"
            );
        }
        Ok(set)
    }

    /// The usable keys the URL serves now.
    #[tracing::instrument(skip_all, fields(url = %self.shown))]
    async fn fetch(&self) -> Result<Vec<Key>, String> {
        let mut response = self
            .client
            .get(self.url.clone())
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("no answer: {}", e.without_url()))?;
        if !response.status().is_success() {
            return Err(format!("it answered HTTP {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("the answer broke off: {}", e.without_url()))?
        {
            if body.len() + chunk.len() > MAX_SET_BYTES {
                return Err(format!("the answer is over {MAX_SET_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let document: SetDocument = serde_json::from_slice(&body)
            .map_err(|e| format!("the answer is not a JSON Web Key Set: {e}"))?;
        let keys: Vec<Key> = document
            .keys
            .into_iter()
            .filter_map(|value| match usable_key(value) {
                Ok(key) => Some(key),
                Err(reason) => {
                    tracing::debug!(%reason, "a key of the JWKS is skipped");
                    None
                }
            })
            .collect();
        if keys.is_empty() {
            return Err(
                "it holds no usable key (RSA, EC P-256 or P-384, or Ed25519 signing keys)"
                    .to_owned(),
            );
        }
        Ok(keys)
    }
}

impl KeySet {
    /// Whether a key could match: one with this `kid`, or any key at all
    /// for a token without one.
    fn has(&self, kid: Option<&str>) -> bool {
        match kid {
            Some(kid) => self.keys.iter().any(|k| k.kid.as_deref() == Some(kid)),
            None => !self.keys.is_empty(),
        }
    }
}

/// A key of the set, if it is a public signing key agentstream can use.
fn usable_key(value: serde_json::Value) -> Result<Key, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("unreadable: {e}"))?;
    let kid = jwk.common.key_id.clone();
    let fail = |reason: &str| format!("key {kid:?}: {reason}");
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_)) => {
            return Err(fail("not a signing key (`use`)"));
        }
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            EllipticCurve::P521 | EllipticCurve::Ed25519 => {
                return Err(fail("an EC curve other than P-256 or P-384"));
            }
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            EllipticCurve::P256 | EllipticCurve::P384 | EllipticCurve::P521 => {
                return Err(fail("an OKP curve other than Ed25519"));
            }
        },
        // A shared secret published in a key set would be no secret.
        AlgorithmParameters::OctetKey(_) => return Err(fail("a symmetric key")),
    };
    // A key that names its algorithm verifies that one only.
    let algorithms = match jwk.common.key_algorithm {
        None => by_type,
        Some(named) => match Algorithm::from_str(&named.to_string()) {
            Ok(alg) if by_type.contains(&alg) => vec![alg],
            _ => return Err(fail(&format!("alg {named} does not fit its key type"))),
        },
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| fail(&e.to_string()))?;
    Ok(Key {
        kid,
        algorithms,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_public_signing_keys_are_used() {
        let ec = json!({"kty": "EC", "crv": "P-256", "kid": "e",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
        let key = usable_key(ec.clone()).unwrap();
        assert_eq!(key.algorithms, [Algorithm::ES256]);
        let mut named = ec.clone();
        named["alg"] = json!("ES256");
        assert!(usable_key(named).is_ok());
        let mut unfitting = ec.clone();
        unfitting["alg"] = json!("RS256");
        assert!(usable_key(unfitting).unwrap_err().contains("does not fit"));
        let mut encryption = ec;
        encryption["use"] = json!("enc");
        assert!(usable_key(encryption).unwrap_err().contains("signing"));
        let secret = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "s"});
        assert!(usable_key(secret).unwrap_err().contains("symmetric"));
        assert!(usable_key(json!({"kty": "nope"})).is_err());
    }

    #[test]
    fn only_http_urls_are_taken() {
        let second = Duration::from_secs(1);
        assert!(Jwks::new("https://id.example/jwks.json", second, second).is_ok());
        assert!(Jwks::new("file:///etc/passwd", second, second).is_err());
        let secret = Jwks::new("https://u:hunter2@id.example/k", second, second).unwrap();
        assert_eq!(secret.url(), "https://u@id.example/k");
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
