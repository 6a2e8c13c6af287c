//! The wire formats of a run's stream. An [`Encoder`] per format turns the
//! run's committed events into SSE messages; [`sse_response`] does what every
//! format shares: the opening `retry:` line, keep-alive comments, the cut at
//! shutdown and the headers. [`subscribe`] is where every stream's events
//! come from. A new format is one file here with its encoder; neither the
//! runs nor their subscriptions change.

pub mod ai_sdk;
pub mod native;
pub mod openai;

use std::{
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    http::{HeaderName, HeaderValue},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use futures_util::{Stream, StreamExt, stream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

pub use native::{NativeEncoder, SseMessage};

use super::AppState;
use crate::{
    events::StoredEvent,
    runs::{Delivery, LiveEvents},
    telemetry::metrics,
};

/// Clients reconnect after this long (the `retry:` field).
const RETRY: Duration = Duration::from_millis(1000);

/// One wire format: a run's committed events, in `seq` order, in; SSE
/// messages out. Each stream has an encoder of its own, so it may keep
/// state between events.
pub trait Encoder: Send + 'static {
    /// The messages that carry `event`; none leaves it out.
    fn event(&mut self, event: Arc<StoredEvent>) -> Vec<SseEvent>;

    /// The messages that carry the `done {status: "requires_action"}` of a
    /// pause the run went on after, met in a replay: by default, as any
    /// event.
    fn passed_pause(&mut self, event: Arc<StoredEvent>) -> Vec<SseEvent> {
        self.event(event)
    }

    /// The last messages of a stream that cannot go on: the server could not
    /// read the run's log (`reason`, for people). The stream ends after
    /// them, without `done`; the client may resume from the last event it got.
    fn unavailable(&mut self, reason: &str) -> Vec<SseEvent>;

    /// The message the stream opens with: the `retry:` line, unless the
    /// format's clients cannot take it.
    fn opening(&self) -> Option<SseEvent> {
        Some(SseEvent::default().retry(RETRY))
    }
}

/// What the server's streams share, whatever their format.
#[derive(Debug, Clone)]
pub struct Streams {
    /// Interval of keep-alive comments.
    pub keep_alive: Duration,
    /// Fired at the end of shutdown: every open stream ends.
    pub end: CancellationToken,
    /// Counts the open streams, so shutdown can let them end by themselves.
    pub open: TaskTracker,
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

/// The run's events from `start`, for one stream: counted as open until it
/// is dropped (shutdown waits for it) and in the metrics.
pub fn subscribe(
    state: &AppState,
    run_id: Uuid,
    start: Start,
) -> impl Stream<Item = Delivery> + Send + 'static {
    let subscribed = metrics::Subscribed::open();
    let open = state.streams.open.token();
    let (deliveries, mut since) = match start {
        Start::After(after) => (state.runs.subscribe(run_id, after).left_stream(), None),
        Start::NewRun(live, since) => (
            state.runs.follow_started(run_id, live).right_stream(),
            Some(since),
        ),
    };
    deliveries.inspect(move |delivery| {
        // The stream owns the count of open streams; it ends with it.
        let _open = (&subscribed, &open);
        if let (Delivery::Event(_), Some(since)) = (delivery, since.take()) {
            metrics::first_event(since.elapsed());
        }
    })
}

/// The run's `deliveries`, encoded by `encoder`, as an SSE response: a
/// `retry:` line first, keep-alive comments while nothing comes, cut when
/// `streams.end` fires; with `X-Run-Id`, `X-Accel-Buffering: no` and
/// `headers` added to axum's `Content-Type` and `Cache-Control`.
pub fn sse_response(
    mut encoder: impl Encoder,
    run_id: Uuid,
    deliveries: impl Stream<Item = Delivery> + Send + 'static,
    streams: &Streams,
    headers: &[(&'static str, String)],
) -> Response {
    let opening = encoder.opening();
    let messages = deliveries
        .flat_map(move |delivery| {
            stream::iter(match delivery {
                Delivery::Event(event) => encoder.event(event),
                Delivery::PassedPause(event) => encoder.passed_pause(event),
                Delivery::Unavailable(reason) => encoder.unavailable(&reason),
            })
        })
        // Shutdown lets streams end by themselves after their `done`; this
        // only cuts those that would not (runs another node drives).
        .take_until(streams.end.clone().cancelled_owned());
    let body = stream::iter(opening)
        .chain(messages)
        .map(Ok::<_, Infallible>);
    let mut response = Sse::new(body)
        .keep_alive(
            KeepAlive::new()
                .interval(streams.keep_alive)
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

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;
    use crate::events::{ErrorCode, Event, RunEvent, RunStatus};

    /// A second format, written against the seam alone: each delta's text on
    /// a line of its own, then `[done: <status>]`; the rest left out.
    #[derive(Default)]
    struct PlainText {
        /// Events seen: per-stream state.
        seen: usize,
    }

    impl Encoder for PlainText {
        fn event(&mut self, event: Arc<StoredEvent>) -> Vec<SseEvent> {
            self.seen += 1;
            let Ok(RunEvent { event, .. }) = RunEvent::parse(&event.data) else {
                return Vec::new();
            };
            match event {
                Event::Delta { text } => vec![SseEvent::default().data(text)],
                Event::Done { status, .. } => vec![
                    SseEvent::default()
                        .data(format!("[done: {status}] after {} events", self.seen)),
                ],
                _ => Vec::new(),
            }
        }

        fn unavailable(&mut self, reason: &str) -> Vec<SseEvent> {
            vec![SseEvent::default().data(format!("[unavailable: {reason}]"))]
        }
    }

    fn streams(keep_alive: Duration) -> Streams {
        Streams {
            keep_alive,
            end: CancellationToken::new(),
            open: TaskTracker::new(),
        }
    }

    fn committed(run_id: Uuid, events: Vec<Event>) -> Vec<Delivery> {
        (1..)
            .zip(events)
            .map(|(seq, event)| Delivery::Event(Arc::new(event.to_stored(run_id, seq))))
            .collect()
    }

    fn a_reply(run_id: Uuid) -> Vec<Delivery> {
        committed(
            run_id,
            vec![
                Event::RunStarted {
                    conversation_id: Uuid::nil(),
                },
                Event::Delta { text: "Hel".into() },
                Event::Delta { text: "lo".into() },
                Event::Done {
                    status: RunStatus::Completed,
                    usage: None,
                    finish_reason: None,
                },
            ],
        )
    }

    async fn body_text(body: Body) -> String {
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_second_encoder_needs_only_the_seam() {
        let run_id = Uuid::now_v7();
        let response = sse_response(
            PlainText::default(),
            run_id,
            stream::iter(a_reply(run_id)),
            &streams(Duration::from_secs(15)),
            &[("x-conversation-id", "c".to_owned())],
        );
        let headers = response.headers();
        assert_eq!(headers["content-type"], "text/event-stream");
        assert_eq!(headers["cache-control"], "no-cache");
        assert_eq!(headers["x-accel-buffering"], "no");
        assert_eq!(headers["x-run-id"], run_id.to_string().as_str());
        assert_eq!(headers["x-conversation-id"], "c");
        assert_eq!(
            body_text(response.into_body()).await,
            "retry: 1000\n\ndata: Hel\n\ndata: lo\n\ndata: [done: completed] after 4 events\n\n"
        );

        let unavailable = sse_response(
            PlainText::default(),
            run_id,
            stream::iter([Delivery::Unavailable("the database is away".into())]),
            &streams(Duration::from_secs(15)),
            &[],
        );
        assert_eq!(
            body_text(unavailable.into_body()).await,
            "retry: 1000\n\ndata: [unavailable: the database is away]\n\n"
        );
    }

    #[tokio::test]
    async fn the_native_format_sends_the_stored_data_as_is() {
        let run_id = Uuid::nil();
        let reply = a_reply(run_id);
        let mut expected = "retry: 1000\n\n".to_owned();
        for delivery in &reply {
            let Delivery::Event(event) = delivery else {
                unreachable!()
            };
            expected.push_str(&format!(
                "id: {}\nevent: {}\ndata: {}\n\n",
                event.seq, event.kind, event.data
            ));
        }
        assert!(
            expected.contains(
                "id: 2\nevent: delta\ndata: {\"run_id\":\"00000000-0000-0000-0000-000000000000\",\
                 \"seq\":2,\"type\":\"delta\",\"text\":\"Hel\"}\n\n"
            ),
            "{expected}"
        );
        let response = sse_response(
            NativeEncoder,
            run_id,
            stream::iter(reply).chain(stream::iter([Delivery::Unavailable(
                "the run's log could not be read".into(),
            )])),
            &streams(Duration::from_secs(15)),
            &[],
        );
        let unavailable = serde_json::json!({
            "type": "error",
            "code": ErrorCode::Unavailable,
            "message": "the run's log could not be read",
        });
        expected.push_str(&format!("event: error\ndata: {unavailable}\n\n"));
        assert_eq!(body_text(response.into_body()).await, expected);
    }

    #[tokio::test]
    async fn streams_keep_alive_and_end_at_shutdown() {
        let run_id = Uuid::now_v7();
        let streams = streams(Duration::from_millis(20));
        let first = committed(run_id, vec![Event::Delta { text: "Hi".into() }]);
        let response = sse_response(
            PlainText::default(),
            run_id,
            stream::iter(first).chain(stream::pending()),
            &streams,
            &[],
        );
        let mut frames = response.into_body().into_data_stream();
        let mut text = String::new();
        while !text.contains(": keep-alive\n\n") {
            let frame = frames.next().await.unwrap().unwrap();
            text.push_str(std::str::from_utf8(&frame).unwrap());
        }
        assert!(text.starts_with("retry: 1000\n\ndata: Hi\n\n"), "{text:?}");
        streams.end.cancel();
        while let Some(frame) = frames.next().await {
            let frame = frame.unwrap();
            assert_eq!(&frame[..], b": keep-alive\n\n");
        }
    }
}
