//! Extractors whose rejections are `ApiError`s, so every refusal has the JSON body.

use axum::{
    extract::{FromRequest, FromRequestParts, Request, rejection::JsonRejection},
    http::{StatusCode, request::Parts},
};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::{AppState, auth::Caller, error::ApiError};
use crate::store::User;

/// A JSON body: 400 when it is not JSON, 422 when a field is wrong, 413 when
/// it is too large, 415 without a JSON content type.
#[derive(Debug)]
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(AppJson(value)),
            Err(rejection) => Err(match rejection {
                JsonRejection::JsonDataError(e) => ApiError::Invalid(e.body_text()),
                JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest(e.body_text()),
                JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                    "send the body as JSON with `Content-Type: application/json`".to_owned(),
                ),
                other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::PayloadTooLarge("the request body is too large".to_owned())
                }
                other => ApiError::BadRequest(other.body_text()),
            }),
        }
    }
}

/// Query parameters: 400 when they do not parse.
#[derive(Debug)]
pub struct AppQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for AppQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| AppQuery(q.0))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// A UUID from the path; anything that is not one names nothing (404).
#[derive(Debug, Clone, Copy)]
pub struct IdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(id) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::NotFound("resource"))?;
        Uuid::parse_str(&id)
            .map(IdPath)
            .map_err(|_| ApiError::NotFound("resource"))
    }
}

/// The caller's user (see `auth`): the API key's user, the token's
/// subject, or the local user. 401 when there is none.
#[derive(Debug, Clone)]
pub struct CurrentUser(pub User);

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        CurrentCaller::from_request_parts(parts, state)
            .await
            .map(|CurrentCaller(caller)| CurrentUser(caller.user))
    }
}

/// The caller with the verified token's claims, if a token named it (see
/// `auth`). 401 when there is none.
#[derive(Debug, Clone)]
pub struct CurrentCaller(pub Caller);

impl FromRequestParts<AppState> for CurrentCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state
            .auth
            .authenticate(parts, &state.store)
            .await
            .map(CurrentCaller)
    }
}
