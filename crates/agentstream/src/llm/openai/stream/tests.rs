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
fn argument_pieces_go_out_as_they_arrive_numbered_by_call() {
    // A split call, then two whole calls sharing index 1 (as Gemini sends them).
    let body = sse(&[
        json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"id":"a","function":{"name":"get_weather","arguments":"{\"ci"}}]}}]}),
        json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"function":{"arguments":""}}]}}]}),
        json!({"choices":[{"delta":{"tool_calls":[
                {"index":0,"function":{"arguments":"ty\": \"P\u{0}\"}"}}]}}]}),
        json!({"choices":[{"delta":{"tool_calls":[
                {"index":1,"function":{"name":"get_time","arguments":"{}"}}]}}]}),
        json!({"choices":[{"delta":{"tool_calls":[
                {"index":1,"function":{"name":"get_time","arguments":{"tz":"UTC"}}}]}}]}),
        json!({"choices":[{"delta":{},"finish_reason":"tool_calls"}]}),
    ]);
    let (events, error) = block_on(crate::llm::openai::tests::collect_all(parse_body(
        stream::iter([Ok::<_, Infallible>(Bytes::from(body))]),
    )));
    assert_eq!(error, None);
    let piece = |index: usize, id: &str, name: &str, arguments: &str| {
        LlmEvent::ToolCallDelta(crate::llm::ToolCallDelta {
            index,
            id: id.to_owned(),
            name: name.to_owned(),
            arguments: arguments.to_owned(),
        })
    };
    assert_eq!(
        events[..4],
        [
            piece(0, "a", "get_weather", r#"{"ci"#),
            piece(0, "a", "get_weather", "ty\": \"P\u{FFFD}\"}"),
            piece(1, "", "get_time", "{}"),
            piece(2, "", "get_time", r#"{"tz":"UTC"}"#),
        ]
    );
    let calls = tool_calls(&events);
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].arguments, "{\"city\": \"P\u{FFFD}\"}");
    assert_eq!(calls[2].arguments, r#"{"tz":"UTC"}"#);
    crate::llm::openai::tests::check_pieces(&events, true);
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

mod field;
