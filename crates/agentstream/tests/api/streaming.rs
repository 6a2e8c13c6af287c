//! Runs outlive their requests: disconnects, many streams on a tiny pool,
//! resume from any cursor, cancel, and the double-texting policies.

use std::time::Duration;

use futures_util::{StreamExt, future::join_all};
use serde_json::{Value, json};

use crate::{both, helpers::*};

/// 200 concurrent streams on a pool of 2 connections all complete: streams
/// are not bounded by the pool.
async fn streams_outnumber_the_pool(backend: Backend) {
    let app = spawn_app_with(backend, |config| {
        config.db_pool_size = 2;
        config.db_max_overflow = 0;
        config.db_pool_timeout = 60;
    })
    .await;
    assert_eq!(app.state.store().pool().options().get_max_connections(), 2);
    let conversations = join_all((0..200).map(|_| app.create_conversation("onboarding"))).await;
    let runs = conversations.iter().enumerate().map(|(i, conversation)| {
        let app = &app;
        async move {
            let response = app
                .stream_run(conversation, json!({ "input": format!("User {i}") }))
                .await;
            read_all(response).await
        }
    });
    let all = tokio::time::timeout(Duration::from_secs(240), join_all(runs))
        .await
        .expect("200 streams finished within the generous timeout");
    for events in &all {
        assert_eq!(done_status(events), "completed");
        assert!(text_of(events).starts_with("Thanks!"));
    }
    app.pool_settles().await;
    app.stop().await;
}
both!(streams_outnumber_the_pool);

/// Resuming from every cursor k yields exactly events k+1…n, once each, in
/// order, ending with `done`; past the end the answer is 204.
async fn resume_from_every_cursor(backend: Backend) {
    let app = spawn_app(backend).await;
    let conversation = app.create_conversation("onboarding").await;
    let response = app
        .stream_run(&conversation, json!({ "input": "Ada" }))
        .await;
    let run_id = run_id_of(&response);
    let all = read_all(response).await;
    for k in 0..all.len() {
        let by_header = app
            .client
            .get(app.url(&format!("/v1/runs/{run_id}/events")))
            .header("last-event-id", k.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(read_all(by_header).await, all[k..], "Last-Event-ID: {k}");
        let by_query = app
            .client
            .get(app.url(&format!("/v1/runs/{run_id}/events?after={k}")))
            .send()
            .await
            .unwrap();
        assert_eq!(read_all(by_query).await, all[k..], "after={k}");
    }
    let past = app
        .client
        .get(app.url(&format!("/v1/runs/{run_id}/events?after={}", all.len())))
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), 204);
    app.stop().await;
}
both!(resume_from_every_cursor);

/// A live subscriber that joins mid-run gets the rest exactly once.
async fn resume_while_live(backend: Backend) {
    let app = spawn_app_with(backend, |config| config.scripted_delay_ms = 5).await;
    let conversation = app.create_conversation("chat").await;
    let response = app
        .stream_run(&conversation, json!({ "input": "tell me something" }))
        .await;
    let run_id = run_id_of(&response);
    let mut first = Box::pin(events(response));
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(first.next().await.unwrap());
    }
    let resumed = app
        .client
        .get(app.url(&format!("/v1/runs/{run_id}/events")))
        .header("last-event-id", "4")
        .send()
        .await
        .unwrap();
    let rest = read_all(resumed).await;
    let original: Vec<SseEvent> = first.collect().await;
    assert_eq!(rest, original);
    assert_eq!(rest[0].id, "5");
    app.stop().await;
}
both!(resume_while_live);

/// Cancel mid-run: the run ends `cancelled`, the partial reply is kept.
async fn cancel_keeps_the_partial_reply(backend: Backend) {
    let app = spawn_app_with(backend, |config| config.scripted_delay_ms = 20).await;
    let conversation = app.create_conversation("chat").await;
    let response = app
        .stream_run(&conversation, json!({ "input": "a long answer please" }))
        .await;
    let run_id = run_id_of(&response);
    let mut stream = Box::pin(events(response));
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|e: &&SseEvent| e.event == "delta")
        .count()
        < 3
    {
        seen.push(stream.next().await.unwrap());
    }
    for _ in 0..2 {
        let cancelled = app
            .client
            .post(app.url(&format!("/v1/runs/{run_id}/cancel")))
            .send()
            .await
            .unwrap();
        assert_eq!(cancelled.status(), 202);
    }
    seen.extend(stream.collect::<Vec<_>>().await);
    assert_eq!(done_status(&seen), "cancelled");
    let run = app.get_json(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(run["status"], "cancelled");
    let messages = app
        .get_json(&format!("/v1/conversations/{conversation}/messages"))
        .await;
    let reply = &messages["data"][1];
    assert_eq!(reply["status"], "cancelled");
    assert_eq!(reply["content"], text_of(&seen));
    assert!(!text_of(&seen).is_empty());
    let again = app
        .client
        .post(app.url(&format!("/v1/runs/{run_id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["status"], "cancelled");
    app.stop().await;
}
both!(cancel_keeps_the_partial_reply);

/// `multitask`: reject is 409, enqueue waits its turn, interrupt cancels the
/// active run; the same `client_message_id` returns the same run.
async fn double_texting_policies(backend: Backend) {
    let app = spawn_app_with(backend, |config| config.scripted_delay_ms = 10).await;
    let conversation = app.create_conversation("chat").await;
    let runs = format!("/v1/conversations/{conversation}/runs");
    let first = app
        .post_json(
            &runs,
            json!({ "input": "first", "client_message_id": "m1" }),
        )
        .await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let retry = app
        .post_json(
            &runs,
            json!({ "input": "first", "client_message_id": "m1" }),
        )
        .await;
    assert_eq!(retry.status(), 200);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["id"], first["id"]);
    // Another message under the same key is not a retry: refused, not stored.
    let reused = app
        .post_json(
            &runs,
            json!({ "input": "something else", "client_message_id": "m1" }),
        )
        .await;
    assert_eq!(reused.status(), 422);
    let reused: Value = reused.json().await.unwrap();
    let message = reused["error"]["message"].as_str().unwrap();
    assert!(message.contains("client_message_id"), "{message}");
    let rejected = app.post_json(&runs, json!({ "input": "second" })).await;
    assert_eq!(rejected.status(), 409);
    let queued = app
        .post_json(&runs, json!({ "input": "second", "multitask": "enqueue" }))
        .await;
    let queued: Value = queued.json().await.unwrap();
    assert_eq!(queued["status"], "queued");
    let interrupting = app
        .post_json(&runs, json!({ "input": "third", "multitask": "interrupt" }))
        .await;
    let interrupting: Value = interrupting.json().await.unwrap();
    let first_events = app.follow(first["id"].as_str().unwrap()).await;
    assert_eq!(done_status(&first_events), "cancelled");
    let queued_events = app.follow(queued["id"].as_str().unwrap()).await;
    assert_eq!(done_status(&queued_events), "completed");
    let third_events = app.follow(interrupting["id"].as_str().unwrap()).await;
    assert_eq!(done_status(&third_events), "completed");
    let transcript = transcript(&app, &conversation).await;
    let users: Vec<&Value> = transcript
        .iter()
        .filter(|m| m[0] == "user")
        .map(|m| &m[1])
        .collect();
    assert_eq!(
        users,
        ["first", "second", "third"],
        "one user message per run, none twice"
    );
    app.stop().await;
}
both!(double_texting_policies);

/// Shutdown with a run in flight: after the drain time the run ends
/// `interrupted`, its stream gets `done`, the partial reply is kept, and
/// new runs are refused while the server drains.
async fn shutdown_interrupts_and_ends_streams(backend: Backend) {
    let app = spawn_app_with(backend, |config| {
        config.scripted_delay_ms = 200;
        config.drain_secs = 0;
    })
    .await;
    let conversation = app.create_conversation("chat").await;
    let response = app
        .stream_run(&conversation, json!({ "input": "a long answer please" }))
        .await;
    let run_id = run_id_of(&response);
    let mut stream = Box::pin(events(response));
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &SseEvent| e.event == "delta") {
        seen.push(stream.next().await.unwrap());
    }
    app.begin_shutdown();
    seen.extend(stream.collect::<Vec<_>>().await);
    assert_eq!(done_status(&seen), "interrupted");
    assert_eq!(seen.iter().filter(|e| e.event == "done").count(), 1);
    let user = app.state.local_user().id;
    let db = app.stop_keeping_db().await;
    // The shutdown closed the server's pool; read what it left with a new one.
    let store =
        agentstream::store::Store::connect(&db.url, &agentstream::Config::defaults().pool())
            .await
            .unwrap();
    let run = store
        .run(user, run_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.status.as_str(), "interrupted");
    let messages = store.messages(run.conversation_id).await.unwrap();
    assert_eq!(messages[1].status.as_str(), "interrupted");
    assert_eq!(messages[1].content, text_of(&seen));
    store.close().await;
    db.drop_schema().await;
}
both!(shutdown_interrupts_and_ends_streams);
