//! agentstream's own format: each committed event as one SSE message,
//! `id: <seq>`, `event: <type>` and the event's stored JSON as `data`, sent
//! as stored (never serialised again); and the OpenAPI description of it.

use std::{borrow::Cow, sync::Arc};

use axum::response::sse::Event as SseEvent;
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        RefOr, Schema,
        extensions::Extensions,
        schema::{ObjectBuilder, Type},
    },
};

use super::Encoder;
use crate::events::{ErrorCode, EventKind, RunEvent, StoredEvent};

/// The native format. It keeps no state between events.
#[derive(Debug, Clone, Copy, Default)]
pub struct NativeEncoder;

impl Encoder for NativeEncoder {
    fn event(&mut self, event: Arc<StoredEvent>) -> Vec<SseEvent> {
        vec![
            SseEvent::default()
                .id(event.seq.to_string())
                .event(event.kind.as_str())
                .data(event.data.as_str()),
        ]
    }

    fn unavailable(&mut self, reason: &str) -> Vec<SseEvent> {
        let data = serde_json::json!({
            "type": EventKind::Error,
            "code": ErrorCode::Unavailable,
            "message": reason,
        });
        vec![
            SseEvent::default()
                .event(EventKind::Error.as_str())
                .data(data.to_string()),
        ]
    }
}

/// The `data` of the one SSE message that is not a logged event: an `error`
/// with code `unavailable` when the server could not read the run's log. It
/// has no `id`; the stream ends after it, and the client resumes from its
/// last `seq`.
#[derive(utoipa::ToSchema)]
#[expect(
    dead_code,
    reason = "describes the wire format for the OpenAPI document; `NativeEncoder` writes it"
)]
pub struct StreamUnavailable {
    /// Always `error`.
    #[schema(rename = "type", pattern = "^error$")]
    kind: String,
    /// Always `unavailable`.
    #[schema(pattern = "^unavailable$")]
    code: String,
    /// What happened, for people.
    message: String,
}

/// One SSE message of a run's stream, as the OpenAPI document describes a
/// `text/event-stream` response: its fields, with the JSON in `data`. The
/// stream opens with a `retry:` line and carries `: keep-alive` comments,
/// neither of which is a message.
pub struct SseMessage;

impl PartialSchema for SseMessage {
    fn schema() -> RefOr<Schema> {
        let data_schema = serde_json::json!({
            "anyOf": [
                { "$ref": format!("#/components/schemas/{}", RunEvent::name()) },
                { "$ref": format!("#/components/schemas/{}", StreamUnavailable::name()) },
            ]
        });
        ObjectBuilder::new()
            .description(Some(
                "One SSE message: `event` is the event's `type`, `id` its `seq`, and `data` \
                 the event as JSON.",
            ))
            .property(
                "event",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(EventKind::ALL.iter().map(|kind| kind.as_str()))),
            )
            .required("event")
            .property(
                "id",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[0-9]+$"))
                    .description(Some("The event's `seq`; send it back as `Last-Event-ID`.")),
            )
            .property(
                "data",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .content_media_type("application/json")
                    .extensions(Some(Extensions::from_iter([(
                        "contentSchema",
                        data_schema,
                    )]))),
            )
            .required("data")
            .property(
                "retry",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0)),
            )
            .into()
    }
}

impl ToSchema for SseMessage {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("SseMessage")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((RunEvent::name().into_owned(), RunEvent::schema()));
        RunEvent::schemas(schemas);
        schemas.push((
            StreamUnavailable::name().into_owned(),
            StreamUnavailable::schema(),
        ));
    }
}
