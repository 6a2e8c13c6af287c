//! The caller's onboarding profile.

use axum::{Json, Router, extract::State, routing::get};

use super::{
    ApiError, AppState,
    extract::CurrentUser,
    openapi::{Unauthorized, Unavailable},
};
use crate::store::Profile;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/profile", get(get_profile))
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
