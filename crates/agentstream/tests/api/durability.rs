//! The event log's guarantees at every event: disconnect after any k, cancel
//! after any k, `on_disconnect=cancel`, concurrent starts, and retention.

use futures_util::{StreamExt, future::join_all};
use serde_json::{Value, json};

use crate::{both, helpers::*};

/// Disconnect after every event k: the stored transcript equals the
/// uninterrupted one.
async fn disconnect_after_every_event(backend: Backend) {
    let app = spawn_app(backend).await;
    let whole = app.create_conversation("onboarding").await;
    let reference = read_all(app.stream_run(&whole, json!({ "input": "Ada" })).await).await;
    let expected = transcript(&app, &whole).await;
    for k in 1..reference.len() {
        let conversation = app.create_conversation("onboarding").await;
        let response = app
            .stream_run(&conversation, json!({ "input": "Ada" }))
            .await;
        let run_id = run_id_of(&response);
        let seen: Vec<SseEvent> = events(response).take(k).collect().await;
        assert_eq!(seen.len(), k);
        assert_eq!(
            done_status(&app.follow(&run_id).await),
            "completed",
            "k={k}"
        );
        assert_eq!(transcript(&app, &conversation).await, expected, "k={k}");
    }
    app.pool_settles().await;
    app.stop().await;
}
both!(disconnect_after_every_event);

/// Cancel after every event k: the run ends `cancelled` (or had completed
/// already), the partial reply is stored, and the tool call's effect is
/// applied once or not at all.
async fn cancel_after_every_event(backend: Backend) {
    let app = spawn_app_with(backend, |config| config.scripted_delay_ms = 10).await;
    let probe = app.create_conversation("chat").await;
    let n = read_all(
        app.stream_run(&probe, json!({ "input": "what is my profile" }))
            .await,
    )
    .await
    .len();
    for k in 1..n {
        let conversation = app.create_conversation("chat").await;
        let response = app
            .stream_run(&conversation, json!({ "input": "what is my profile" }))
            .await;
        let run_id = run_id_of(&response);
        let mut stream = Box::pin(events(response));
        let mut seen = Vec::new();
        for _ in 0..k {
            seen.push(stream.next().await.unwrap());
        }
        let cancel = app
            .client
            .post(app.url(&format!("/v1/runs/{run_id}/cancel")))
            .send()
            .await
            .unwrap();
        assert_eq!(cancel.status(), 202);
        seen.extend(stream.collect::<Vec<_>>().await);
        assert_eq!(seen.iter().filter(|e| e.event == "done").count(), 1);
        let status = done_status(&seen);
        let messages = app
            .get_json(&format!("/v1/conversations/{conversation}/messages"))
            .await;
        let messages = messages["data"].as_array().unwrap();
        let last = messages.last().unwrap();
        match status.as_str() {
            "cancelled" => {
                // The text of the step the cancel cut short is kept; a cancel
                // that landed between steps leaves no assistant message behind.
                let since = seen
                    .iter()
                    .rposition(|e| e.event == "tool.result")
                    .map_or(0, |i| i + 1);
                let partial = text_of(&seen[since..]);
                if last["role"] == "assistant" {
                    assert_eq!(last["status"], "cancelled", "k={k}");
                    assert_eq!(last["content"], partial, "k={k}");
                } else {
                    assert_eq!(partial, "", "k={k}");
                }
            }
            // The cancel came after the reply's end (a slow test machine):
            // nothing to cut, and the checks below still hold.
            "completed" => assert_eq!(last["status"], "complete", "k={k}"),
            other => panic!("k={k}: {other}"),
        }
        let calls = seen.iter().filter(|e| e.event == "tool.call").count();
        let results = seen.iter().filter(|e| e.event == "tool.result").count();
        assert_eq!(calls, results, "k={k}: a call announced is applied");
        let tools = messages.iter().filter(|m| m["role"] == "tool").count();
        assert_eq!(tools, results, "k={k}: applied once or not at all");
    }
    app.stop().await;
}
both!(cancel_after_every_event);

/// `on_disconnect=cancel`: the run is cancelled when its last subscriber leaves.
async fn on_disconnect_cancel(backend: Backend) {
    let app = spawn_app_with(backend, |config| config.scripted_delay_ms = 50).await;
    let conversation = app.create_conversation("chat").await;
    let response = app
        .stream_run(
            &conversation,
            json!({ "input": "a long answer", "on_disconnect": "cancel" }),
        )
        .await;
    let run_id = run_id_of(&response);
    let seen: Vec<SseEvent> = events(response).take(3).collect().await;
    assert_eq!(seen.len(), 3);
    // Watch without subscribing (a subscriber would keep the run alive).
    let run = app.run_until_terminal(&run_id).await;
    assert_eq!(run["status"], "cancelled");
    let rest = app.follow(&run_id).await;
    assert_eq!(done_status(&rest), "cancelled");
    app.stop().await;
}
both!(on_disconnect_cancel);

/// Concurrent starts: one `client_message_id` makes one run and one user
/// message; with `reject`, exactly one of many concurrent starts wins.
async fn concurrent_starts(backend: Backend) {
    let app = spawn_app_with(backend, |config| config.scripted_delay_ms = 20).await;
    let conversation = app.create_conversation("chat").await;
    let path = format!("/v1/conversations/{conversation}/runs");
    let same = join_all(
        (0..20).map(|_| app.post_json(&path, json!({ "input": "hi", "client_message_id": "k1" }))),
    )
    .await;
    let mut ids = Vec::new();
    for response in same {
        assert!(
            matches!(response.status().as_u16(), 200 | 202),
            "{}",
            response.status()
        );
        let run: Value = response.json().await.unwrap();
        ids.push(run["id"].as_str().unwrap().to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one run for one client_message_id");
    assert_eq!(done_status(&app.follow(&ids[0]).await), "completed");

    let racing =
        join_all((0..20).map(|i| app.post_json(&path, json!({ "input": format!("racer {i}") }))))
            .await;
    let statuses: Vec<u16> = racing.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        19,
        "{statuses:?}"
    );
    let winner: Value = racing
        .into_iter()
        .find(|r| r.status() == 202)
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        done_status(&app.follow(winner["id"].as_str().unwrap()).await),
        "completed"
    );
    let users = transcript(&app, &conversation)
        .await
        .iter()
        .filter(|m| m[0] == "user")
        .count();
    assert_eq!(users, 2, "no message from a refused or repeated start");
    app.stop().await;
}
both!(concurrent_starts);

/// Retention: the event logs of finished runs go; the transcript stays.
async fn retention_prunes_event_logs(backend: Backend) {
    let app = spawn_app(backend).await;
    let conversation = app.create_conversation("onboarding").await;
    let response = app
        .stream_run(&conversation, json!({ "input": "Ada" }))
        .await;
    let run_id = run_id_of(&response);
    read_all(response).await;
    let before = transcript(&app, &conversation).await;
    let removed = app
        .state
        .store()
        .prune_events(&agentstream::store::now())
        .await
        .unwrap();
    assert!(removed > 5, "{removed}");
    assert_eq!(transcript(&app, &conversation).await, before);
    let events = app
        .client
        .get(app.url(&format!("/v1/runs/{run_id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 204);
    app.stop().await;
}
both!(retention_prunes_event_logs);

/// A subscriber that falls far behind the live channel catches up from the
/// store: every event once, in order, and the run was never slowed.
async fn a_slow_subscriber_reads_from_the_store(backend: Backend) {
    let app = spawn_app_with(backend, |config| config.scripted_delay_ms = 0).await;
    let conversation = app.create_conversation("chat").await;
    let words: Vec<String> = (0..600).map(|i| format!("w{i}")).collect();
    let started = app
        .post_json(
            &format!("/v1/conversations/{conversation}/runs"),
            json!({ "input": words.join(" ") }),
        )
        .await;
    let run: Value = started.json().await.unwrap();
    let run_id: uuid::Uuid = run["id"].as_str().unwrap().parse().unwrap();
    // Subscribed, but not read until the run is over: it lags far behind.
    let slow = app.state.runs().subscribe(run_id, 0);
    let fast = app.follow(&run_id.to_string()).await;
    assert!(fast.len() > 600, "{}", fast.len());
    let slow: Vec<agentstream::runs::Delivery> = slow.collect().await;
    let seqs: Vec<i64> = slow
        .iter()
        .map(|d| match d {
            agentstream::runs::Delivery::Event(e) => e.seq,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(seqs, (1..=fast.len() as i64).collect::<Vec<_>>());
    app.stop().await;
}
both!(a_slow_subscriber_reads_from_the_store);

/// The event log commits on a connection of its own, beside the pool: a
/// run's events reach its client while every connection of the pool is
/// taken (here by the test), so streams never wait behind run starts and
/// tool calls queued for a connection.
async fn events_commit_while_the_pool_is_taken(backend: Backend) {
    let app = spawn_app_with(backend, |config| {
        config.db_pool_size = 1;
        config.db_max_overflow = 0;
        config.scripted_delay_ms = 5;
    })
    .await;
    let conversation = app.create_conversation("chat").await;
    let response = app
        .stream_run(
            &conversation,
            json!({ "input": "tell me about the weather" }),
        )
        .await;
    let mut stream = Box::pin(events(response));
    let first = stream.next().await.expect("the run's first event");
    assert_eq!(first.event, "run.started");
    let taken = app.state.store().pool().acquire().await.unwrap();
    let rest: Vec<SseEvent> = stream.collect().await;
    assert!(
        rest.iter().filter(|e| e.event == "delta").count() > 1,
        "{rest:?}"
    );
    assert_eq!(done_status(&rest), "completed");
    drop(taken);
    app.pool_settles().await;
    app.stop().await;
}
both!(events_commit_while_the_pool_is_taken);

/// What the log stores is what went out, byte for byte, whatever the text:
/// quotes, backslashes, escapes written out, line and paragraph separators,
/// emoji and a long message, all in the events of one batch (the event log
/// hands the database a batch as one JSON array).
async fn the_log_keeps_every_character(backend: Backend) {
    let app = spawn_app(backend).await;
    let input = format!(
        "Ada \"the\" \\Countess\\ \\u0000 \\n\n\t\u{2028}\u{2029} 🦀 é {}",
        "x".repeat(20_000)
    );
    let conversation = app.create_conversation("onboarding").await;
    let response = app
        .stream_run(&conversation, json!({ "input": input }))
        .await;
    let run_id = run_id_of(&response);
    let live = read_all(response).await;
    assert_eq!(done_status(&live), "completed");
    // The tool call that saves it carries it (escaped as JSON, at any depth).
    assert!(
        live.iter()
            .any(|e| e.data.to_string().contains("🦀 é xxxxxxxx")),
        "the input reaches the events: {live:#?}"
    );
    let stored = app.follow(&run_id).await;
    let pairs = |events: &[SseEvent]| -> Vec<(String, String, Value)> {
        events
            .iter()
            .map(|e| (e.id.clone(), e.event.clone(), e.data.clone()))
            .collect()
    };
    assert_eq!(pairs(&stored), pairs(&live));
    app.stop().await;
}
both!(the_log_keeps_every_character);

/// A run's events are kept under its number in the log (`runs.event_key`),
/// which its driver holds while it writes: a number is never given twice,
/// not even after its run was deleted with its conversation, and the newest
/// run's number is the one a start would give again if numbers were
/// counted from the runs left.
async fn a_deleted_runs_key_is_not_given_again(backend: Backend) {
    let app = spawn_app(backend).await;
    let key_of = |run_id: String| {
        let pool = app.state.store().pool().clone();
        async move {
            let row = sqlx::query("SELECT event_key FROM runs WHERE id = $1")
                .bind(run_id)
                .fetch_one(&pool)
                .await
                .unwrap();
            sqlx::Row::get::<i64, _>(&row, "event_key")
        }
    };
    let first = app.create_conversation("onboarding").await;
    let response = app
        .stream_run(&first, json!({ "input": "Ada Lovelace" }))
        .await;
    let first_run = run_id_of(&response);
    assert_eq!(done_status(&read_all(response).await), "completed");
    let first_key = key_of(first_run.clone()).await;
    let deleted = app
        .client
        .delete(app.url(&format!("/v1/conversations/{first}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let second = app.create_conversation("onboarding").await;
    let response = app
        .stream_run(&second, json!({ "input": "Grace Hopper" }))
        .await;
    let second_run = run_id_of(&response);
    let live = read_all(response).await;
    assert_eq!(done_status(&live), "completed");
    assert!(
        key_of(second_run.clone()).await > first_key,
        "the deleted run's number was given again"
    );
    let stored = app.follow(&second_run).await;
    assert_eq!(stored.len(), live.len());
    let left = sqlx::query("SELECT COUNT(*) AS n FROM run_events WHERE run_key = $1")
        .bind(first_key)
        .fetch_one(app.state.store().pool())
        .await
        .unwrap();
    assert_eq!(
        sqlx::Row::get::<i64, _>(&left, "n"),
        0,
        "the deleted run's events are gone"
    );
    app.stop().await;
}
both!(a_deleted_runs_key_is_not_given_again);
