//! The caller's onboarding profile.

use axum::{Json, Router, extract::State, routing::get};

use super::{ApiError, AppState, extract::CurrentUser};
use crate::store::Profile;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/profile", get(get_profile))
}

/// `GET /v1/profile`: the fields the onboarding tools wrote.
async fn get_profile(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> Result<Json<Profile>, ApiError> {
    Ok(Json(state.store.profile(user.id).await?))
}
