use std::convert::Infallible;
use std::pin::pin;

use futures_util::stream;
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::llm::openai::tests::{collect, delta, delta_text};

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

/// Parses `pieces` fed one by one, returning the events and the error that ended them.
fn parse_pieces(pieces: Vec<Vec<u8>>) -> (Vec<LlmEvent>, Option<LlmError>) {
    let body = stream::iter(
        pieces
            .into_iter()
            .map(|piece| Ok::<_, Infallible>(Bytes::from(piece))),
    );
    block_on(collect(parse_body(body)))
}

fn parse(body: &str) -> (Vec<LlmEvent>, Option<LlmError>) {
    parse_pieces(vec![body.as_bytes().to_vec()])
}

fn call(id: &str, name: &str, arguments: &str) -> LlmEvent {
    LlmEvent::ToolCall(ToolCall {
        id: id.to_owned(),
        name: name.to_owned(),
        arguments: arguments.to_owned(),
        upstream_id: None,
    })
}

fn finished(reason: &str) -> LlmEvent {
    LlmEvent::Finished(reason.to_owned())
}

fn reasoning(text: &str) -> LlmEvent {
    LlmEvent::Reasoning(text.to_owned())
}

fn tool_calls(events: &[LlmEvent]) -> Vec<ToolCall> {
    events
        .iter()
        .filter_map(|event| match event {
            LlmEvent::ToolCall(call) => Some(call.clone()),
            _ => None,
        })
        .collect()
}

fn usage(prompt_tokens: u64, completion_tokens: u64) -> LlmEvent {
    LlmEvent::Usage(Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    })
}

/// SSE events, one `data:` line each, ending with LF LF.
fn sse(payloads: &[serde_json::Value]) -> String {
    payloads
        .iter()
        .map(|payload| format!("data: {payload}\n\n"))
        .collect()
}

// Shaped like a real gpt-4o stream with `include_usage`.
const OPENAI_TEXT: &str = concat!(
    r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":"Hel"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":"lo!"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","system_fingerprint":"fp_1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11,"prompt_tokens_details":{"cached_tokens":0}}}"#,
    "\n\n",
    "data: [DONE]\n\n",
);

#[test]
fn parses_text_usage_and_done() {
    let (events, error) = parse(OPENAI_TEXT);
    assert_eq!(error, None);
    assert_eq!(
        events,
        [delta("Hel"), delta("lo!"), finished("stop"), usage(9, 2)]
    );
}

#[test]
fn nothing_after_done_is_read() {
    let body = format!("{OPENAI_TEXT}data: {{not json\n\n");
    let (events, error) = parse(&body);
    assert_eq!(error, None);
    assert_eq!(events.len(), 4);
}

#[test]
fn assembles_a_tool_call_with_a_late_name_and_split_arguments() {
    let body = sse(&[
        json!({"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[
                {"index":0,"id":"call_abc","type":"function","function":{"arguments":""}}]}}]}),
        json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"function":{"arguments":"{\"ci"}}]}}]}),
        json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"function":{"name":"get_weather","arguments":"ty\": \"Par"}}]}}]}),
        json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"function":{"arguments":"is\"}"}}]}}]}),
        json!({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}),
    ]) + "data: [DONE]\n\n";
    let (events, error) = parse(&body);
    assert_eq!(error, None);
    assert_eq!(
        events,
        [
            call("call_abc", "get_weather", r#"{"city": "Paris"}"#),
            finished("tool_calls")
        ]
    );
}

#[test]
fn tool_calls_go_out_when_the_choice_finishes() {
    let body = sse(&[
        json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"id":"c1","function":{"name":"f","arguments":"{}"}}]}}]}),
        json!({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}),
        json!({"choices":[{"index":0,"delta":{"content":"after"}}]}),
    ]);
    let (events, error) = parse(&body);
    assert_eq!(error, None);
    // The call precedes the later text, so it went out at the finish, not at the end.
    assert_eq!(
        events,
        [
            call("c1", "f", "{}"),
            finished("tool_calls"),
            delta("after")
        ]
    );
}

#[test]
fn parallel_tool_calls_come_out_in_arrival_order() {
    let body = sse(&[
        json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":1,"id":"call_b","type":"function","function":{"name":"second","arguments":""}}]}}]}),
        json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"id":"call_a","type":"function","function":{"name":"first","arguments":"{\"a\""}}]}}]}),
        json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":1,"function":{"arguments":"{\"b\":2}"}},
                {"index":0,"function":{"arguments":":1}"}}]}}]}),
        json!({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}),
    ]) + "data: [DONE]\n\n";
    let (events, error) = parse(&body);
    assert_eq!(error, None);
    assert_eq!(
        events,
        [
            call("call_b", "second", r#"{"b":2}"#),
            call("call_a", "first", r#"{"a":1}"#),
            finished("tool_calls")
        ]
    );
}

#[test]
fn a_missing_index_is_the_position_in_the_chunk() {
    // As some llama.cpp and Ollama versions send: no index and no id.
    let body = sse(&[
        json!({"choices":[{"delta":{"tool_calls":[
                {"function":{"name":"one","arguments":"{\"x\":"}},
                {"function":{"name":"two","arguments":"{}"}}]}}]}),
        json!({"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"1}"}}]}}]}),
        json!({"choices":[{"delta":{},"finish_reason":"tool_calls"}]}),
    ]) + "data: [DONE]\n\n";
    let (events, error) = parse(&body);
    assert_eq!(error, None);
    assert_eq!(events.last(), Some(&finished("tool_calls")));
    let calls = tool_calls(&events);
    assert_eq!(calls.len(), 2, "{events:?}");
    assert_eq!(
        (calls[0].name.as_str(), calls[0].arguments.as_str()),
        ("one", r#"{"x":1}"#)
    );
    assert_eq!(
        (calls[1].name.as_str(), calls[1].arguments.as_str()),
        ("two", "{}")
    );
    assert!(calls.iter().all(|c| c.id.starts_with("call_")));
    assert_ne!(calls[0].id, calls[1].id, "generated ids are unique");
}

#[test]
fn a_repeated_name_is_kept_once_and_a_split_name_is_joined() {
    let body = sse(&[
        json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"id":"a","function":{"name":"same"}},
                {"index":1,"id":"b","function":{"name":"get_"}}]}}]}),
        json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"id":"a","function":{"name":"same","arguments":"{}"}},
                {"index":1,"function":{"name":"profile","arguments":"{}"}}]}}]}),
        // Once more, with nothing to add: still the same two calls.
        json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"id":"a","function":{"name":"same","arguments":""}},
                {"index":1,"function":{"name":"get_profile"}}]},"finish_reason":"tool_calls"}]}),
    ]);
    let (events, error) = parse(&body);
    assert_eq!(error, None);
    assert_eq!(
        events,
        [
            call("a", "same", "{}"),
            call("b", "get_profile", "{}"),
            finished("tool_calls")
        ]
    );
}

#[test]
fn a_body_cut_mid_tool_call_runs_no_call_and_is_incomplete() {
    // No finish_reason and no [DONE]: the call may be cut anywhere, even where its
    // arguments happen to parse, so it never goes out.
    let body = sse(&[
        json!({"choices":[{"index":0,"delta":{"content":"Hi"}}]}),
        json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"id":"c","function":{"name":"delete_rows","arguments":"{\"where\":\"id=1\"}"}}]}}]}),
        json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":1,"id":"d","function":{"name":"f","arguments":"{\"k\":"}}]}}]}),
        json!({"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}),
    ]);
    let (events, error) = parse(&body);
    assert_eq!(events, [delta("Hi"), usage(3, 4)]);
    let error = error.unwrap();
    assert_eq!(error.code().as_str(), "upstream_incomplete");
    assert!(
        error.detail().contains("dropped 2 unfinished tool calls"),
        "{error:?}"
    );
    assert!(!error.detail().contains("id=1"), "{error:?}");
}

#[test]
fn usage_is_sent_once_with_the_latest_report() {
    // vLLM's continuous usage stats: a running total on every chunk.
    let body = sse(&[
        json!({"choices":[{"delta":{"content":"a"}}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}),
        json!({"choices":[{"delta":{"content":"b"}}],"usage":{"prompt_tokens":5,"completion_tokens":2}}),
    ]) + "data: [DONE]\n\n";
    let (events, error) = parse(&body);
    assert_eq!(error, None);
    assert_eq!(events, [delta("a"), delta("b"), usage(5, 2)]);
}

#[test]
fn empty_arguments_become_an_empty_object() {
    let body = sse(&[json!({"choices":[{"delta":{"tool_calls":[
            {"index":0,"id":"c","function":{"name":"get_profile","arguments":""}}]},
            "finish_reason":"tool_calls"}]})]);
    let (events, error) = parse(&body);
    assert_eq!(error, None);
    assert_eq!(
        events,
        [call("c", "get_profile", "{}"), finished("tool_calls")]
    );
}

#[test]
fn a_tool_call_without_a_name_is_a_protocol_error() {
    let body = sse(&[json!({"choices":[{"delta":{"tool_calls":[
            {"index":0,"id":"c","function":{"arguments":"{}"}}]},"finish_reason":"tool_calls"}]})]);
    let (events, error) = parse(&body);
    assert_eq!(events, []);
    let error = error.unwrap();
    assert_eq!(error.code().as_str(), "upstream_protocol");
    assert!(
        error.detail().contains("without a function name"),
        "{error:?}"
    );
}

#[test]
fn is_lenient_about_what_compatible_servers_send() {
    let body = concat!(
        ": OPENROUTER PROCESSING\n\n",
        "retry: 3000\n\n",
        "event: ping\ndata: {\"anything\": [1, 2]}\n\n",
        "data: {\"choices\":null,\"usage\":null}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"},\"finish_reason\":\"\"}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":null,\"reasoning_content\":\"hmm\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":1,\"delta\":{\"content\":\"other choice\"}}]}\n\n",
        "id: 7\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"},\"finish_reason\":null}],\"extra\":{}}\n\n",
        "data:  \n\n",
        "data:[DONE]\n\n",
    );
    let (events, error) = parse(body);
    assert_eq!(error, None);
    assert_eq!(events, [reasoning("hmm"), delta("ok")]);
}

#[test]
fn crlf_line_endings_are_accepted() {
    let body = OPENAI_TEXT.replace('\n', "\r\n");
    let (events, error) = parse(&body);
    assert_eq!(error, None);
    assert_eq!(
        events,
        [delta("Hel"), delta("lo!"), finished("stop"), usage(9, 2)]
    );
}

#[test]
fn a_malformed_chunk_is_a_protocol_error_after_the_deltas_before_it() {
    let body = sse(&[json!({"choices":[{"delta":{"content":"before"}}]})])
        + "data: {not json\n\n"
        + &sse(&[json!({"choices":[{"delta":{"content":"after"}}]})]);
    let (events, error) = parse(&body);
    assert_eq!(events, [delta("before")]);
    let error = error.unwrap();
    assert_eq!(error.code().as_str(), "upstream_protocol");
    assert!(error.detail().contains("not valid JSON"), "{error:?}");
    assert!(error.detail().contains("{not json"), "{error:?}");
}

#[test]
fn a_chunk_of_the_wrong_shape_is_a_protocol_error() {
    let (_, error) = parse("data: {\"choices\":[{\"delta\":{\"content\":5}}]}\n\n");
    let error = error.unwrap();
    assert_eq!(error.code().as_str(), "upstream_protocol");
    assert!(error.detail().contains("unexpected shape"), "{error:?}");
    let (_, error) = parse("data: 42\n\n");
    assert_eq!(error.unwrap().code().as_str(), "upstream_protocol");
}

#[test]
fn an_error_object_is_an_upstream_error() {
    let body = sse(&[
        json!({"choices":[{"delta":{"content":"par"}}]}),
        json!({"error":{"message":"The server is overloaded","type":"server_error","code":"overloaded"},
                   "choices":[{"delta":{"content":""},"finish_reason":"error"}]}),
    ]) + "data: [DONE]\n\n";
    let (events, error) = parse(&body);
    assert_eq!(events, [delta("par")]);
    assert_eq!(
        error,
        Some(LlmError::Upstream(
            "the upstream reported an error: The server is overloaded (overloaded)".to_owned()
        ))
    );
    let (_, error) = parse("data: {\"error\":\"model not loaded\"}\n\n");
    assert_eq!(
        error,
        Some(LlmError::Upstream(
            "the upstream reported an error: model not loaded".to_owned()
        ))
    );
}

#[test]
fn an_error_event_is_an_upstream_error() {
    let body = "event: error\ndata: {\"error\":{\"message\":\"quota exceeded\"}}\n\n";
    let (events, error) = parse(body);
    assert_eq!(events, []);
    assert_eq!(
        error,
        Some(LlmError::Upstream(
            "the upstream reported an error: quota exceeded".to_owned()
        ))
    );
}

#[test]
fn a_body_without_chunks_is_a_protocol_error_unless_it_says_done() {
    for body in ["", ": keep-alive\n\n", "data: {\"choices\":[]}\n"] {
        let (events, error) = parse(body);
        assert_eq!(events, []);
        assert_eq!(
            error.map(|e| e.code().as_str()),
            Some("upstream_protocol"),
            "{body:?}"
        );
    }
    assert_eq!(parse("data: [DONE]\n\n"), (vec![], None));
}

#[test]
fn a_failing_body_is_an_upstream_error_after_the_deltas_before_it() {
    let body = stream::iter([
        Ok(Bytes::from(sse(&[
            json!({"choices":[{"delta":{"content":"so far"}}]}),
        ]))),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        )),
        Ok(Bytes::from(sse(&[
            json!({"choices":[{"delta":{"content":"never"}}]}),
        ]))),
    ]);
    let (events, error) = block_on(collect(parse_body(body)));
    assert_eq!(events, [delta("so far")]);
    assert_eq!(
        error,
        Some(LlmError::Upstream(
            "the upstream connection failed mid-stream: connection reset by peer".to_owned()
        ))
    );
}

#[test]
fn a_body_failing_before_any_event_may_be_retried_and_later_not() {
    let fail = || {
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ))
    };
    let retryable = |pieces: Vec<Result<Bytes, std::io::Error>>| {
        block_on(async {
            let mut events = pin!(body_events(
                stream::iter(pieces),
                Limits::default(),
                ChunkParser::default()
            ));
            while let Some(item) = events.next().await {
                if let Err(failure) = item {
                    return failure.retryable;
                }
            }
            panic!("the body did not fail");
        })
    };
    assert!(retryable(vec![Ok(Bytes::from_static(b": hi\n\n")), fail()]));
    let role = sse(&[json!({"choices":[{"delta":{"role":"assistant"}}]})]);
    assert!(!retryable(vec![Ok(Bytes::from(role)), fail()]));
}

// The field faults: one test per recorded upstream body, then more inputs of each kind.

fn fixture(name: &str) -> &'static str {
    match name {
        "_text-reply" => include_str!("../../../../tests/fixtures/upstream/_text-reply.sse"),
        "args-as-object" => include_str!("../../../../tests/fixtures/upstream/args-as-object.sse"),
        "deepseek-reasoning" => {
            include_str!("../../../../tests/fixtures/upstream/deepseek-reasoning.sse")
        }
        "dup-tool-ids" => include_str!("../../../../tests/fixtures/upstream/dup-tool-ids.sse"),
        "dup-tool-ids.2" => include_str!("../../../../tests/fixtures/upstream/dup-tool-ids.2.sse"),
        "finish-length" => include_str!("../../../../tests/fixtures/upstream/finish-length.sse"),
        "gemini-parallel-index0" => {
            include_str!("../../../../tests/fixtures/upstream/gemini-parallel-index0.sse")
        }
        "nul-text" => include_str!("../../../../tests/fixtures/upstream/nul-text.sse"),
        "nul-tool-arg" => include_str!("../../../../tests/fixtures/upstream/nul-tool-arg.sse"),
        "truncated-no-done" => {
            include_str!("../../../../tests/fixtures/upstream/truncated-no-done.sse")
        }
        other => panic!("no fixture {other}"),
    }
}

fn arguments_of(call: &ToolCall) -> serde_json::Value {
    serde_json::from_str(&call.arguments).unwrap()
}

#[test]
fn fixture_text_reply() {
    let (events, error) = parse(fixture("_text-reply"));
    assert_eq!(error, None);
    assert_eq!(
        events,
        [
            delta("Noted. "),
            delta("What is your role?"),
            finished("stop")
        ]
    );
}

#[test]
fn fixture_gemini_parallel_index0_gives_two_calls() {
    let (events, error) = parse(fixture("gemini-parallel-index0"));
    assert_eq!(error, None);
    assert_eq!(
        events,
        [
            call(
                "function-call-7301",
                "update_profile",
                r#"{"field":"name","value":"Ada Lovelace"}"#
            ),
            call(
                "function-call-7302",
                "update_profile",
                r#"{"field":"role","value":"Engineer"}"#
            ),
            finished("stop"),
            usage(120, 30),
        ]
    );
}

#[test]
fn fixture_args_as_object_are_serialised() {
    let (events, error) = parse(fixture("args-as-object"));
    assert_eq!(error, None);
    let calls = tool_calls(&events);
    assert_eq!(calls.len(), 1, "{events:?}");
    assert_eq!(
        (calls[0].id.as_str(), calls[0].name.as_str()),
        ("call_lc1", "update_profile")
    );
    assert_eq!(
        arguments_of(&calls[0]),
        json!({"field": "name", "value": "Ada Lovelace"})
    );
    assert_eq!(events.last(), Some(&finished("tool_calls")));
}

#[test]
fn fixture_deepseek_reasoning_is_kept_apart() {
    let (events, error) = parse(fixture("deepseek-reasoning"));
    assert_eq!(error, None);
    assert_eq!(
        events,
        [
            reasoning("The user gave a name; "),
            reasoning("save it with update_profile."),
            call(
                "call_0_ds",
                "update_profile",
                r#"{"field":"name","value":"Ada Lovelace"}"#
            ),
            finished("tool_calls"),
            usage(60, 25),
        ]
    );
}

#[test]
fn fixture_dup_tool_ids_keeps_the_upstream_id_in_each_reply() {
    // The same id in two replies of one run: the parser reports what the upstream said;
    // making ids unique across the conversation is the agent's (`upstream_id`).
    for (name, value) in [
        ("dup-tool-ids", "Ada Lovelace"),
        ("dup-tool-ids.2", "Engineer"),
    ] {
        let (events, error) = parse(fixture(name));
        assert_eq!(error, None);
        let calls = tool_calls(&events);
        assert_eq!(calls.len(), 1, "{name}: {events:?}");
        assert_eq!(calls[0].id, "update_profile:0");
        assert_eq!(calls[0].upstream_id(), "update_profile:0");
        assert_eq!(arguments_of(&calls[0])["value"], json!(value));
        assert_eq!(events.last(), Some(&finished("tool_calls")));
    }
}

#[test]
fn fixture_finish_length_is_finished() {
    let (events, error) = parse(fixture("finish-length"));
    assert_eq!(error, None);
    assert_eq!(
        events,
        [
            delta("Your three onboarding steps are: first, tell me your"),
            finished("length")
        ]
    );
}

#[test]
fn fixture_nul_text_becomes_the_replacement_character() {
    let (events, error) = parse(fixture("nul-text"));
    assert_eq!(error, None);
    assert_eq!(
        events,
        [
            delta("Welcome to K"),
            delta("\u{FFFD}rsou, Ada."),
            finished("stop")
        ]
    );
}

#[test]
fn fixture_nul_tool_arg_becomes_the_replacement_character() {
    let (events, error) = parse(fixture("nul-tool-arg"));
    assert_eq!(error, None);
    let calls = tool_calls(&events);
    assert_eq!(calls.len(), 1, "{events:?}");
    assert!(!calls[0].arguments.contains("\\u0000"), "{calls:?}");
    assert!(!calls[0].arguments.contains('\0'), "{calls:?}");
    assert_eq!(
        arguments_of(&calls[0]),
        json!({"field": "name", "value": "Ada\u{FFFD}Lovelace"})
    );
}

#[test]
fn fixture_truncated_no_done_is_incomplete() {
    let (events, error) = parse(fixture("truncated-no-done"));
    assert_eq!(
        events,
        [
            delta("Thanks Ada. Before we go on, here are the three"),
            delta(" steps of")
        ]
    );
    let error = error.unwrap();
    assert!(matches!(error, LlmError::Incomplete(_)), "{error:?}");
    assert_eq!(error.code().as_str(), "upstream_incomplete");
}

#[test]
fn three_whole_calls_at_one_index_stay_apart() {
    let body = sse(&[
        json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"id":"c1","function":{"name":"update_profile","arguments":"{\"field\":\"name\",\"value\":\"Ada\"}"}}]}}]}),
        json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"id":"c2","function":{"name":"update_profile","arguments":"{\"field\":\"role\",\"value\":\"Engineer\"}"}}]}}]}),
        json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"id":"c3","function":{"name":"get_profile","arguments":"{}"}}]}}]}),
        json!({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}),
    ]) + "data: [DONE]\n\n";
    let (events, error) = parse(&body);
    assert_eq!(error, None);
    assert_eq!(
        events,
        [
            call("c1", "update_profile", r#"{"field":"name","value":"Ada"}"#),
            call(
                "c2",
                "update_profile",
                r#"{"field":"role","value":"Engineer"}"#
            ),
            call("c3", "get_profile", "{}"),
            finished("tool_calls"),
        ]
    );
}

#[test]
fn whole_calls_without_index_or_id_stay_apart() {
    let body = sse(&[
        json!({"choices":[{"delta":{"tool_calls":[
                {"function":{"name":"update_profile","arguments":"{\"field\":\"name\",\"value\":\"Ada\"}"}}]}}]}),
        json!({"choices":[{"delta":{"tool_calls":[
                {"function":{"name":"update_profile","arguments":"{\"field\":\"role\",\"value\":\"Engineer\"}"}}]}}]}),
        json!({"choices":[{"delta":{"tool_calls":[
                {"function":{"name":"get_profile","arguments":{}}}]}}]}),
        json!({"choices":[{"delta":{},"finish_reason":"tool_calls"}]}),
    ]);
    let (events, error) = parse(&body);
    assert_eq!(error, None);
    let calls = tool_calls(&events);
    let shown: Vec<(&str, serde_json::Value)> = calls
        .iter()
        .map(|call| (call.name.as_str(), arguments_of(call)))
        .collect();
    assert_eq!(
        shown,
        [
            ("update_profile", json!({"field": "name", "value": "Ada"})),
            (
                "update_profile",
                json!({"field": "role", "value": "Engineer"})
            ),
            ("get_profile", json!({})),
        ]
    );
    let ids: std::collections::BTreeSet<&str> = calls.iter().map(|call| call.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "generated ids are unique: {calls:?}");
    assert_eq!(events.last(), Some(&finished("tool_calls")));
}

#[test]
fn whole_calls_repeating_one_id_at_one_index_stay_apart() {
    let body = sse(&[
        json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"id":"same","function":{"name":"f","arguments":"{\"n\":1}"}}]}}]}),
        json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"id":"same","function":{"name":"f","arguments":"{\"n\":2}"}}]}}]}),
        json!({"choices":[{"delta":{},"finish_reason":"tool_calls"}]}),
    ]);
    let (events, error) = parse(&body);
    assert_eq!(error, None);
    assert_eq!(
        events,
        [
            call("same", "f", r#"{"n":1}"#),
            call("same", "f", r#"{"n":2}"#),
            finished("tool_calls")
        ]
    );
}

#[test]
fn an_id_reused_at_two_indexes_gives_two_calls_in_arrival_order() {
    let body = sse(&[
        json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"id":"dup","function":{"name":"first","arguments":"{\"a\":"}},
                {"index":1,"id":"dup","function":{"name":"second","arguments":"{\"b\":"}}]}}]}),
        json!({"choices":[{"delta":{"tool_calls":[
                {"index":1,"id":"dup","function":{"arguments":"2}"}},
                {"index":0,"function":{"arguments":"1}"}}]}}]}),
        json!({"choices":[{"delta":{},"finish_reason":"tool_calls"}]}),
    ]) + "data: [DONE]\n\n";
    let (events, error) = parse(&body);
    assert_eq!(error, None);
    assert_eq!(
        events,
        [
            call("dup", "first", r#"{"a":1}"#),
            call("dup", "second", r#"{"b":2}"#),
            finished("tool_calls")
        ]
    );
}

#[test]
fn arguments_as_an_object_after_a_name_only_chunk_are_serialised() {
    let body = sse(&[
        json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"id":"c","type":"function","function":{"name":"save"}}]}}]}),
        json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"function":{"arguments":{"list":[1,2],"text":"x","nested":{"ok":true}}}}]}}]}),
        json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"function":{"arguments":null}}]}}]}),
        json!({"choices":[{"delta":{},"finish_reason":"tool_calls"}]}),
    ]) + "data: [DONE]\n\n";
    let (events, error) = parse(&body);
    assert_eq!(error, None);
    let calls = tool_calls(&events);
    assert_eq!(calls.len(), 1, "{events:?}");
    assert_eq!(
        (calls[0].id.as_str(), calls[0].name.as_str()),
        ("c", "save")
    );
    assert_eq!(
        arguments_of(&calls[0]),
        json!({"list": [1, 2], "text": "x", "nested": {"ok": true}})
    );
}

#[test]
fn reasoning_and_reasoning_content_are_reasoning_events() {
    let body = sse(&[
        // OpenRouter's field name.
        json!({"choices":[{"delta":{"role":"assistant","content":"","reasoning":"Look at "}}]}),
        json!({"choices":[{"delta":{"content":null,"reasoning":"the name."}}]}),
        // A server sending both names with the same text: once.
        json!({"choices":[{"delta":{"reasoning_content":"Both.","reasoning":"Both."}}]}),
        // Something other than text there is skipped, not a failure.
        json!({"choices":[{"delta":{"reasoning":{"summary":[]},"content":"Hello"}}]}),
        json!({"choices":[{"delta":{"reasoning_content":"late","content":" Ada"},"finish_reason":"stop"}]}),
    ]) + "data: [DONE]\n\n";
    let (events, error) = parse(&body);
    assert_eq!(error, None);
    assert_eq!(
        events,
        [
            reasoning("Look at "),
            reasoning("the name."),
            reasoning("Both."),
            delta("Hello"),
            reasoning("late"),
            delta(" Ada"),
            finished("stop"),
        ]
    );
}

#[test]
fn done_without_a_finish_reason_is_a_normal_end() {
    let body = sse(&[
        json!({"choices":[{"delta":{"content":"Hi"}}]}),
        json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"id":"c","function":{"name":"f","arguments":"{}"}}]}}]}),
    ]) + "data: [DONE]\n\n";
    let (events, error) = parse(&body);
    assert_eq!(error, None);
    assert_eq!(events, [delta("Hi"), call("c", "f", "{}")]);
}

#[test]
fn a_finish_reason_then_the_end_of_the_body_is_a_normal_end() {
    let body = sse(&[
        json!({"choices":[{"delta":{"content":"Hi"}}]}),
        json!({"choices":[{"delta":{},"finish_reason":"stop"}]}),
        json!({"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}),
    ]);
    let (events, error) = parse(&body);
    assert_eq!(error, None);
    assert_eq!(events, [delta("Hi"), finished("stop"), usage(1, 1)]);
}

#[test]
fn a_body_cut_after_text_is_incomplete_after_its_text() {
    let body = sse(&[
        json!({"choices":[{"delta":{"role":"assistant"}}]}),
        json!({"choices":[{"delta":{"content":"Half a sen"}}]}),
    ]);
    let (events, error) = parse(&body);
    assert_eq!(events, [delta("Half a sen")]);
    let error = error.unwrap();
    assert_eq!(error.code().as_str(), "upstream_incomplete");
    assert!(!error.detail().contains("Half"), "{error:?}");
}

#[test]
fn length_and_content_filter_are_finished_events_sent_once() {
    for reason in ["length", "content_filter"] {
        let body = sse(&[
            json!({"choices":[{"delta":{"content":"Some"}}]}),
            json!({"choices":[{"delta":{},"finish_reason":reason}]}),
            // A repeated finish reason is not a second finish.
            json!({"choices":[{"delta":{},"finish_reason":reason}]}),
        ]);
        let (events, error) = parse(&body);
        assert_eq!(error, None, "{reason}");
        assert_eq!(events, [delta("Some"), finished(reason)], "{reason}");
    }
}

#[test]
fn a_nul_in_text_reasoning_names_and_arguments_becomes_the_replacement_character() {
    let body = sse(&[
        json!({"choices":[{"delta":{"reasoning_content":"th\u{0}ink","content":"a\u{0}b"}}]}),
        json!({"choices":[{"delta":{"tool_calls":[
                // A NUL in a name, and in a key and a value of JSON arguments.
                {"index":0,"id":"c1","function":{"name":"get_\u{0}profile","arguments":"{\"k\\u0000\": [\"v\\u0000\"]}"}},
                // Arguments that are not JSON keep their text, NULs replaced.
                {"index":1,"id":"c2","function":{"name":"raw","arguments":"not \u{0} json"}},
                // JSON without a NUL keeps its exact text.
                {"index":2,"id":"c3","function":{"name":"kept","arguments":"{ \"spaced\" : 1 }"}}]}}]}),
        json!({"choices":[{"delta":{},"finish_reason":"tool_calls"}]}),
    ]);
    assert!(body.contains("\\u0000"));
    let (events, error) = parse(&body);
    assert_eq!(error, None);
    assert_eq!(
        events,
        [
            reasoning("th\u{FFFD}ink"),
            delta("a\u{FFFD}b"),
            call(
                "c1",
                "get_\u{FFFD}profile",
                "{\"k\u{FFFD}\":[\"v\u{FFFD}\"]}"
            ),
            call("c2", "raw", "not \u{FFFD} json"),
            call("c3", "kept", "{ \"spaced\" : 1 }"),
            finished("tool_calls"),
        ]
    );
}

/// A realistic body: multi-byte text and tool arguments, some events with CRLF endings.
fn unicode_body() -> (String, Vec<LlmEvent>) {
    let events = [
        (
            json!({"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}),
            false,
        ),
        (
            json!({"choices":[{"index":0,"delta":{"content":"héllo "}}]}),
            true,
        ),
        (
            json!({"choices":[{"index":0,"delta":{"content":"wörld 😀"}}]}),
            false,
        ),
        (
            json!({"choices":[{"index":0,"delta":{"content":" 日本"}}]}),
            true,
        ),
        (
            json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"id":"call_ü","type":"function","function":{"name":"note","arguments":"{\"text\":\"gr"}}]}}]}),
            true,
        ),
        (
            json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"function":{"arguments":"üße 😀 日本\"}"}}]}}]}),
            false,
        ),
        (
            json!({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}),
            true,
        ),
        (
            json!({"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}),
            false,
        ),
    ];
    let mut body = String::new();
    for (event, crlf) in events {
        // Unescaped, so the multi-byte characters are on the wire as UTF-8.
        let line = format!("data: {}", serde_json::to_string(&event).unwrap());
        body.push_str(&line);
        body.push_str(if crlf { "\r\n\r\n" } else { "\n\n" });
    }
    body.push_str(": done soon\r\n\r\ndata: [DONE]\r\n\r\n");
    let expected = vec![
        delta("héllo "),
        delta("wörld 😀"),
        delta(" 日本"),
        call("call_ü", "note", r#"{"text":"grüße 😀 日本"}"#),
        finished("tool_calls"),
        usage(12, 5),
    ];
    (body, expected)
}

fn split_at(body: &[u8], cuts: &std::collections::BTreeSet<usize>) -> Vec<Vec<u8>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain([body.len()].iter()) {
        pieces.push(body[start..cut].to_vec());
        start = cut;
    }
    pieces
}

#[test]
fn the_unicode_body_parses_whole_and_byte_by_byte() {
    let (body, expected) = unicode_body();
    assert!(body.contains('😀') && body.contains("\r\n"));
    assert_eq!(parse(&body), (expected.clone(), None));
    let bytes = body.as_bytes();
    let every_byte = (1..bytes.len()).collect();
    assert_eq!(parse_pieces(split_at(bytes, &every_byte)), (expected, None));
}

/// Cut points worth hitting on purpose: inside UTF-8 characters and between CR and LF.
fn awkward_cuts(body: &str) -> Vec<usize> {
    let bytes = body.as_bytes();
    (1..bytes.len())
        .filter(|&i| !body.is_char_boundary(i) || (bytes[i - 1] == b'\r' && bytes[i] == b'\n'))
        .collect()
}

proptest! {
    #[test]
    fn any_split_of_the_body_gives_the_same_events(
        random in proptest::collection::btree_set(1..unicode_body().0.len(), 0..24),
        awkward in proptest::collection::vec(proptest::sample::select(awkward_cuts(&unicode_body().0)), 0..8),
    ) {
        let (body, expected) = unicode_body();
        let cuts = random.into_iter().chain(awkward).collect();
        let (events, error) = parse_pieces(split_at(body.as_bytes(), &cuts));
        prop_assert_eq!(error, None);
        prop_assert_eq!(delta_text(&events), "héllo wörld 😀 日本");
        prop_assert_eq!(events, expected);
    }
}
