//! Extractors whose rejections are `ApiError`s, so every refusal has the JSON body.

use axum::{
    extract::{FromRequest, FromRequestParts, Request, rejection::JsonRejection},
    http::{StatusCode, request::Parts},
};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::{AppState, auth::Caller, error::ApiError};
use crate::store::User;

/// A JSON body: 400 when it is not JSON, 422 when a field is wrong or the
/// body is not a JSON object, 413 when it is too large, 415 without a JSON
/// content type.
#[derive(Debug)]
pub struct AppJson<T>(pub T);

/// `T` read from a JSON object only. serde lets a struct be read from an
/// array of its fields in order (`[null, null]` for two optional fields),
/// which no client means and no document describes.
#[derive(Debug)]
pub struct ObjectOnly<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(Object(std::marker::PhantomData))
            .map(ObjectOnly)
    }
}

/// For `#[serde(deserialize_with = "…")]` on a field that holds a struct
/// inside a body: read from a JSON object only, as [`ObjectOnly`] reads
/// the body itself. serde reads a struct from an array at any depth, and
/// only the top level goes through [`AppJson`]'s guard.
pub fn object<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    <ObjectOnly<T> as serde::Deserialize>::deserialize(deserializer).map(|ObjectOnly(value)| value)
}

/// [`object`] for an optional field (`null`, or missing with
/// `#[serde(default)]`, is `None`).
pub fn optional_object<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    <Option<ObjectOnly<T>> as serde::Deserialize>::deserialize(deserializer)
        .map(|value| value.map(|ObjectOnly(value)| value))
}

/// [`object`] for each item of an array.
pub fn objects<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    <Vec<ObjectOnly<T>> as serde::Deserialize>::deserialize(deserializer)
        .map(|items| items.into_iter().map(|ObjectOnly(item)| item).collect())
}

/// [`objects`] for an optional field.
pub fn optional_objects<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Vec<T>>, D::Error> {
    <Option<Vec<ObjectOnly<T>>> as serde::Deserialize>::deserialize(deserializer)
        .map(|items| items.map(|items| items.into_iter().map(|ObjectOnly(item)| item).collect()))
}

impl<S, T> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<ObjectOnly<T>>::from_request(request, state).await {
            Ok(axum::Json(ObjectOnly(value))) => Ok(AppJson(value)),
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
