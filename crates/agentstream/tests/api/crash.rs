//! The real binary under signals: SIGKILL mid-run then restart, and SIGTERM
//! with streams open.

use futures_util::{StreamExt, future::join_all};
use serde_json::{Value, json};

use crate::{both, helpers::*, process::ServerProcess};

async fn start(db: &TestDb, delay_ms: &str) -> ServerProcess {
    ServerProcess::start(
        &[
            "--database-url",
            &db.url,
            "--scripted-delay-ms",
            delay_ms,
            "--drain-secs",
            "2",
            "--max-runs-per-user",
            "1000",
            // The same node after the restart takes back its runs at once.
            "--node-id",
            "crash-test",
        ],
        &[("RUST_LOG", "info")],
    )
    .await
}

/// SIGKILL mid-run, then restart: every run is terminal, every event a
/// client saw is still replayable, and no tool effect is duplicated.
async fn sigkill_then_restart(backend: Backend) {
    let db = TestDb::new(backend).await;
    // A word a second: each reply (about ten words) outlasts the four
    // starts below by several seconds, even on a loaded machine.
    let mut server = start(&db, "1000").await;
    let client = client();
    let mut seen = Vec::new();
    for i in 0..4 {
        let conversation: Value = client
            .post(server.url("/v1/conversations"))
            .json(&json!({ "kind": "onboarding" }))
            .fetch_json()
            .await;
        let response = client
            .post(server.url(&format!(
                "/v1/conversations/{}/runs",
                conversation["id"].as_str().unwrap()
            )))
            .header("accept", "text/event-stream")
            .json(&json!({ "input": format!("Person {i}") }))
            .send()
            .await
            .unwrap();
        let run_id = response.headers()["x-run-id"].to_str().unwrap().to_owned();
        // Read into the reply (past the tool call), then leave the stream open.
        let mut stream = Box::pin(events(response));
        let mut got = Vec::new();
        while got
            .iter()
            .filter(|e: &&SseEvent| e.event == "delta")
            .count()
            < 1
        {
            got.push(stream.next().await.unwrap());
        }
        seen.push((run_id, got, stream));
    }
    server.signal("KILL").await;
    assert!(!server.wait().await.success());

    let mut server = start(&db, "1").await;
    let recovered = server.wait_for_line("marked runs left open").await;
    assert!(recovered.contains("runs=4"), "{recovered}");
    for (run_id, got, _stream) in &seen {
        let run: Value = client
            .get(server.url(&format!("/v1/runs/{run_id}")))
            .fetch_json()
            .await;
        assert_eq!(run["status"], "interrupted");
        let response = client
            .get(server.url(&format!("/v1/runs/{run_id}/events")))
            .send()
            .await
            .unwrap();
        let replay = read_all(response).await;
        assert_eq!(
            &replay[..got.len()],
            &got[..],
            "what the client saw is replayable"
        );
        assert_eq!(done_status(&replay), "interrupted");
        // Resuming after what the client saw gets the rest and a clean end.
        let response = client
            .get(server.url(&format!("/v1/runs/{run_id}/events")))
            .header("last-event-id", got.len().to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(read_all(response).await, replay[got.len()..]);
        let messages: Value = client
            .get(server.url(&format!(
                "/v1/conversations/{}/messages",
                run["conversation_id"].as_str().unwrap()
            )))
            .fetch_json()
            .await;
        let messages = messages["data"].as_array().unwrap();
        let tools = messages.iter().filter(|m| m["role"] == "tool").count();
        assert_eq!(tools, 1, "the tool call was applied once");
        let partial = messages.last().unwrap();
        assert_eq!(partial["status"], "interrupted");
        assert!(
            partial["content"]
                .as_str()
                .unwrap()
                .starts_with(&text_of(got)),
            "the partial reply is kept"
        );
    }
    server.signal("TERM").await;
    assert!(server.wait().await.success());
    assert!(server.warnings().is_empty(), "{:#?}", server.warnings());
    db.drop_schema().await;
}
both!(sigkill_then_restart);

/// SIGTERM with 200 streams open: the server stops accepting, interrupts what
/// the drain time does not finish, ends every stream with `done`, and
/// exits 0 without an ERROR line.
async fn sigterm_with_open_streams(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut server = start(&db, "200").await;
    let client = client();
    let streams = (0..200).map(|i| {
        let client = client.clone();
        let url = server.url("/api/v1/chat/stream");
        async move {
            let response = client
                .post(url)
                .json(&json!({ "message": format!("long story {i}") }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let mut stream = Box::pin(events(response));
            let first = stream.next().await.unwrap();
            (first, stream)
        }
    });
    let opened = join_all(streams).await;
    server.signal("TERM").await;
    let ends = join_all(opened.into_iter().map(|(first, stream)| async move {
        let mut all = vec![first];
        all.extend(stream.collect::<Vec<_>>().await);
        all
    }))
    .await;
    for all in &ends {
        assert_eq!(
            all.iter().filter(|e| e.event == "done").count(),
            1,
            "{all:#?}\n{}",
            server.log.join("\n")
        );
        let status = done_status(all);
        assert!(status == "interrupted" || status == "completed", "{status}");
    }
    assert!(
        ends.iter().any(|all| done_status(all) == "interrupted"),
        "the drain time was too short to finish"
    );
    assert!(server.wait().await.success(), "exit 0");
    assert!(server.warnings().is_empty(), "{:#?}", server.warnings());
    assert!(server.log.iter().any(|l| l.contains("shutdown 6/6")));
    db.drop_schema().await;
}
both!(sigterm_with_open_streams);
