//! The values bound to a statement's placeholders: the caller's, the
//! server's and the model's arguments, each with its SQL type.

use sqlx::{Database, Encode, Type, query::Query};

use super::{Binding, ParamType, SqlTool};
use crate::{
    store,
    tools::{ToolError, ToolInput},
};

/// A value bound to one positional parameter.
#[derive(Debug, Clone)]
pub(super) enum Bound {
    Text(Option<String>),
    Integer(Option<i64>),
    Number(Option<f64>),
    Boolean(Option<bool>),
}

/// The values of the statement's placeholders, in order; a tool error when
/// the caller lacks a claim the statement names.
pub(super) fn values(tool: &SqlTool, input: &ToolInput<'_>) -> Result<Vec<Bound>, ToolError> {
    let ctx = input.ctx;
    tool.bindings
        .iter()
        .map(|binding| {
            Ok(match binding {
                Binding::Subject => Bound::Text(Some(ctx.caller.subject.clone())),
                Binding::UserId => Bound::Text(Some(ctx.user_id.to_string())),
                Binding::ConversationId => Bound::Text(Some(ctx.conversation_id.to_string())),
                Binding::RunId => Bound::Text(Some(ctx.run_id.to_string())),
                Binding::Now => Bound::Text(Some(store::now())),
                Binding::Claim(name) => {
                    let claim = ctx
                        .caller
                        .claims
                        .as_ref()
                        .and_then(|claims| claims.get(name))
                        .filter(|value| !value.is_null())
                        .ok_or_else(|| {
                            ToolError::Invalid(format!(
                                "the signed-in caller has no `{name}` claim, which this tool needs"
                            ))
                        })?;
                    json_bound(claim)
                }
                Binding::Argument(name, kind) => {
                    let value = input
                        .arguments
                        .get(name)
                        .unwrap_or(&serde_json::Value::Null);
                    typed(value, *kind)
                }
            })
        })
        .collect()
}

/// A claim's value: its own JSON type, objects and arrays as JSON text.
fn json_bound(value: &serde_json::Value) -> Bound {
    match value {
        serde_json::Value::Bool(b) => Bound::Boolean(Some(*b)),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Bound::Integer(Some(i)),
            None => Bound::Number(n.as_f64()),
        },
        serde_json::Value::String(s) => Bound::Text(Some(s.clone())),
        serde_json::Value::Null => Bound::Text(None),
        other => Bound::Text(Some(other.to_string())),
    }
}

/// An argument as its declared type (already checked against it); absent
/// is NULL of that type.
fn typed(value: &serde_json::Value, kind: ParamType) -> Bound {
    match kind {
        ParamType::String => Bound::Text(value.as_str().map(str::to_owned)),
        ParamType::Integer => Bound::Integer(value.as_i64()),
        ParamType::Number => Bound::Number(value.as_f64()),
        ParamType::Boolean => Bound::Boolean(value.as_bool()),
    }
}

/// Binds `values` to `query`, in order, on either driver.
pub(super) fn bind<'q, DB>(
    mut query: Query<'q, DB, <DB as Database>::Arguments<'q>>,
    values: &[Bound],
) -> Query<'q, DB, <DB as Database>::Arguments<'q>>
where
    DB: Database,
    Option<String>: Encode<'q, DB> + Type<DB>,
    Option<i64>: Encode<'q, DB> + Type<DB>,
    Option<f64>: Encode<'q, DB> + Type<DB>,
    Option<bool>: Encode<'q, DB> + Type<DB>,
{
    for value in values {
        query = match value.clone() {
            Bound::Text(v) => query.bind(v),
            Bound::Integer(v) => query.bind(v),
            Bound::Number(v) => query.bind(v),
            Bound::Boolean(v) => query.bind(v),
        };
    }
    query
}
