//! The onboarding tools: read the profile, set one field, complete onboarding.

use futures_util::future::BoxFuture;
use sqlx::AnyConnection;

use super::{Tool, ToolContext, ToolError};
use crate::{llm::ToolSpec, store};

/// Longest value `update_profile` stores, in characters.
const MAX_VALUE_CHARS: usize = 2000;

/// `get_profile()`: the user's profile fields and whether onboarding is complete.
#[derive(Debug)]
pub struct GetProfile;

impl Tool for GetProfile {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "get_profile".to_owned(),
            description: "Read the user's profile: the fields filled so far and whether \
                          onboarding is complete."
                .to_owned(),
            parameters: serde_json::json!({ "type": "object", "properties": {} }),
        }
    }

    fn call<'a>(
        &'a self,
        ctx: ToolContext,
        conn: &'a mut AnyConnection,
        _arguments: serde_json::Value,
    ) -> BoxFuture<'a, Result<serde_json::Value, ToolError>> {
        Box::pin(async move {
            let profile = store::profile(conn, ctx.user_id).await?;
            Ok(serde_json::json!({
                "fields": profile.fields,
                "completed": profile.completed_at.is_some(),
            }))
        })
    }
}

/// `update_profile(field, value)`: sets one of the configured fields.
#[derive(Debug)]
pub struct UpdateProfile {
    fields: Vec<String>,
}

impl UpdateProfile {
    /// Accepts the given field names.
    pub fn new(fields: Vec<String>) -> UpdateProfile {
        UpdateProfile { fields }
    }
}

impl Tool for UpdateProfile {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "update_profile".to_owned(),
            description: "Save one field of the user's profile.".to_owned(),
            parameters: serde_json::json!({
                "type": "object",
                "properties": {
                    "field": { "type": "string", "enum": self.fields },
                    "value": { "type": "string", "description": "The user's answer." }
                },
                "required": ["field", "value"]
            }),
        }
    }

    fn call<'a>(
        &'a self,
        ctx: ToolContext,
        conn: &'a mut AnyConnection,
        arguments: serde_json::Value,
    ) -> BoxFuture<'a, Result<serde_json::Value, ToolError>> {
        Box::pin(async move {
            let field = arguments.get("field").and_then(serde_json::Value::as_str);
            let value = arguments
                .get("value")
                .and_then(serde_json::Value::as_str)
                .map(str::trim);
            let field = match field {
                Some(field) if self.fields.iter().any(|f| f == field) => field,
                Some(field) => {
                    return Err(ToolError::Invalid(format!(
                        "unknown field {field:?}; the fields are {}",
                        self.fields.join(", ")
                    )));
                }
                None => return Err(ToolError::Invalid("`field` must be a string".to_owned())),
            };
            let value = match value {
                Some("") | None => {
                    return Err(ToolError::Invalid(
                        "`value` must be a non-empty string".to_owned(),
                    ));
                }
                Some(value) if value.chars().count() > MAX_VALUE_CHARS => {
                    return Err(ToolError::Invalid(format!(
                        "`value` is longer than {MAX_VALUE_CHARS} characters"
                    )));
                }
                Some(value) => value,
            };
            store::set_profile_field(conn, ctx.user_id, field, value).await?;
            Ok(serde_json::json!({ "ok": true, "field": field, "value": value }))
        })
    }
}

/// `complete_onboarding()`: marks onboarding complete once every field is filled.
#[derive(Debug)]
pub struct CompleteOnboarding {
    fields: Vec<String>,
}

impl CompleteOnboarding {
    /// Requires the given fields to be filled.
    pub fn new(fields: Vec<String>) -> CompleteOnboarding {
        CompleteOnboarding { fields }
    }
}

impl Tool for CompleteOnboarding {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "complete_onboarding".to_owned(),
            description: "Mark onboarding complete once every profile field is filled.".to_owned(),
            parameters: serde_json::json!({ "type": "object", "properties": {} }),
        }
    }

    fn call<'a>(
        &'a self,
        ctx: ToolContext,
        conn: &'a mut AnyConnection,
        _arguments: serde_json::Value,
    ) -> BoxFuture<'a, Result<serde_json::Value, ToolError>> {
        Box::pin(async move {
            let profile = store::profile(conn, ctx.user_id).await?;
            let missing: Vec<&str> = self
                .fields
                .iter()
                .filter(|f| !profile.fields.contains_key(*f))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(ToolError::Invalid(format!(
                    "these fields are not filled yet: {}",
                    missing.join(", ")
                )));
            }
            let completed_at = store::complete_onboarding(conn, ctx.user_id).await?;
            Ok(
                serde_json::json!({ "ok": true, "completed_at": completed_at, "fields": profile.fields }),
            )
        })
    }
}
