//! Who is calling: the user of a bearer API key or, when no key exists and
//! the server listens on loopback only, the single local user.

use axum::http::{header, request::Parts};

use super::ApiError;
use crate::store::{Store, User};

/// How requests are authenticated.
#[derive(Debug, Clone)]
pub struct Auth {
    /// The user of requests without a key, when that is allowed.
    local_user: User,
    /// True when bound to a loopback address: without any key, requests act
    /// as the local user. Never true on any other address.
    local_allowed: bool,
}

impl Auth {
    /// Requests with no key act as `local_user` while no key exists, but only
    /// if `local_allowed` (the server is bound to loopback).
    pub fn new(local_user: User, local_allowed: bool) -> Auth {
        Auth {
            local_user,
            local_allowed,
        }
    }

    /// The caller of a request.
    pub async fn authenticate(&self, parts: &Parts, store: &Store) -> Result<User, ApiError> {
        match parts.headers.get(header::AUTHORIZATION) {
            Some(value) => {
                let key = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .ok_or(ApiError::Unauthorized)?;
                store.user_for_key(key).await?.ok_or(ApiError::Unauthorized)
            }
            // A key created while the server runs turns local access off at once.
            None if self.local_allowed && !store.any_active_key().await? => {
                Ok(self.local_user.clone())
            }
            None => Err(ApiError::Unauthorized),
        }
    }
}
