//! Human approval of tool calls: the user's decision on a call their paused
//! run asked about (`POST /v1/runs/{id}/approvals`).

use axum::{Json, Router, extract::State, routing::post};
use serde::Deserialize;

use super::{
    ApiError, AppState,
    extract::{AppJson, CurrentUser, IdPath},
    openapi::{
        BadRequest, Conflict, NotFound, PayloadTooLarge, Unauthorized, Unavailable, Unprocessable,
        UnsupportedMediaType,
    },
};
use crate::store::{Decision, Run};

/// Longest `call_id`, in bytes.
const MAX_CALL_ID: usize = 200;
/// Longest `reason`, in bytes.
const MAX_REASON: usize = 2000;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/runs/{id}/approvals", post(decide))
}

/// The user's decision on one tool call of a paused run.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDecision {
    /// The call's ID, as in its `tool.approval_requested` event.
    #[schema(min_length = 1, max_length = 200)]
    pub call_id: String,
    /// True lets the call run; false declines it (the model reads that the
    /// user declined, with the reason).
    pub approved: bool,
    /// Why, in the user's words: up to 2000 bytes.
    #[schema(max_length = 2000)]
    pub reason: Option<String>,
}

/// `POST /v1/runs/{id}/approvals`: records the decision once; the decision
/// that completes the set resumes the run.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/approvals",
    tag = "runs",
    summary = "Approve or deny a tool call of a paused run",
    description = "A run whose model called a tool configured `approval = \"always\"` pauses \
        (`requires_action`) with a `tool.approval_requested` event per call to decide on. \
        Each decision is recorded exactly once: the same decision again changes nothing, the \
        other one is refused (409). The decision that leaves none open resumes the run: its \
        events go on in the same log after its `done {status: \"requires_action\"}` (follow \
        `GET /v1/runs/{id}/events?after=<last_seq>`), first a `tool.approval_decided` per \
        call; a denied call is not made, and the model reads that the user declined.",
    params(("id" = Uuid, Path, description = "The run's ID.")),
    request_body = ApprovalDecision,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Recorded (or recorded before): the run as it stands, \
            `running` again once every call has its decision, with `pending_approvals` while \
            it still waits.", body = Run),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn decide(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    IdPath(id): IdPath,
    AppJson(body): AppJson<ApprovalDecision>,
) -> Result<Json<Run>, ApiError> {
    let decision = checked(body.call_id, body.approved, body.reason)?;
    let run = state.runs.decide(user.id, id, decision).await?;
    with_approvals(&state, run).await.map(Json)
}

/// A decision as sent, checked (422: a `call_id` of 0 or over 200 bytes, a
/// `reason` over 2000); a blank reason is none.
pub fn checked(
    call_id: String,
    approved: bool,
    reason: Option<String>,
) -> Result<Decision, ApiError> {
    if call_id.is_empty() || call_id.len() > MAX_CALL_ID {
        return Err(ApiError::Invalid(format!(
            "call_id: 1 to {MAX_CALL_ID} bytes, as in the run's tool.approval_requested event"
        )));
    }
    let reason = reason
        .map(crate::text::clean_string)
        .filter(|reason| !reason.trim().is_empty());
    if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON) {
        return Err(ApiError::Invalid(format!(
            "reason: at most {MAX_REASON} bytes"
        )));
    }
    Ok(Decision {
        call_id,
        approved,
        reason,
    })
}

/// The run with its `pending_approvals`, while it is `requires_action`.
pub async fn with_approvals(state: &AppState, mut run: Run) -> Result<Run, ApiError> {
    if run.status == crate::store::RunStatus::RequiresAction {
        run.pending_approvals = Some(state.store.approvals(run.id).await?);
    }
    Ok(run)
}
