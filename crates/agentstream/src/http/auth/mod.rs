//! Who is calling: the user of a bearer API key, the subject of a bearer JWT
//! (when `[auth.jwt]` is configured) or, when neither is on and the server
//! listens on loopback only, the single local user.

mod jwks;
mod jwt;

use std::sync::Arc;

use axum::http::{header, request::Parts};
use serde_json::{Map, Value};

pub use jwt::{AuthConfig, JwtConfig, OneOrMany, Refused, Verified, Verifier};

use super::ApiError;
use crate::store::{Store, User};

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user the request acts as: the API key's user, the token's
    /// subject, or the local user.
    pub user: User,
    /// The verified token's claims (every claim of its payload, as sent);
    /// `None` for API keys and the local user.
    pub claims: Option<Arc<Map<String, Value>>>,
}

impl Caller {
    /// Who the caller is as a run's tools see it: the user's name and the
    /// token's claims.
    pub fn for_tools(&self) -> crate::tools::Caller {
        crate::tools::Caller {
            subject: self.user.name.clone(),
            claims: self.claims.as_deref().cloned(),
        }
    }
}

impl Caller {
    /// A caller without a token: an API key's user or the local user.
    fn without_token(user: User) -> Caller {
        Caller { user, claims: None }
    }
}

/// How requests are authenticated.
#[derive(Debug, Clone)]
pub struct Auth {
    /// The user of requests without a key, when that is allowed.
    local_user: User,
    /// True when bound to a loopback address: without any key, requests act
    /// as the local user. Never true on any other address.
    local_allowed: bool,
    /// Verifies bearer JWTs, when `[auth.jwt]` is configured; shared by
    /// every clone (its key cache included).
    jwt: Option<Arc<Verifier>>,
}

impl Auth {
    /// Requests with no key, or with a key while none exists, act as
    /// `local_user` while no key exists, but only if `local_allowed` (the
    /// server is bound to loopback) and `jwt` is `None`: with JWTs on, every
    /// request names its caller.
    pub fn new(local_user: User, local_allowed: bool, jwt: Option<Verifier>) -> Auth {
        Auth {
            local_user,
            local_allowed,
            jwt: jwt.map(Arc::new),
        }
    }

    /// Whether bearer JWTs are accepted.
    pub fn jwt_on(&self) -> bool {
        self.jwt.is_some()
    }

    /// The caller of a request.
    ///
    /// Errors: [`ApiError::Unauthorized`] without credentials or, with JWTs
    /// off, for an unknown key (unless the local user applies: then any
    /// key acts as the local user);
    /// [`ApiError::InvalidToken`] with JWTs on for any credential that is
    /// refused (its reason is logged at DEBUG, never sent); a store error
    /// as 5xx.
    pub async fn authenticate(&self, parts: &Parts, store: &Store) -> Result<Caller, ApiError> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            // A key created while the server runs turns local access off at once.
            if self.local_allowed && self.jwt.is_none() && !store.any_active_key().await? {
                return Ok(Caller::without_token(self.local_user.clone()));
            }
            return Err(if self.jwt.is_some() {
                ApiError::CredentialRequired
            } else {
                ApiError::Unauthorized
            });
        };
        let credential = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        match &self.jwt {
            Some(verifier) if looks_like_jwt(credential) => {
                token_caller(verifier, credential, store).await
            }
            Some(_) => match store.user_for_key(credential).await? {
                Some(user) => Ok(Caller::without_token(user)),
                None => {
                    tracing::debug!("bearer credential refused: neither a JWT nor a known key");
                    Err(ApiError::InvalidToken)
                }
            },
            None => match store.user_for_key(credential).await? {
                Some(user) => Ok(Caller::without_token(user)),
                // Keys are off: a client that always sends one (the OpenAI
                // SDKs do) acts as the local user, as one that sends none.
                None if self.local_allowed && !store.any_active_key().await? => {
                    Ok(Caller::without_token(self.local_user.clone()))
                }
                None => Err(ApiError::Unauthorized),
            },
        }
    }
}

/// The caller a JWT names: its subject, created on first sight.
async fn token_caller(verifier: &Verifier, token: &str, store: &Store) -> Result<Caller, ApiError> {
    let verified = match verifier.verify(token).await {
        Ok(verified) => verified,
        Err(reason) => {
            // The client's fault, not the server's: never WARN.
            tracing::debug!(%reason, "bearer token refused");
            return Err(ApiError::InvalidToken);
        }
    };
    // A read first: the insert of `ensure_user` takes a write turn, and
    // only a subject's first request needs it.
    let user = match store.user_named(&verified.subject).await? {
        Some(user) => user,
        None => store.ensure_user(&verified.subject).await?,
    };
    Ok(Caller {
        user,
        claims: Some(Arc::new(verified.claims)),
    })
}

/// Whether a bearer credential has the shape of a JWS in compact form:
/// three base64url segments separated by dots (the last may be empty, as
/// in an unsigned token, which is then refused as a JWT). API keys
/// (`ask_` and hex) never have this shape.
fn looks_like_jwt(credential: &str) -> bool {
    let base64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut segments = credential.split('.');
    match (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) {
        (Some(header), Some(payload), Some(signature), None) => {
            !header.is_empty()
                && !payload.is_empty()
                && base64url(header)
                && base64url(payload)
                && base64url(signature)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shapes_are_told_from_keys() {
        assert!(looks_like_jwt("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"));
        assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0."));
        assert!(looks_like_jwt("a-b_c.d.e"));
        assert!(!looks_like_jwt(&format!("ask_{}", "0f".repeat(32))));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt(".b.c"));
        assert!(!looks_like_jwt("a..c"));
        assert!(!looks_like_jwt("a+b.c.d"));
        assert!(!looks_like_jwt("a.b=.c"));
        assert!(!looks_like_jwt(""));
    }
}
