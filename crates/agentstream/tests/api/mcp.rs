//! MCP servers as tool sources, end to end, against reference servers
//! nobody on the project wrote: npm's "everything" server and PyPI's
//! `mcp-server-time`, over stdio, installed by `scripts/mcp-servers.sh`.
//! The model is the replaying upstream. The "everything" server runs
//! behind `tee`, which copies what agentstream sends it into a file, so a
//! test can read the cancellation notifications it was sent.

use std::{path::Path, time::Duration};

use agentstream::{App, tools::mcp::ServerStatus};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::{
    both,
    helpers::*,
    replay::{Replay, rule, tool_call},
};

/// A path the install script exported, or a failure saying how to get it.
fn installed(var: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: the MCP tests need the reference MCP servers; install them \
             with `source scripts/mcp-servers.sh && ensure_mcp_servers` (scripts/test.sh does)"
        )
    });
    assert!(Path::new(&path).exists(), "{var}={path} does not exist");
    path
}

/// The "everything" server's entry script.
pub(crate) fn everything() -> String {
    installed("AGENTSTREAM_TEST_MCP_EVERYTHING")
}

/// `mcp-server-time`.
fn time_server() -> String {
    installed("AGENTSTREAM_TEST_MCP_TIME")
}

/// A server name no other test uses: metrics are per process.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::now_v7().simple().to_string()[24..]
    )
}

/// The "everything" server behind `tee`, as `[mcp.NAME]` with these
/// `settings`: what it is sent is appended to `log`.
fn everything_table(name: &str, log: &Path, settings: &str) -> String {
    format!(
        r#"
[mcp.{name}]
command = "sh"
args = ["-c", 'tee -a "$TEE_LOG" | node "$ENTRY" stdio']
env.TEE_LOG = "{log}"
env.ENTRY = "{entry}"
env.GREETING = {{ env = "CARGO_PKG_NAME" }}
{settings}
"#,
        log = log.display(),
        entry = everything(),
    )
}

/// What a test's server runs with.
struct Setup {
    app: TestApp,
    _dir: tempfile::TempDir,
    replay: Replay,
    conversation: String,
    /// The "everything" server's `[mcp.NAME]`.
    everything: String,
    /// What it was sent.
    log: std::path::PathBuf,
}

/// An agent with every tool of the "everything" server and the time
/// server's `get_current_time`, plus `extra` tables.
async fn setup(backend: Backend, extra: &str) -> Setup {
    let replay = Replay::start(
        vec![
            rule(
                "echo it",
                vec![tool_call(
                    "call_echo",
                    "everything__echo",
                    json!({"message": "hi"}),
                )],
            ),
            rule(
                "echo again",
                vec![tool_call(
                    "call_echo_again",
                    "everything__echo",
                    json!({"message": "hi"}),
                )],
            ),
            rule(
                "what time",
                vec![tool_call(
                    "call_time",
                    "time__get_current_time",
                    json!({"timezone": "Europe/Paris"}),
                )],
            ),
            rule(
                "time on mars",
                vec![tool_call(
                    "call_mars",
                    "time__get_current_time",
                    json!({"timezone": "Mars/Olympus"}),
                )],
            ),
            rule(
                "weather",
                vec![tool_call(
                    "call_weather",
                    "everything__get-structured-content",
                    json!({"location": "Chicago"}),
                )],
            ),
            rule(
                "environment",
                vec![tool_call("call_env", "everything__get-env", json!({}))],
            ),
            rule(
                "wrong type",
                vec![tool_call(
                    "call_wrong",
                    "everything__echo",
                    json!({"message": 42}),
                )],
            ),
            rule(
                "long job",
                vec![tool_call(
                    "call_long",
                    "everything__trigger-long-running-operation",
                    json!({"duration": 600, "steps": 600}),
                )],
            ),
            rule(
                "impatient",
                vec![tool_call(
                    "call_impatient",
                    "impatient__trigger-long-running-operation",
                    json!({"duration": 600, "steps": 600}),
                )],
            ),
            rule(
                "broken",
                vec![tool_call("call_broken", "broken__lookup", json!({}))],
            ),
        ],
        Duration::ZERO,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sent.jsonl");
    let name = unique("e");
    let file = format!(
        r#"
[providers.replay]
kind = "openai"
base_url = "{replay}"
max_retries = 0

[agents.ops]
description = "Uses MCP tools."
provider = "replay"
model = "replay"
tools = ["everything__*", "time__get_current_time"{more_tools}]

[mcp.time]
command = "{time}"
tools = ["get_current_time"]
{everything}
{extra}
"#,
        replay = replay.base_url,
        time = time_server(),
        everything = everything_table(
            &name,
            &log,
            "prefix = \"everything__\"\ntimeout_ms = 120000"
        ),
        more_tools = if extra.contains("[mcp.impatient]") {
            r#", "impatient__trigger-long-running-operation""#
        } else if extra.contains("[mcp.broken]") {
            r#", "broken__lookup""#
        } else {
            ""
        },
    );
    let (app, config_dir) = spawn_app_with_file(backend, &file, |_| {}).await;
    let conversation = app.create_agent_conversation("ops").await;
    drop(config_dir);
    Setup {
        app,
        _dir: dir,
        replay,
        conversation,
        everything: name,
        log,
    }
}

/// One turn with one tool call.
struct Turn {
    events: Vec<SseEvent>,
    /// The `tool.result` event's data.
    result: Value,
    /// The tool message the model was sent next, parsed.
    told: Value,
}

/// Runs a turn whose model makes one call: it completes, and the model's
/// next request carries the result.
async fn turn(setup: &Setup, input: &str) -> Turn {
    let response = setup
        .app
        .stream_run(&setup.conversation, json!({ "input": input }))
        .await;
    let events = read_all(response).await;
    assert_eq!(done_status(&events), "completed", "{events:#?}");
    let result = events
        .iter()
        .find(|e| e.event == "tool.result")
        .unwrap_or_else(|| panic!("no tool.result: {events:#?}"))
        .data
        .clone();
    let told = setup.replay.told(&result);
    Turn {
        events,
        result,
        told,
    }
}

async fn metrics_text(app: &TestApp) -> String {
    app.client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The state of the server `name`, once `until` holds (30 s at most).
async fn server_state(
    app: &TestApp,
    name: &str,
    until: impl Fn(&ServerStatus) -> bool,
) -> ServerStatus {
    tokio::time::timeout(
        Duration::from_secs(30),
        app.state.mcp().wait_for(name, until),
    )
    .await
    .unwrap_or_else(|_| panic!("server {name}: {:?}", app.state.mcp().status().get(name)))
    .unwrap()
}

/// The live processes whose process group is `pgid`, from /proc. A zombie
/// is not live: one a killed launcher left is its init's to reap.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp …": the name may hold spaces.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields[0] != "Z" && fields[2].parse::<u32>().ok() == Some(pgid) {
            members.push(pid);
        }
    }
    members
}

/// The pids of the processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The cancellation notifications the "everything" server was sent.
fn cancellations(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["method"] == "notifications/cancelled")
        .collect()
}

/// Calls through both servers: the result is what the model reads and what
/// the transcript stores; the server gets its configured variables and not
/// agentstream's; metrics count the calls. Shutdown leaves no process of
/// either server behind.
async fn calls_go_through_to_the_servers(backend: Backend) {
    let setup = setup(backend, "").await;
    let app = &setup.app;
    let ready = app.get_json("/readyz").await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(
        ready["mcp"]["time"],
        json!({"state": "up", "optional": false, "tools": 1})
    );
    assert_eq!(ready["mcp"][&setup.everything]["state"], "up");

    let echo = turn(&setup, "echo it").await;
    let call = echo.events.iter().find(|e| e.event == "tool.call").unwrap();
    assert_eq!(call.data["name"], "everything__echo");
    assert_eq!(call.data["arguments"], json!({"message": "hi"}));
    assert_eq!(echo.result["is_error"], false, "{}", echo.result);
    assert_eq!(echo.told, json!({"content": ["Echo: hi"]}));

    let time = turn(&setup, "what time is it in Paris").await;
    assert_eq!(time.result["is_error"], false, "{}", time.result);
    assert_eq!(time.told["structured"]["timezone"], "Europe/Paris");
    assert!(
        time.told["structured"]["datetime"].is_string(),
        "{}",
        time.told
    );
    // The text block repeating the structured content is left out.
    assert!(time.told.get("content").is_none(), "{}", time.told);

    let weather = turn(&setup, "weather in Chicago").await;
    assert_eq!(
        weather.told["structured"],
        json!({"temperature": 36, "conditions": "Light rain / drizzle", "humidity": 82})
    );

    let env = turn(&setup, "environment").await;
    let vars: Value = serde_json::from_str(env.told["content"][0].as_str().unwrap()).unwrap();
    assert_eq!(vars["GREETING"], "agentstream", "{vars:#}");
    assert!(vars.get("PATH").is_some(), "{vars:#}");
    // Only the configured variables and a few basics: not agentstream's.
    assert!(vars.get("CARGO_PKG_NAME").is_none(), "{vars:#}");
    assert!(vars.get("AGENTSTREAM_TEST_MCP_TIME").is_none(), "{vars:#}");

    let messages = app
        .get_json(&format!(
            "/v1/conversations/{}/messages",
            setup.conversation
        ))
        .await;
    let tool_messages: Vec<&Value> = messages["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .collect();
    assert_eq!(tool_messages.len(), 4, "{messages:#}");
    assert_eq!(tool_messages[0]["tool_call_id"], "call_echo");
    assert_eq!(
        serde_json::from_str::<Value>(tool_messages[0]["content"].as_str().unwrap()).unwrap(),
        json!({"content": ["Echo: hi"]})
    );

    let metrics = metrics_text(app).await;
    let ok = format!(
        r#"agentstream_mcp_tool_calls_total{{server="{}",tool="everything__echo",outcome="ok"}} 1"#,
        setup.everything
    );
    assert!(metrics.contains(&ok), "{metrics}");
    assert!(
        metrics.contains(&format!(
            r#"agentstream_mcp_server_up{{server="{}"}} 1"#,
            setup.everything
        )),
        "{metrics}"
    );

    let status = app.state.mcp().status();
    let groups: Vec<u32> = ["time", setup.everything.as_str()]
        .iter()
        .map(|name| status[*name].pid.unwrap())
        .collect();
    for pgid in &groups {
        assert!(
            !group_members(*pgid).is_empty(),
            "the server runs as group {pgid}"
        );
    }
    // `sh`, `tee` and `node`: a launcher and what it started.
    assert_eq!(
        group_members(groups[1]).len(),
        3,
        "{:?}",
        group_members(groups[1])
    );
    let mcp = app.state.mcp().clone();
    setup.app.stop().await;
    for pgid in groups {
        assert_eq!(
            group_members(pgid),
            Vec::<u32>::new(),
            "left behind in group {pgid}"
        );
    }
    assert!(
        mcp.status().values().all(|s| s.state == "closed"),
        "{:?}",
        mcp.status()
    );
}
both!(calls_go_through_to_the_servers);

/// An `isError` result is a tool error the model reads, with the server's
/// text; arguments that break the tool's input schema are refused before
/// the server is called.
async fn tool_errors_are_read_by_the_model(backend: Backend) {
    let setup = setup(backend, "").await;
    let mars = turn(&setup, "the time on mars").await;
    assert_eq!(mars.result["is_error"], true);
    let error = mars.told["error"].as_str().unwrap();
    assert!(
        error.contains("Invalid timezone") && error.contains("Mars/Olympus"),
        "{error}"
    );

    let wrong = turn(&setup, "echo a wrong type").await;
    assert_eq!(wrong.result["is_error"], true);
    let error = wrong.told["error"].as_str().unwrap();
    assert!(
        error.contains("do not match the tool's parameters"),
        "{error}"
    );
    let metrics = metrics_text(&setup.app).await;
    assert!(
        !metrics.contains(&format!(
            r#"server="{}",tool="everything__echo""#,
            setup.everything
        )),
        "the server was not called: {metrics}"
    );
    setup.app.stop().await;
}
both!(tool_errors_are_read_by_the_model);

/// A run cancelled while a slow call is in flight ends `cancelled`; the
/// call is recorded with an unknown outcome, the server is sent
/// `notifications/cancelled` for it, and its session serves the next call.
async fn a_slow_call_is_cancelled_with_its_run(backend: Backend) {
    let setup = setup(backend, "").await;
    let app = &setup.app;
    let response = app
        .stream_run(
            &setup.conversation,
            json!({ "input": "start the long job" }),
        )
        .await;
    let run_id = run_id_of(&response);
    let mut stream = Box::pin(events(response));
    let mut seen = Vec::new();
    while let Some(event) = stream.next().await {
        let call = event.event == "tool.call";
        seen.push(event);
        if call {
            break;
        }
    }
    // The request is sent once the call counts as in flight.
    let in_flight = format!(
        r#"agentstream_mcp_calls_in_flight{{server="{}"}} 1"#,
        setup.everything
    );
    tokio::time::timeout(Duration::from_secs(30), async {
        while !metrics_text(app).await.contains(&in_flight) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the call was sent");
    let cancel = app
        .client
        .post(app.url(&format!("/v1/runs/{run_id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 202);
    seen.extend(stream.collect::<Vec<_>>().await);
    assert_eq!(done_status(&seen), "cancelled", "{seen:#?}");
    let result = seen.iter().find(|e| e.event == "tool.result").unwrap();
    assert_eq!(result.data["is_error"], true);
    assert_eq!(
        result.data["output"]["error"],
        "the run was stopped while the call was in flight; its outcome is unknown"
    );

    // The session goes on; the cancellation was sent before the next call.
    let echo = turn(&setup, "echo it").await;
    assert_eq!(echo.told, json!({"content": ["Echo: hi"]}));
    let cancelled = cancellations(&setup.log);
    assert_eq!(cancelled.len(), 1, "{cancelled:#?}");
    assert!(
        cancelled[0]["params"]["requestId"].is_number(),
        "{cancelled:#?}"
    );
    let metrics = metrics_text(app).await;
    let stopped = format!(
        r#"agentstream_mcp_tool_calls_total{{server="{}",tool="everything__trigger-long-running-operation",outcome="stopped"}} 1"#,
        setup.everything
    );
    assert!(metrics.contains(&stopped), "{metrics}");
    setup.app.stop().await;
}
both!(a_slow_call_is_cancelled_with_its_run);

/// A call over its server's `timeout_ms` is a tool error the model reads,
/// the server is sent `notifications/cancelled`, and the run completes.
async fn a_call_that_times_out(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let impatient_log = dir.path().join("impatient.jsonl");
    let extra = everything_table("impatient", &impatient_log, "timeout_ms = 300");
    let setup = setup(backend, &extra).await;
    let slow = turn(&setup, "impatient").await;
    assert_eq!(slow.result["is_error"], true);
    assert_eq!(
        slow.told["error"],
        "the MCP server did not answer within 300 ms; the call was cancelled, and its \
         outcome is unknown"
    );
    // The notification went out before the timeout's result was recorded;
    // the server reads it in order, before the next call's request.
    let _ = turn(&setup, "echo it").await;
    let ready = setup.app.get_json("/readyz").await;
    assert_eq!(ready["mcp"]["impatient"]["state"], "up");
    tokio::time::timeout(Duration::from_secs(10), async {
        while cancellations(&impatient_log).is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the cancellation reached the server");
    setup.app.stop().await;
}
both!(a_call_that_times_out);

/// A server killed between two calls is marked down, reconnected with a
/// new process, and serves the next call.
async fn a_killed_server_is_reconnected(backend: Backend) {
    let mut setup = setup(backend, "").await;
    setup.app.expect_log("the MCP server was lost");
    let first = turn(&setup, "echo it").await;
    assert_eq!(first.told, json!({"content": ["Echo: hi"]}));
    let name = setup.everything.clone();
    let before = setup.app.state.mcp().status()[&name].pid.unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{before}")])
        .status()
        .unwrap();
    assert!(killed.success());
    let after = server_state(&setup.app, &name, |s| {
        s.state == "up" && s.pid.is_some_and(|pid| pid != before)
    })
    .await;
    assert_eq!(after.tools, 13);
    let second = turn(&setup, "echo again").await;
    assert_eq!(second.told, json!({"content": ["Echo: hi"]}));
    assert_eq!(group_members(before), Vec::<u32>::new());
    setup.app.stop().await;
}
both!(a_killed_server_is_reconnected);

/// An optional server that cannot start: the server starts, says so,
/// reports it down on /readyz (still ready), and its tools are tool errors.
async fn an_optional_server_that_cannot_start(backend: Backend) {
    let extra = r#"
[mcp.broken]
command = "/nonexistent/agentstream-test-mcp-server"
optional = true
"#;
    let mut setup = setup(backend, extra).await;
    setup.app.expect_log("starting without it (optional)");
    let warned = setup.app.logs_matching("starting without it (optional)");
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("broken"), "{warned:?}");
    let ready = setup
        .app
        .client
        .get(setup.app.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["mcp"]["broken"]["state"], "down");
    assert_eq!(ready["mcp"]["broken"]["optional"], true);
    assert!(
        ready["mcp"]["broken"]["error"]
            .as_str()
            .unwrap()
            .contains("cannot start"),
        "{ready:#}"
    );
    let broken = turn(&setup, "broken lookup").await;
    assert_eq!(broken.result["is_error"], true);
    let error = broken.told["error"].as_str().unwrap();
    assert!(
        error.starts_with(r#"the MCP server "broken" is unavailable ("#)
            && error.ends_with("the call was not made"),
        "{error}"
    );
    setup.app.stop().await;
}
both!(an_optional_server_that_cannot_start);

/// A required server that cannot start stops start-up with a message
/// naming it and saying why (its stderr for one that exits); the servers
/// started beside it are stopped.
#[tokio::test]
async fn a_required_server_that_cannot_start_stops_start_up() {
    let marker = unique("agentstream-test-marker-");
    let cases = [
        (
            format!(r#"command = "/nonexistent/{marker}""#),
            vec!["MCP server \"broken\"", "cannot start", "No such file"],
        ),
        (
            format!(
                r#"command = "node"
args = ["{}", "no-such-transport"]"#,
                everything()
            ),
            vec![
                "MCP server \"broken\"",
                "Unknown transport: no-such-transport",
            ],
        ),
    ];
    for (broken, expected) in cases {
        let db = TestDb::new(Backend::Sqlite).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentstream.toml");
        std::fs::write(
            &path,
            format!(
                r#"
[mcp.fine]
command = "node"
args = ["{entry}", "stdio", "{marker}"]

[mcp.broken]
{broken}
"#,
                entry = everything(),
            ),
        )
        .unwrap();
        let mut config = test_config(&db);
        config.config_file = Some(path);
        let error = App::build(config).await.unwrap_err().to_string();
        for part in expected {
            assert!(error.contains(part), "{part:?} in {error}");
        }
        assert!(error.starts_with("refusing to start"), "{error}");
        assert_eq!(
            processes_with(&marker),
            Vec::<String>::new(),
            "the fine server is stopped"
        );
    }
}
