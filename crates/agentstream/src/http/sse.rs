//! The SSE encoding of a run's events: `id: <seq>`, `event: <type>`, JSON data.

use std::{convert::Infallible, time::Duration};

use axum::{
    http::{HeaderName, HeaderValue},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use futures_util::{StreamExt, stream};
use uuid::Uuid;

use super::AppState;
use crate::runs::Delivery;

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

/// The run's events after `after` as an SSE response, with `headers` added.
pub fn stream_run(
    state: &AppState,
    run_id: Uuid,
    after: i64,
    headers: &[(&'static str, String)],
) -> Response {
    let events = state
        .runs
        .subscribe(run_id, after)
        .map(encode)
        // Graceful shutdown waits for open responses; runs have ended by
        // the time this fires, so it only cuts streams that would never end.
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
