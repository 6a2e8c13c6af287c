//! Tool calls applied exactly once, refusals that leave no effect, and the
//! seed routes' checks before a run starts.

use std::sync::Arc;

use agentstream::{
    llm::{ToolCall, ToolSpec},
    tools::{self, AgentTool, Caller, Effects, Tool, ToolContext, ToolError, ToolInput},
};
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use sqlx::AnyConnection;
use uuid::Uuid;

use crate::{both, helpers::*};

/// The stored messages of a conversation, oldest first.
async fn messages_of(app: &TestApp, conversation: &str) -> Vec<Value> {
    let messages = app
        .get_json(&format!("/v1/conversations/{conversation}/messages"))
        .await;
    messages["data"].as_array().unwrap().clone()
}

/// A finished onboarding run that saved `answer` as the name: its context
/// and its one tool message.
async fn onboarded(app: &TestApp, answer: &str) -> (ToolContext, Value) {
    let conversation = app.create_conversation("onboarding").await;
    let events = read_all(
        app.stream_run(&conversation, json!({ "input": answer }))
            .await,
    )
    .await;
    assert_eq!(done_status(&events), "completed");
    let messages = messages_of(app, &conversation).await;
    let tools: Vec<&Value> = messages.iter().filter(|m| m["role"] == "tool").collect();
    assert_eq!(tools.len(), 1, "one tool message: {messages:#?}");
    let tool_message = tools[0].clone();
    let ctx = ToolContext {
        user_id: app.state.local_user().id,
        conversation_id: conversation.parse().unwrap(),
        run_id: tool_message["run_id"].as_str().unwrap().parse().unwrap(),
        caller: Arc::new(Caller {
            subject: "local".to_owned(),
            claims: None,
        }),
    };
    (ctx, tool_message)
}

/// A tool that writes a profile row on the connection it is given, then
/// refuses the call, saying how many rows it wrote.
#[derive(Debug)]
struct WritesThenRefuses(ToolSpec);

impl WritesThenRefuses {
    fn tool() -> Arc<AgentTool> {
        let spec = ToolSpec {
            name: "writes_then_refuses".to_owned(),
            description: "Writes a probe row, then refuses.".to_owned(),
            parameters: json!({ "type": "object", "properties": {} }),
        };
        Arc::new(AgentTool::new(Arc::new(WritesThenRefuses(spec)), 16 * 1024).unwrap())
    }
}

impl Tool for WritesThenRefuses {
    fn spec(&self) -> &ToolSpec {
        &self.0
    }

    fn effects(&self) -> Effects {
        Effects::OwnDatabase
    }

    fn call<'a>(
        &'a self,
        input: ToolInput<'a>,
        conn: Option<&'a mut AnyConnection>,
    ) -> BoxFuture<'a, Result<Value, ToolError>> {
        let ctx = input.ctx;
        let conn = conn.unwrap();
        Box::pin(async move {
            let written = sqlx::query(
                "INSERT INTO profiles (user_id, field, value, updated_at) \
                 VALUES ($1, 'probe', 'x', '2026-01-01T00:00:00.000000Z')",
            )
            .bind(ctx.user_id.to_string())
            .execute(&mut *conn)
            .await?;
            Err(ToolError::Invalid(format!(
                "refused after writing {} row",
                written.rows_affected()
            )))
        })
    }
}

/// A call the run recorded already is not applied again: executing it with
/// the same call id and other arguments returns the first stored result,
/// and leaves the profile and the transcript as they were.
async fn a_recorded_call_is_applied_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let (ctx, tool_message) = onboarded(&app, "Ada").await;
    let call_id = tool_message["tool_call_id"].as_str().unwrap().to_owned();
    let conversation = ctx.conversation_id.to_string();
    let before = messages_of(&app, &conversation).await;

    let update_profile = app
        .state
        .runs()
        .agents()
        .get("onboarding")
        .unwrap()
        .tools
        .iter()
        .find(|tool| tool.spec().name == "update_profile")
        .unwrap()
        .clone();
    let executed = tools::execute(
        app.state.store(),
        &ctx,
        Some(update_profile),
        &ToolCall {
            id: call_id.clone(),
            name: "update_profile".to_owned(),
            arguments: json!({ "field": "name", "value": "Grace" }).to_string(),
            upstream_id: None,
        },
        std::future::pending(),
    )
    .await
    .unwrap();

    assert_eq!(executed.record.call_id, call_id);
    assert!(!executed.record.is_error);
    assert_eq!(executed.record.output, tool_message["content"]);
    assert_eq!(executed.output["value"], "Ada");
    let arguments: Value = serde_json::from_str(&executed.record.arguments).unwrap();
    assert_eq!(arguments["value"], "Ada", "the first call's arguments");
    let profile = app.get_json("/v1/profile").await;
    assert_eq!(profile["fields"], json!({ "name": "Ada" }));
    assert_eq!(messages_of(&app, &conversation).await, before);
    app.stop().await;
}
both!(a_recorded_call_is_applied_once);

/// A refused call keeps none of the tool's writes: its refusal is recorded
/// with a tool message, and the same call again returns that record and
/// adds nothing.
async fn a_refused_call_keeps_no_effect(backend: Backend) {
    let app = spawn_app(backend).await;
    let (ctx, _) = onboarded(&app, "Ada").await;
    let conversation = ctx.conversation_id.to_string();
    let call_id = format!("probe_{}", Uuid::now_v7().simple());
    let call = ToolCall {
        id: call_id.clone(),
        name: "writes_then_refuses".to_owned(),
        arguments: "{}".to_owned(),
        upstream_id: None,
    };
    let tool = WritesThenRefuses::tool();

    let first = tools::execute(
        app.state.store(),
        &ctx,
        Some(tool.clone()),
        &call,
        std::future::pending(),
    )
    .await
    .unwrap();
    assert!(first.record.is_error);
    assert_eq!(first.record.call_id, call_id);
    assert_eq!(
        first.output,
        json!({ "error": "refused after writing 1 row" }),
        "the tool wrote its row before refusing"
    );
    let profile = app.get_json("/v1/profile").await;
    assert_eq!(
        profile["fields"],
        json!({ "name": "Ada" }),
        "the probe row was rolled back"
    );
    let after_first = messages_of(&app, &conversation).await;
    let answers: Vec<&Value> = after_first
        .iter()
        .filter(|m| m["tool_call_id"] == call_id.as_str())
        .collect();
    assert_eq!(answers.len(), 1, "{after_first:#?}");
    assert_eq!(answers[0]["role"], "tool");
    assert_eq!(answers[0]["content"], first.record.output.as_str());
    assert_eq!(answers[0]["run_id"], ctx.run_id.to_string());

    let again = tools::execute(
        app.state.store(),
        &ctx,
        Some(tool),
        &call,
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(again.record, first.record);
    assert_eq!(again.output, first.output);
    assert_eq!(messages_of(&app, &conversation).await, after_first);
    let profile = app.get_json("/v1/profile").await;
    assert_eq!(profile["fields"], json!({ "name": "Ada" }));
    app.stop().await;
}
both!(a_refused_call_keeps_no_effect);

/// A seed request refused by the per-user run limit creates no
/// conversation: the new conversation is stored with its run or not at all.
async fn a_refused_seed_run_leaves_no_conversation(backend: Backend) {
    let app = spawn_app_with(backend, |config| {
        config.max_runs_per_user = 1;
        config.scripted_delay_ms = 100;
    })
    .await;
    // Left unread for now: its run stays active.
    let first = app
        .post_json("/api/v1/chat/stream", json!({ "message": "hello" }))
        .await;
    assert_eq!(first.status(), 200);
    let conversation = first.headers()["x-conversation-id"]
        .to_str()
        .unwrap()
        .to_owned();

    let refused = app
        .post_json("/api/v1/chat/stream", json!({ "message": "hello" }))
        .await;
    assert_eq!(refused.headers()["retry-after"], "1");
    let (status, body) = status_and_body(refused).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "too_many_runs");
    let listed = app.get_json("/v1/conversations").await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [conversation.as_str()],
        "the refused request made none"
    );

    let events = read_all(first).await;
    assert_eq!(done_status(&events), "completed");
    app.stop().await;
}
both!(a_refused_seed_run_leaves_no_conversation);

/// The onboarding seed route refuses a chat conversation with 422, naming
/// both kinds, and adds nothing to it.
async fn the_seed_route_checks_the_kind(backend: Backend) {
    let app = spawn_app(backend).await;
    let chat = app.create_conversation("chat").await;
    let response = app
        .post_json(
            "/api/v1/chat/onboarding/stream",
            json!({ "message": "Ada", "conversation_id": chat }),
        )
        .await;
    let (status, body) = status_and_body(response).await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["code"], "invalid_request");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("chat") && message.contains("onboarding"),
        "{message}"
    );
    assert_eq!(messages_of(&app, &chat).await, Vec::<Value>::new());
    let profile = app.get_json("/v1/profile").await;
    assert_eq!(profile["fields"], json!({}));
    app.stop().await;
}
both!(the_seed_route_checks_the_kind);
