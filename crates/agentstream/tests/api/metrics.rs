//! `GET /metrics`: a run moves the run, event, upstream and pool figures,
//! and requests are counted by route template, never by raw path.
//!
//! The recorder is one per process and tests run in parallel, so every check
//! is on an increase (or a lower bound), never on an exact value.

use std::collections::HashMap;

use serde_json::json;

use crate::{both, helpers::*};

/// One scrape: each series (`name{labels}`) and its value.
struct Scrape {
    text: String,
    series: HashMap<String, f64>,
}

impl Scrape {
    /// The series' value; 0 when it was not recorded yet.
    fn value(&self, series: &str) -> f64 {
        self.series.get(series).copied().unwrap_or(0.0)
    }

    fn has(&self, series: &str) -> bool {
        self.series.contains_key(series)
    }
}

async fn scrape(app: &TestApp) -> Scrape {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    let series = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse::<f64>().unwrap())
        })
        .collect();
    Scrape { text, series }
}

/// Asserts that `series` grew by at least `by` between the scrapes.
fn grew(before: &Scrape, after: &Scrape, series: &str, by: f64) {
    let (was, is) = (before.value(series), after.value(series));
    assert!(
        is - was >= by,
        "{series}: {was} before, {is} after; expected it to grow by {by} or more\n{}",
        after.text
    );
}

async fn a_run_moves_the_figures(backend: Backend) {
    let app = spawn_app(backend).await;
    let before = scrape(&app).await;

    let response = app
        .post_json(
            "/api/v1/chat/onboarding/stream",
            json!({ "message": "Ada Lovelace" }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let events = read_all(response).await;
    assert_eq!(done_status(&events), "completed");
    let run_id = events[0].data["run_id"].as_str().unwrap().to_owned();
    let conversation = events[0].data["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Requests with IDs in their paths, matched and unmatched.
    app.get_json(&format!("/v1/runs/{run_id}")).await;
    app.get_json(&format!("/v1/conversations/{conversation}/messages"))
        .await;
    let missing = app
        .client
        .get(app.url(&format!("/no/such/route/{run_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    app.pool_settles().await;

    let after = scrape(&app).await;

    // Runs: started, finished by status; the gauges are there.
    grew(&before, &after, "agentstream_runs_started_total", 1.0);
    grew(
        &before,
        &after,
        r#"agentstream_runs_finished_total{status="completed"}"#,
        1.0,
    );
    assert!(after.has("agentstream_runs_active"), "{}", after.text);
    assert!(after.has("agentstream_runs_queued"), "{}", after.text);
    // The stream's open count went up and back down (other tests may hold
    // streams open meanwhile, so only its presence is checked).
    assert!(after.has("agentstream_subscribers"), "{}", after.text);

    // Events: every event of the run was committed, in batches.
    grew(
        &before,
        &after,
        "agentstream_events_committed_total",
        events.len() as f64,
    );
    grew(
        &before,
        &after,
        "agentstream_event_commit_batch_size_count",
        1.0,
    );
    grew(
        &before,
        &after,
        "agentstream_first_event_seconds_count",
        1.0,
    );
    grew(
        &before,
        &after,
        r#"agentstream_upstream_first_token_seconds_count{agent="onboarding"}"#,
        1.0,
    );

    // The pool: sampled gauges and the acquire-time histogram.
    assert!(
        after.value("agentstream_db_pool_connections") >= 1.0,
        "{}",
        after.text
    );
    assert!(
        after.has("agentstream_db_pool_idle_connections"),
        "{}",
        after.text
    );
    assert_eq!(after.value("agentstream_db_pool_max_connections"), 5.0);
    assert_eq!(after.value("agentstream_db_up"), 1.0);
    grew(
        &before,
        &after,
        "agentstream_db_pool_acquire_seconds_count",
        1.0,
    );

    // SQLite's write turn, held by the event log's commits and by the
    // run's other writes (its start, its tool call).
    if backend == Backend::Sqlite {
        for holder in ["event_log", "transaction"] {
            grew(
                &before,
                &after,
                &format!(
                    r#"agentstream_db_write_turn_seconds_count{{phase="held",holder="{holder}"}}"#
                ),
                1.0,
            );
        }
    }

    // HTTP requests, by route template; never a raw ID in a label.
    grew(
        &before,
        &after,
        r#"agentstream_http_requests_total{method="POST",route="/api/v1/chat/onboarding/stream",status="200"}"#,
        1.0,
    );
    grew(
        &before,
        &after,
        r#"agentstream_http_requests_total{method="GET",route="/v1/runs/{id}",status="200"}"#,
        1.0,
    );
    grew(
        &before,
        &after,
        r#"agentstream_http_requests_total{method="GET",route="/v1/conversations/{id}/messages",status="200"}"#,
        1.0,
    );
    grew(
        &before,
        &after,
        r#"agentstream_http_requests_total{method="GET",route="unmatched",status="404"}"#,
        1.0,
    );
    assert!(
        after.has(r#"agentstream_http_requests_total{method="GET",route="/metrics",status="200"}"#),
        "{}",
        after.text
    );
    assert!(
        after.has(
            r#"agentstream_http_request_duration_seconds_count{method="GET",route="/v1/runs/{id}"}"#
        ),
        "{}",
        after.text
    );
    for id in [&run_id, &conversation] {
        assert!(
            !after.text.contains(id.as_str()),
            "a raw ID in a label:\n{}",
            after.text
        );
    }
    app.stop().await;
}
both!(a_run_moves_the_figures);

/// Every response carries a request ID: the client's when it is sane, else a
/// new one.
async fn requests_carry_an_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-42");
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "not sane")
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    app.stop().await;
}
both!(requests_carry_an_id);
