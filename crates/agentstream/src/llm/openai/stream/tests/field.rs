//! The parser on bodies from the field (`tests/fixtures/upstream/`) and on
//! more inputs of each kind of fault they stand for.

use super::*;

fn fixture(name: &str) -> &'static str {
    match name {
        "_text-reply" => include_str!("../../../../../tests/fixtures/upstream/_text-reply.sse"),
        "args-as-object" => {
            include_str!("../../../../../tests/fixtures/upstream/args-as-object.sse")
        }
        "deepseek-reasoning" => {
            include_str!("../../../../../tests/fixtures/upstream/deepseek-reasoning.sse")
        }
        "dup-tool-ids" => include_str!("../../../../../tests/fixtures/upstream/dup-tool-ids.sse"),
        "dup-tool-ids.2" => {
            include_str!("../../../../../tests/fixtures/upstream/dup-tool-ids.2.sse")
        }
        "finish-length" => include_str!("../../../../../tests/fixtures/upstream/finish-length.sse"),
        "gemini-parallel-index0" => {
            include_str!("../../../../../tests/fixtures/upstream/gemini-parallel-index0.sse")
        }
        "nul-text" => include_str!("../../../../../tests/fixtures/upstream/nul-text.sse"),
        "nul-tool-arg" => include_str!("../../../../../tests/fixtures/upstream/nul-tool-arg.sse"),
        "truncated-no-done" => {
            include_str!("../../../../../tests/fixtures/upstream/truncated-no-done.sse")
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
