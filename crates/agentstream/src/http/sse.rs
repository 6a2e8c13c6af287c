//! The SSE encoding of a run's events: `id: <seq>`, `event: <type>`, JSON data.

use std::{
    borrow::Cow,
    convert::Infallible,
    time::{Duration, Instant},
};

use axum::{
    http::{HeaderName, HeaderValue},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use futures_util::{StreamExt, stream};
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        RefOr, Schema,
        extensions::Extensions,
        schema::{ObjectBuilder, Type},
    },
};
use uuid::Uuid;

use super::AppState;
use crate::{
    runs::{Delivery, Event, LiveEvents},
    store::EVENT_KINDS,
    telemetry::metrics,
};

/// Clients reconnect after this long (the `retry:` field).
const RETRY: Duration = Duration::from_millis(1000);

fn encode(delivery: Delivery) -> SseEvent {
    match delivery {
        Delivery::Event(event) => SseEvent::default()
            .id(event.seq.to_string())
            .event(event.kind)
            .data(event.data.as_str()),
        Delivery::Unavailable(message) => SseEvent::default().event("error").data(
            serde_json::json!({ "type": "error", "code": "unavailable", "message": message })
                .to_string(),
        ),
    }
}

/// The `data` of each SSE message: the event with its run and `seq`
/// (equal to the message's `id`). The SSE `event` field is the `type`.
///
/// One message has neither `run_id` nor `seq` nor `id`: an `error` with code
/// `unavailable` when the server could not read the run's log; the stream
/// then ends without `done`, and the client resumes from its last `seq`.
#[derive(utoipa::ToSchema)]
#[expect(
    dead_code,
    reason = "describes the wire format for the OpenAPI document; `Event::to_stored` writes it"
)]
pub struct RunEvent {
    /// The run.
    run_id: Uuid,
    /// The event's place in the run's log: 1, 2, 3… with no gap.
    #[schema(minimum = 1)]
    seq: i64,
    #[serde(flatten)]
    event: Event,
}

/// The `data` of the one SSE message that is not a logged event: an `error`
/// with code `unavailable` when the server could not read the run's log. It
/// has no `id`; the stream ends after it, and the client resumes from its
/// last `seq`.
#[derive(utoipa::ToSchema)]
#[expect(
    dead_code,
    reason = "describes the wire format for the OpenAPI document; `encode` writes it"
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
                    .enum_values(Some(EVENT_KINDS)),
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

/// Where a stream of a run's events begins.
#[derive(Debug)]
pub enum Start {
    /// After this `seq`.
    After(i64),
    /// At the first event of a run this request started: the run's live
    /// channel, joined before its task existed, and when the request came
    /// in (the delay to the first event is measured from there).
    NewRun(LiveEvents, Instant),
}

impl Start {
    /// Where the stream of a run this request started (or found by its
    /// client message ID, with no live channel) begins; `received` is when
    /// the request came in.
    pub fn of_started(live: Option<LiveEvents>, received: Instant) -> Start {
        match live {
            Some(live) => Start::NewRun(live, received),
            None => Start::After(0),
        }
    }
}

/// The run's events from `start` as an SSE response, with `headers` added.
pub fn stream_run(
    state: &AppState,
    run_id: Uuid,
    start: Start,
    headers: &[(&'static str, String)],
) -> Response {
    let subscribed = metrics::Subscribed::open();
    let open = state.open_streams.token();
    let (deliveries, mut since) = match start {
        Start::After(after) => (state.runs.subscribe(run_id, after).left_stream(), None),
        Start::NewRun(live, since) => (
            state.runs.follow_started(run_id, live).right_stream(),
            Some(since),
        ),
    };
    let events = deliveries
        .map(move |delivery| {
            // The stream owns the count of open streams; it ends with it.
            let _open = (&subscribed, &open);
            if let (Delivery::Event(_), Some(since)) = (&delivery, since.take()) {
                metrics::first_event(since.elapsed());
            }
            encode(delivery)
        })
        // Shutdown lets streams end by themselves after their `done`; this
        // only cuts those that would not (runs another node drives).
        .take_until(state.streams_end.clone().cancelled_owned());
    let body = stream::once(async { SseEvent::default().retry(RETRY) })
        .chain(events)
        .map(Ok::<_, Infallible>);
    let mut response = Sse::new(body)
        .keep_alive(
            KeepAlive::new()
                .interval(state.keep_alive)
                .text("keep-alive"),
        )
        .into_response();
    let response_headers = response.headers_mut();
    response_headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response_headers.insert("x-run-id", header_value(&run_id.to_string()));
    for (name, value) in headers {
        response_headers.insert(HeaderName::from_static(name), header_value(value));
    }
    response
}

fn header_value(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static(""))
}
