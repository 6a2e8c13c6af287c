//! Bearer JWTs: the `[auth.jwt]` settings and the verifier they build, which
//! checks a token's algorithm, signature, `exp`, `nbf`, `iss` and `aud`, and
//! reads its subject.

use std::{fmt, str::FromStr, time::Duration};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::jwks::Jwks;

/// `[auth]` in the config file: how callers sign in besides API keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `[auth.jwt]`: accept bearer JWTs; absent, only API keys (and the
    /// local user) are accepted.
    pub jwt: Option<JwtConfig>,
}

/// One string or a list of strings (`issuer`, `audience`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// `"a"`.
    One(String),
    /// `["a", "b"]`.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The strings, one or many.
    fn as_slice(&self) -> &[String] {
        match self {
            OneOrMany::One(one) => std::slice::from_ref(one),
            OneOrMany::Many(many) => many,
        }
    }
}

/// `[auth.jwt]`: where the keys come from and what a token must say.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The name of an environment variable holding the HMAC secret (its
    /// UTF-8 bytes, at least 32). Exactly one of this and `jwks_url`.
    pub secret_env: Option<String>,
    /// An `http(s)` URL serving a JSON Web Key Set (RSA, EC P-256/P-384 or
    /// Ed25519 public keys). Exactly one of this and `secret_env`.
    pub jwks_url: Option<String>,
    /// Required: the `iss` a token must carry (one of these, if a list).
    pub issuer: Option<OneOrMany>,
    /// The `aud` a token must carry (one of these, if a list). Unset, a
    /// token carrying any `aud` is refused: it was meant for someone else.
    pub audience: Option<OneOrMany>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (at most 600).
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// The algorithms accepted; default `["HS256"]` with a secret,
    /// `["RS256", "ES256"]` with a JWKS. `none` is never accepted.
    pub algorithms: Option<Vec<String>>,
    /// The claim naming the user (a string or an integer).
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Least time between two fetches of the JWKS, in milliseconds: a token
    /// naming an unknown `kid` fetches it again, at most this often.
    #[serde(default = "default_jwks_refetch_ms")]
    pub jwks_refetch_ms: u64,
    /// Seconds the fetched keys are used before they are fetched again (so
    /// a key taken out of the set stops working).
    #[serde(default = "default_jwks_refresh_secs")]
    pub jwks_refresh_secs: u64,
}

fn default_leeway_secs() -> u64 {
    60
}

fn default_subject_claim() -> String {
    "sub".to_owned()
}

fn default_jwks_refetch_ms() -> u64 {
    10_000
}

fn default_jwks_refresh_secs() -> u64 {
    600
}

/// Shortest HMAC secret accepted, in bytes: RFC 7518 §3.2 asks for a key
/// at least as long as the hash (256 bits for HS256).
const MIN_SECRET_BYTES: usize = 32;

/// Largest clock skew accepted, in seconds; more means broken clocks.
const MAX_LEEWAY_SECS: u64 = 600;

/// Longest subject accepted, in bytes; it becomes a user's name.
const MAX_SUBJECT_BYTES: usize = 256;

/// Verifies bearer JWTs with the keys and rules of `[auth.jwt]`.
#[derive(Debug)]
pub struct Verifier {
    /// Where the keys come from.
    keys: Keys,
    /// The algorithms a token's header may name.
    algorithms: Vec<Algorithm>,
    /// Issuer, audience, leeway and the required claims; its `algorithms`
    /// is set to the token's own (allowed) one before each check.
    validation: Validation,
    /// The claim naming the user.
    subject_claim: String,
}

/// The keys of a verifier.
enum Keys {
    /// One HMAC secret.
    Secret(DecodingKey),
    /// The public keys of a JWKS, fetched and cached.
    Jwks(Jwks),
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keys::Secret(_) => f.write_str("Secret(…)"),
            Keys::Jwks(jwks) => f.debug_tuple("Jwks").field(jwks).finish(),
        }
    }
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The user it names (the subject claim).
    pub subject: String,
    /// Every claim of its payload.
    pub claims: Map<String, Value>,
}

/// Why a token was refused: logged at DEBUG, never sent to the client.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The header does not parse, or names an unknown algorithm (`none`).
    #[error("malformed token: {0}")]
    Malformed(jsonwebtoken::errors::Error),
    /// The header names an algorithm not allowed.
    #[error("algorithm {0:?} is not allowed")]
    Algorithm(Algorithm),
    /// No key of the JWKS fits the token.
    #[error("no key of the JWKS has kid {kid:?} and fits {alg:?}")]
    NoKey {
        /// The token's `kid`.
        kid: Option<String>,
        /// The token's algorithm.
        alg: Algorithm,
    },
    /// The signature or a claim check failed.
    #[error("{0}")]
    Invalid(jsonwebtoken::errors::Error),
    /// The subject claim is absent, empty, too long or not text.
    #[error("the `{0}` claim is missing or not a usable user name")]
    Subject(String),
}

impl Verifier {
    /// Checks the settings and reads the secret from its variable.
    ///
    /// Errors: a message naming the key at fault (both or neither of
    /// `secret_env` and `jwks_url`, an unset or short secret, a bad URL, no
    /// `issuer`, an unknown or unfitting algorithm, ...).
    pub fn build(config: &JwtConfig) -> Result<Verifier, String> {
        let fail = |message: String| format!("[auth.jwt] {message}");
        let keys = match (&config.secret_env, &config.jwks_url) {
            (Some(var), None) => Keys::Secret(secret_from_env(var).map_err(fail)?),
            (None, Some(url)) => Keys::Jwks(
                Jwks::new(
                    url,
                    Duration::from_millis(config.jwks_refetch_ms),
                    Duration::from_secs(config.jwks_refresh_secs),
                )
                .map_err(|e| fail(format!("jwks_url: {e}")))?,
            ),
            (Some(_), Some(_)) => {
                return Err(fail(
                    "has both `secret_env` and `jwks_url`; set exactly one".to_owned(),
                ));
            }
            (None, None) => {
                return Err(fail(
                    "needs `secret_env` (an HMAC secret) or `jwks_url` (public keys)".to_owned(),
                ));
            }
        };
        let algorithms = algorithms(config, matches!(keys, Keys::Secret(_))).map_err(fail)?;
        let issuer = nonempty(config.issuer.as_ref(), "issuer").map_err(fail)?;
        let issuer = issuer.ok_or_else(|| {
            fail("needs `issuer`: the `iss` every accepted token carries".to_owned())
        })?;
        let audience = nonempty(config.audience.as_ref(), "audience").map_err(fail)?;
        if config.leeway_secs > MAX_LEEWAY_SECS {
            return Err(fail(format!(
                "leeway_secs: {} is more than {MAX_LEEWAY_SECS}",
                config.leeway_secs
            )));
        }
        if config.subject_claim.trim().is_empty() {
            return Err(fail("subject_claim must name a claim".to_owned()));
        }
        // Its algorithms are set for each token, to the token's own.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(issuer);
        let mut required = vec!["exp", "iss"];
        // With no audience set, `validation.aud` stays `None`, and
        // jsonwebtoken refuses a token that has one.
        if let Some(audience) = audience {
            validation.set_audience(audience);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        Ok(Verifier {
            keys,
            algorithms,
            validation,
            subject_claim: config.subject_claim.clone(),
        })
    }

    /// Where the keys come from, for the start-up log: never the secret.
    pub fn describe(&self) -> String {
        let algorithms: Vec<String> = self.algorithms.iter().map(|a| format!("{a:?}")).collect();
        match &self.keys {
            Keys::Secret(_) => format!("{} with a secret", algorithms.join(", ")),
            Keys::Jwks(jwks) => {
                format!("{} with the keys at {}", algorithms.join(", "), jwks.url())
            }
        }
    }

    /// At start-up: fetches the JWKS, if the keys come from one.
    ///
    /// Errors: why the set cannot be fetched or used now; the server can
    /// start anyway, since each token naming an unknown key tries again.
    pub async fn fetch_keys(&self) -> Result<(), String> {
        match &self.keys {
            Keys::Secret(_) => Ok(()),
            Keys::Jwks(jwks) => jwks.fetch_at_start().await,
        }
    }

    /// Checks a token and reads its subject and claims.
    ///
    /// Errors: why it was refused (see [`Refused`]).
    pub async fn verify(&self, token: &str) -> Result<Verified, Refused> {
        let header = jsonwebtoken::decode_header(token).map_err(Refused::Malformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(Refused::Algorithm(header.alg));
        }
        // One algorithm per check: jsonwebtoken wants each allowed one to
        // fit the key's family, and this one was allowed above.
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let decode = |key: &DecodingKey| {
            jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
                .map_err(Refused::Invalid)
        };
        let data = match &self.keys {
            Keys::Secret(key) => decode(key)?,
            Keys::Jwks(jwks) => {
                let no_key = || Refused::NoKey {
                    kid: header.kid.clone(),
                    alg: header.alg,
                };
                let keys = jwks.keys_for(header.kid.as_deref(), header.alg).await;
                // Without a `kid`, each key that fits the algorithm is tried;
                // only a wrong signature moves on to the next.
                let mut outcome = Err(no_key());
                for key in keys.iter() {
                    outcome = decode(key);
                    match &outcome {
                        Err(Refused::Invalid(e)) if *e.kind() == ErrorKind::InvalidSignature => {}
                        _ => break,
                    }
                }
                outcome?
            }
        };
        let subject = match data.claims.get(&self.subject_claim) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            _ => None,
        }
        .filter(|s| usable_name(s))
        .ok_or_else(|| Refused::Subject(self.subject_claim.clone()))?;
        Ok(Verified {
            subject,
            claims: data.claims,
        })
    }
}

/// The HMAC key in the variable `var`.
fn secret_from_env(var: &str) -> Result<DecodingKey, String> {
    let secret = std::env::var(var).map_err(|e| match e {
        std::env::VarError::NotPresent => {
            format!("secret_env: the environment variable {var} is not set")
        }
        std::env::VarError::NotUnicode(_) => {
            format!("secret_env: the environment variable {var} is not UTF-8")
        }
    })?;
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "secret_env: the secret in {var} has {} bytes; an HMAC secret needs at least \
             {MIN_SECRET_BYTES} (RFC 7518 §3.2)",
            secret.len()
        ));
    }
    Ok(DecodingKey::from_secret(secret.as_bytes()))
}

/// The allowed algorithms: the configured ones, each fitting the key
/// source, or the default for it.
fn algorithms(config: &JwtConfig, secret: bool) -> Result<Vec<Algorithm>, String> {
    let hmac = |a: &Algorithm| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
    let Some(names) = &config.algorithms else {
        return Ok(if secret {
            vec![Algorithm::HS256]
        } else {
            vec![Algorithm::RS256, Algorithm::ES256]
        });
    };
    if names.is_empty() {
        return Err("algorithms: the list is empty; leave it out for the default".to_owned());
    }
    names
        .iter()
        .map(|name| {
            let algorithm = Algorithm::from_str(name).map_err(|_| {
                format!(
                    "algorithms: {name:?} is not one of HS256, HS384, HS512, RS256, RS384, \
                     RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
                )
            })?;
            match (secret, hmac(&algorithm)) {
                (true, false) => Err(format!(
                    "algorithms: {name} needs public keys (`jwks_url`); a secret signs HS256, \
                     HS384 or HS512"
                )),
                (false, true) => Err(format!(
                    "algorithms: {name} needs a secret (`secret_env`); a JWKS holds public keys"
                )),
                _ => Ok(algorithm),
            }
        })
        .collect()
}

/// The strings of an optional `issuer` or `audience`, refusing empty ones.
fn nonempty<'a>(value: Option<&'a OneOrMany>, key: &str) -> Result<Option<&'a [String]>, String> {
    match value.map(OneOrMany::as_slice) {
        Some(list) if list.is_empty() || list.iter().any(|s| s.is_empty()) => {
            Err(format!("{key}: empty; name at least one, each non-empty"))
        }
        other => Ok(other),
    }
}

/// Whether a subject can be a user's name: not empty, not too long, no
/// control characters (PostgreSQL text cannot hold NUL).
fn usable_name(subject: &str) -> bool {
    !subject.trim().is_empty()
        && subject.len() <= MAX_SUBJECT_BYTES
        && !subject.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<Verifier, String> {
        let file: AuthConfig =
            toml::from_str(&format!("[jwt]\n{extra}")).map_err(|e| format!("parse: {e}"))?;
        Verifier::build(&file.jwt.unwrap())
    }

    const JWKS: &str = "jwks_url = \"http://127.0.0.1:9/jwks.json\"\nissuer = \"me\"\n";

    #[test]
    fn bad_settings_are_refused_naming_the_key() {
        let cases = [
            ("issuer = \"me\"", "needs `secret_env`"),
            (
                "secret_env = \"X\"\njwks_url = \"http://a/\"\nissuer = \"me\"",
                "both",
            ),
            (
                "secret_env = \"AGENTSTREAM_TEST_SURELY_UNSET_SECRET\"\nissuer = \"me\"",
                "AGENTSTREAM_TEST_SURELY_UNSET_SECRET is not set",
            ),
            ("jwks_url = \"http://127.0.0.1:9/\"", "needs `issuer`"),
            ("jwks_url = \"ftp://a/\"\nissuer = \"me\"", "jwks_url"),
            ("jwks_url = \"not a url\"\nissuer = \"me\"", "jwks_url"),
            (&format!("{JWKS}algorithms = [\"HS256\"]"), "needs a secret"),
            (
                &format!("{JWKS}algorithms = [\"none\"]"),
                "\"none\" is not one",
            ),
            (&format!("{JWKS}algorithms = []"), "empty"),
            (&format!("{JWKS}audience = []"), "audience: empty"),
            (&format!("{JWKS}leeway_secs = 100000"), "leeway_secs"),
            (&format!("{JWKS}subject_claim = \"\""), "subject_claim"),
            (&format!("{JWKS}issuer_typo = 1"), "unknown field"),
        ];
        for (settings, expected) in cases {
            let error = config(settings).err().unwrap_or_default();
            assert!(error.contains(expected), "{settings}: {error}");
        }
    }

    #[test]
    fn defaults_fit_the_key_source() {
        let verifier = config(&format!("{JWKS}audience = [\"a\", \"b\"]")).unwrap();
        assert_eq!(verifier.algorithms, [Algorithm::RS256, Algorithm::ES256]);
        assert_eq!(verifier.validation.leeway, 60);
        assert!(verifier.validation.validate_nbf);
        assert!(verifier.validation.required_spec_claims.contains("aud"));
        assert_eq!(verifier.subject_claim, "sub");
        let described = verifier.describe();
        assert!(described.contains("127.0.0.1:9"), "{described}");
    }

    #[test]
    fn subjects_must_be_names() {
        assert!(usable_name("auth0|1234"));
        assert!(!usable_name(" "));
        assert!(!usable_name("a\0b"));
        assert!(!usable_name(&"x".repeat(MAX_SUBJECT_BYTES + 1)));
    }
}
