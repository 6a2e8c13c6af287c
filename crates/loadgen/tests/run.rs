//! `loadgen run` against an in-process mock-llm, the relay and a small agentstream-shaped server.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions fail the test by panicking"
)]

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use futures_util::stream;
use loadgen::{Relay, RunArgs, Summary};
use mock_llm::{MockLlm, Options};
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

async fn run(args: &[&str]) -> Summary {
    let argv = std::iter::once("loadgen").chain(args.iter().copied());
    let cli = Cli::try_parse_from(argv).unwrap();
    loadgen::run(&cli.run, Vec::new()).await.unwrap()
}

fn chat_body(model: &str) -> String {
    format!(
        r#"{{"model":"{model}","stream":true,"messages":[{{"role":"user","content":"hi {{i}}"}}]}}"#
    )
}

async fn mock() -> MockLlm {
    MockLlm::start_with(Options {
        record_bodies: false,
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn every_stream_from_mock_llm_passes_and_is_timed() {
    let mock = mock().await;
    let url = format!("{}/chat/completions", mock.base_url());
    let body = chat_body("mock;deltas=5;pace_ms=2");
    let pid = std::process::id().to_string();
    let summary = run(&[
        "--url",
        &url,
        "--body",
        &body,
        "--protocol",
        "openai",
        "--streams",
        "8",
        "--ramp-ms",
        "20",
        "--pid",
        &pid,
        "--sample-ms",
        "5",
    ])
    .await;
    assert_eq!(summary.attempted, 8);
    assert_eq!(summary.ok, 8, "{summary:?}");
    assert_eq!(summary.failed_total, 0);
    // The role chunk, 5 deltas, the finish chunk and [DONE].
    assert_eq!(summary.events, 8 * 8);
    assert_eq!(summary.ttfe_ms.count, 8);
    assert_eq!(summary.gap_ms.count, 8 * 7);
    // Paced 2 ms apart upstream.
    assert!(summary.gap_ms.p50 >= 1.0, "{:?}", summary.gap_ms);
    assert!(summary.peak_open >= 1 && summary.peak_open <= 8);
    assert!(summary.sustained);
    let server = summary.server.unwrap();
    assert!(server.rss_peak_kib >= server.rss_before_kib && server.rss_before_kib > 0);
    assert!(summary.server_cpu_us_per_event.is_some());
}

#[tokio::test]
async fn failures_are_counted_by_kind() {
    let mock = mock().await;
    let url = format!("{}/chat/completions", mock.base_url());
    let cases = [
        ("mock;deltas=3;done=0", "missing_done"),
        ("mock;deltas=3;fault=500", "status"),
        ("mock;deltas=3;fault=reset;after=2", "read"),
        ("mock;deltas=3;fault=stall;after=2", "timeout"),
    ];
    for (model, kind) in cases {
        let body = chat_body(model);
        let summary = run(&[
            "--url",
            &url,
            "--body",
            &body,
            "--protocol",
            "openai",
            "--streams",
            "3",
            "--timeout-ms",
            "300",
        ])
        .await;
        assert_eq!(summary.ok, 0, "{model}");
        assert_eq!(
            summary.failed.get(kind),
            Some(&3),
            "{model}: {:?}",
            summary.failed
        );
        assert!(!summary.sustained);
        if kind == "status" {
            assert_eq!(summary.status_codes.get(&500), Some(&3));
        }
    }
    let refused = run(&[
        "--url",
        "http://127.0.0.1:1/v1/chat/completions",
        "--protocol",
        "openai",
    ])
    .await;
    assert_eq!(refused.failed.get("connect"), Some(&1));
}

#[tokio::test]
async fn closed_loop_workers_start_run_after_run() {
    let mock = mock().await;
    let url = format!("{}/chat/completions", mock.base_url());
    let body = chat_body("mock;deltas=2;tools=never");
    let summary = run(&[
        "--url",
        &url,
        "--body",
        &body,
        "--protocol",
        "openai",
        "--streams",
        "2",
        "--duration-ms",
        "200",
    ])
    .await;
    assert!(summary.attempted > 2, "{summary:?}");
    assert_eq!(summary.ok, summary.attempted);
    assert_eq!(summary.peak_open, 2);
    assert!(summary.ok_per_s > 0.0);
    assert_eq!(mock.requests(), summary.attempted);
}

#[tokio::test]
async fn hold_closes_idle_streams_without_failing_them() {
    let mock = mock().await;
    let url = format!("{}/chat/completions", mock.base_url());
    let body = chat_body("mock;ttft_ms=30000;deltas=2");
    let summary = run(&[
        "--url",
        &url,
        "--body",
        &body,
        "--protocol",
        "openai",
        "--streams",
        "3",
        "--hold-ms",
        "100",
    ])
    .await;
    assert_eq!(summary.held, 3, "{summary:?}");
    assert_eq!(
        (summary.ok, summary.failed_total, summary.events),
        (0, 0, 0)
    );
    assert_eq!(summary.peak_open, 3);
    // The mock sees the disconnects and drops its waiting bodies.
    mock.wait_for_open_streams(0).await;
}

#[tokio::test]
async fn relay_forwards_every_upstream_event() {
    let mock = mock().await;
    let relay = Relay::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), &mock.base_url())
        .await
        .unwrap();
    let url = format!("http://{}/v1/chat/completions", relay.addr());
    let body = chat_body("mock;deltas=6");
    let summary = run(&[
        "--url",
        &url,
        "--body",
        &body,
        "--protocol",
        "openai",
        "--streams",
        "5",
    ])
    .await;
    assert_eq!(summary.ok, 5, "{summary:?}");
    // The role chunk, 6 deltas, the finish chunk and [DONE], as upstream sent them.
    assert_eq!(summary.events, 5 * 9);
    assert_eq!(mock.requests(), 5);

    let failing = run(&[
        "--url",
        &url,
        "--body",
        &chat_body("mock;fault=429"),
        "--protocol",
        "openai",
    ])
    .await;
    assert_eq!(failing.status_codes.get(&429), Some(&1));
    relay.shutdown().await;
}

/// A server shaped like agentstream: `POST /c` creates `{"id": "abc"}`; `POST /c/abc/runs`
/// streams seq 1..4 ending with `done`; `POST /c/{other}/runs` is 404; `POST /lossy/runs`
/// skips seq 3; `POST /failed/runs` ends with a failed `done`. `POST /c/abc/start` with a
/// body naming `abc` answers 202 `{"id": "run-abc"}` (a run started without its stream),
/// and `GET /r/run-abc/events` streams that run; other IDs are 404.
async fn agentstream_like() -> SocketAddr {
    fn events(ids: &[u64], status: &str) -> Response {
        let last = ids.len() - 1;
        let events: Vec<Result<Event, Infallible>> = ids
            .iter()
            .enumerate()
            .map(|(n, seq)| {
                let (kind, data) = match n {
                    0 => ("run.started", format!(r#"{{"seq":{seq}}}"#)),
                    n if n == last => (
                        "done",
                        format!(r#"{{"seq":{seq},"type":"done","status":"{status}"}}"#),
                    ),
                    _ => ("delta", format!(r#"{{"seq":{seq},"text":"x"}}"#)),
                };
                Ok(Event::default().id(seq.to_string()).event(kind).data(data))
            })
            .collect();
        let retry = Ok(Event::default().retry(std::time::Duration::from_secs(1)));
        Sse::new(stream::iter(std::iter::once(retry).chain(events))).into_response()
    }
    let app = Router::new()
        .route(
            "/c",
            post(|| async { axum::Json(serde_json::json!({"id": "abc"})) }),
        )
        .route(
            "/c/{id}/runs",
            post(|Path(id): Path<String>| async move {
                if id == "abc" {
                    events(&[1, 2, 3, 4, 5], "completed")
                } else {
                    StatusCode::NOT_FOUND.into_response()
                }
            }),
        )
        .route(
            "/lossy/runs",
            post(|| async { events(&[1, 2, 4, 5], "completed") }),
        )
        .route(
            "/failed/runs",
            post(|| async { events(&[1, 2, 3], "failed") }),
        )
        .route(
            "/c/{id}/start",
            post(|Path(id): Path<String>, body: String| async move {
                if id == "abc" && body.contains("abc") {
                    let run = serde_json::json!({"id": format!("run-{id}"), "status": "queued"});
                    (StatusCode::ACCEPTED, axum::Json(run)).into_response()
                } else {
                    StatusCode::NOT_FOUND.into_response()
                }
            }),
        )
        .route(
            "/r/{id}/events",
            get(|Path(id): Path<String>| async move {
                if id == "run-abc" {
                    events(&[1, 2, 3, 4, 5], "completed")
                } else {
                    StatusCode::NOT_FOUND.into_response()
                }
            }),
        );
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tracker = tokio_util::task::TaskTracker::new();
    tracker.spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn agentstream_streams_are_checked_by_seq_after_setup() {
    let addr = agentstream_like().await;
    let setup = format!("http://{addr}/c");
    let runs = format!("http://{addr}/c/{{id}}/runs");
    let body = r#"{"input": "hello {i}"}"#;
    let good = run(&[
        "--setup-url",
        &setup,
        "--setup-body",
        r#"{"kind":"chat"}"#,
        "--url",
        &runs,
        "--body",
        body,
        "--header",
        "accept: text/event-stream",
        "--streams",
        "4",
        "--gap-event",
        "delta",
    ])
    .await;
    assert_eq!(good.ok, 4, "{good:?}");
    assert_eq!(good.events, 4 * 5);
    // Only delta→delta gaps count: seq 2→3 and 3→4.
    assert_eq!(good.gap_ms.count, 4 * 2);

    let no_setup = run(&["--url", &runs, "--streams", "2"]).await;
    assert_eq!(no_setup.failed.get("status"), Some(&2), "{no_setup:?}");
    assert_eq!(no_setup.status_codes.get(&404), Some(&2));

    let lossy = run(&[
        "--url",
        &format!("http://{addr}/lossy/runs"),
        "--streams",
        "3",
    ])
    .await;
    assert_eq!(lossy.failed.get("seq_lost"), Some(&3), "{lossy:?}");
    assert!(!lossy.sustained);

    let failed = run(&["--url", &format!("http://{addr}/failed/runs")]).await;
    assert_eq!(failed.failed.get("run_failed"), Some(&1), "{failed:?}");

    let bad_setup = run(&[
        "--setup-url",
        &format!("http://{addr}/nowhere"),
        "--url",
        &runs,
    ])
    .await;
    assert_eq!(bad_setup.failed.get("setup"), Some(&1));
}

/// A server shaped like agentstream's AI SDK route: `POST /ai/{finish}` streams one run as
/// UI message chunks ending with a `finish` of that reason and `[DONE]`; each request stores
/// 9 events, counted on `GET /metrics` as `agentstream_events_committed_total`.
async fn ai_sdk_like() -> SocketAddr {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let stored = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&stored);
    let chunks = |finish: String| {
        let chunks = [
            (1, r#"{"type":"start","messageId":"r"}"#.to_owned()),
            (2, r#"{"type":"start-step"}"#.to_owned()),
            (2, r#"{"type":"text-start","id":"text-2"}"#.to_owned()),
            (
                2,
                r#"{"type":"text-delta","id":"text-2","delta":"He"}"#.to_owned(),
            ),
            (
                3,
                r#"{"type":"text-delta","id":"text-2","delta":"l"}"#.to_owned(),
            ),
            (
                4,
                r#"{"type":"text-delta","id":"text-2","delta":"lo"}"#.to_owned(),
            ),
            (6, r#"{"type":"text-end","id":"text-2"}"#.to_owned()),
            (9, r#"{"type":"finish-step"}"#.to_owned()),
            (
                9,
                format!(r#"{{"type":"finish","finishReason":"{finish}"}}"#),
            ),
        ];
        let events: Vec<Result<Event, Infallible>> = chunks
            .into_iter()
            .map(|(seq, data)| Ok(Event::default().id(seq.to_string()).data(data)))
            .chain(std::iter::once(Ok(Event::default().data("[DONE]"))))
            .collect();
        Sse::new(stream::iter(events)).into_response()
    };
    let app = Router::new()
        .route(
            "/ai/{finish}",
            post(move |Path(finish): Path<String>| async move {
                stored.fetch_add(9, Ordering::Relaxed);
                chunks(finish)
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                format!(
                    "# TYPE agentstream_events_committed_total counter\n\
                     agentstream_events_committed_total {}\n",
                    counted.load(Ordering::Relaxed)
                )
            }),
        );
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tracker = tokio_util::task::TaskTracker::new();
    tracker.spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn ai_sdk_streams_are_checked_and_their_stored_events_counted() {
    let addr = ai_sdk_like().await;
    let metrics = format!("http://{addr}/metrics");
    let good = run(&[
        "--url",
        &format!("http://{addr}/ai/stop"),
        "--protocol",
        "ai-sdk",
        "--streams",
        "3",
        "--gap-event",
        "text-delta",
        "--metrics-url",
        &metrics,
        "--pid",
        &std::process::id().to_string(),
    ])
    .await;
    assert_eq!(good.ok, 3, "{good:?}");
    // Nine chunks and [DONE] per stream, nine events stored per run.
    assert_eq!(good.events, 3 * 10);
    assert_eq!(good.stored_events, Some(3 * 9));
    assert!(good.server_cpu_us_per_stored_event.is_some());
    // Only text-delta→text-delta gaps count: two per stream.
    assert_eq!(good.gap_ms.count, 3 * 2);

    let failed = run(&[
        "--url",
        &format!("http://{addr}/ai/error"),
        "--protocol",
        "ai-sdk",
    ])
    .await;
    assert_eq!(failed.failed.get("run_failed"), Some(&1), "{failed:?}");
    assert_eq!(failed.stored_events, None);
}

#[tokio::test]
async fn setup_steps_chain_their_ids_into_a_stream_on_another_server() {
    // Two nodes: the run is started on one and followed on the other.
    let (a, b) = (agentstream_like().await, agentstream_like().await);
    let create = format!("http://{a}/c");
    let start = format!("http://{a}/c/{{id}}/start");
    let follow = format!("http://{b}/r/{{id}}/events");
    // The start step must see the conversation's ID in its URL and body, and the stream the
    // run's: any other ID is 404.
    let good = run(&[
        "--setup-url",
        &create,
        "--setup-body",
        r#"{"kind":"onboarding"}"#,
        "--setup-url",
        &start,
        "--setup-body",
        r#"{"input":"hello {i} in {id}"}"#,
        "--method",
        "GET",
        "--url",
        &follow,
        "--streams",
        "3",
        "--gap-event",
        "delta",
    ])
    .await;
    assert_eq!(good.ok, 3, "{good:?}");
    assert_eq!(good.events, 3 * 5);
    assert_eq!(good.ttfe_ms.count, 3);
    assert_eq!(good.gap_ms.count, 3 * 2);
    assert!(good.sustained);

    // A failing second step fails the stream as `setup`.
    let broken = run(&[
        "--setup-url",
        &create,
        "--setup-url",
        &format!("http://{a}/c/{{id}}/nowhere"),
        "--method",
        "GET",
        "--url",
        &follow,
    ])
    .await;
    assert_eq!(broken.failed.get("setup"), Some(&1), "{broken:?}");

    // Bodies pair with steps by position: one per step or none.
    let cli = Cli::try_parse_from([
        "loadgen",
        "--setup-url",
        &create,
        "--setup-url",
        &start,
        "--setup-body",
        "{}",
        "--url",
        &follow,
    ])
    .unwrap();
    let error = loadgen::run(&cli.run, Vec::new()).await.unwrap_err();
    assert!(
        error.to_string().contains("one body per setup step"),
        "{error}"
    );
}

/// With `--bearer-file`, stream n (or closed-loop worker n) sends line n modulo the file's
/// lines as its bearer credential, on its setup request and its stream alike.
#[tokio::test]
async fn each_worker_sends_its_own_bearer_credential() {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<(&'static str, String)>>> = Arc::default();
    let credential = |headers: &axum::http::HeaderMap| {
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned()
    };
    let (setup_seen, stream_seen) = (Arc::clone(&seen), Arc::clone(&seen));
    let app = Router::new()
        .route(
            "/c",
            post(move |headers: axum::http::HeaderMap| async move {
                setup_seen
                    .lock()
                    .unwrap()
                    .push(("setup", credential(&headers)));
                axum::Json(serde_json::json!({"id": "abc"}))
            }),
        )
        .route(
            "/c/{id}/runs",
            post(move |headers: axum::http::HeaderMap| async move {
                stream_seen
                    .lock()
                    .unwrap()
                    .push(("stream", credential(&headers)));
                let events = [
                    ("run.started", r#"{"seq":1}"#),
                    ("done", r#"{"seq":2,"type":"done","status":"completed"}"#),
                ]
                .into_iter()
                .enumerate()
                .map(|(n, (kind, data))| {
                    Ok::<_, Infallible>(
                        Event::default()
                            .id((n + 1).to_string())
                            .event(kind)
                            .data(data),
                    )
                });
                Sse::new(stream::iter(events.collect::<Vec<_>>()))
            }),
        );
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tracker = tokio_util::task::TaskTracker::new();
    tracker.spawn(async move { axum::serve(listener, app).await });
    let file = std::env::temp_dir().join(format!("loadgen-bearers-{}", std::process::id()));
    std::fs::write(&file, "alpha\n\nbeta\n").unwrap();
    let summary = run(&[
        "--setup-url",
        &format!("http://{addr}/c"),
        "--url",
        &format!("http://{addr}/c/{{id}}/runs"),
        "--bearer-file",
        file.to_str().unwrap(),
        "--header",
        "accept: text/event-stream",
        "--streams",
        "3",
    ])
    .await;
    assert_eq!(summary.ok, 3, "{summary:?}");
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    let expect = |step| {
        [("Bearer alpha", 2), ("Bearer beta", 1)]
            .into_iter()
            .flat_map(move |(value, n)| std::iter::repeat_n((step, value.to_owned()), n))
    };
    let expected: Vec<_> = expect("setup").chain(expect("stream")).collect();
    assert_eq!(seen, expected);
    // One source of credentials at a time.
    let argv = [
        "loadgen",
        "--url",
        "http://127.0.0.1:9/",
        "--bearer-file",
        file.to_str().unwrap(),
        "--header",
        "Authorization: Bearer x",
    ];
    let both = Cli::try_parse_from(argv).unwrap();
    let refused = loadgen::run(&both.run, Vec::new()).await.unwrap_err();
    assert!(
        refused.to_string().contains("give one of them"),
        "{refused}"
    );
    std::fs::remove_file(&file).unwrap();
}
