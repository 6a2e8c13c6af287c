//! The caller's onboarding profile.

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::{delete, get},
};

use super::{
    ApiError, AppState,
    extract::CurrentUser,
    openapi::{NotFound, Unauthorized, Unavailable},
};
use crate::store::Profile;

/// Longest field name, in bytes.
const MAX_FIELD: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/profile", get(get_profile).delete(reset_profile))
        .route("/v1/profile/{field}", delete(delete_field))
}

/// `DELETE /v1/profile`: every field and the completion go; the onboarding
/// agent starts over. Idempotent.
#[utoipa::path(
    delete,
    path = "/v1/profile",
    tag = "profile",
    summary = "Reset the caller's onboarding profile",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The profile is empty and not completed (also when it was \
            already)."),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    ),
)]
async fn reset_profile(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> Result<StatusCode, ApiError> {
    state.store.delete_profile(user.id, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/profile/{field}`: one field goes; 404 when it is not set.
#[utoipa::path(
    delete,
    path = "/v1/profile/{field}",
    tag = "profile",
    summary = "Remove one field of the caller's onboarding profile",
    params(("field" = String, Path, description = "The field's name, as `GET /v1/profile` \
        lists it.")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The field is removed."),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
async fn delete_field(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(field): Path<String>,
) -> Result<StatusCode, ApiError> {
    if field.len() > MAX_FIELD || !state.store.delete_profile(user.id, Some(&field)).await? {
        return Err(ApiError::NotFound("profile field"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/profile`: the fields the onboarding tools wrote.
#[utoipa::path(
    get,
    path = "/v1/profile",
    tag = "profile",
    summary = "Read the caller's onboarding profile",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The fields the onboarding tools wrote.", body = Profile),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    ),
)]
async fn get_profile(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> Result<Json<Profile>, ApiError> {
    Ok(Json(state.store.profile(user.id).await?))
}
