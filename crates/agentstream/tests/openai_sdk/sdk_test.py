"""The official `openai` Python SDK against agentstream's Chat Completions.

Run by tests/api/openai_sdk.rs (with the venv of scripts/openai-venv.sh) with
OPENAI_BASE_URL and OPENAI_API_KEY set, and BUSY_CONVERSATION naming a
conversation whose run is still going. Asserts what the SDK sees, then prints
one JSON line of what the Rust side checks against the store.
"""

import json
import os

import openai
from openai import OpenAI

# Every request the SDK sends, retries included: with the SDK's default of
# two retries, an error it retried would show here as three requests.
sent = []


def count(request):
    sent.append(f"{request.method} {request.url.path}")


http = openai.DefaultHttpxClient(event_hooks={"request": [count]})
client = OpenAI(http_client=http)
assert client.max_retries == 2, client.max_retries


def read_stream(stream):
    """The text, finish reason, usage and IDs of a chunk stream."""
    text, finish, usage, ids, roles, usage_choices = "", None, None, set(), [], None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk", chunk
        ids.add(chunk.id)
        if chunk.usage is not None:
            usage, usage_choices = chunk.usage, chunk.choices
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return text, finish, usage, ids, roles, usage_choices


# A streamed completion in a new conversation, with a history to store.
raw = client.chat.completions.with_raw_response.create(
    model="chat",
    messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi, I am Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": [{"type": "text", "text": "What can you do?"}]},
    ],
    stream=True,
    stream_options={"include_usage": True},
)
conversation = raw.headers["x-conversation-id"]
run = raw.headers["x-run-id"]
text, finish, usage, ids, roles, usage_choices = read_stream(raw.parse())
assert ids == {f"chatcmpl-{run}"}, ids
assert roles == ["assistant"], roles
assert finish == "stop", finish
assert usage is not None and usage.total_tokens > 0, usage
assert usage_choices == [], usage_choices
assert text, "no text"

# The same conversation again, not streamed: only the last message is read.
raw = client.chat.completions.with_raw_response.create(
    model="chat",
    messages=[
        {"role": "user", "content": "ignored: the server holds the transcript"},
        {"role": "user", "content": "Tell me about my profile"},
    ],
    extra_headers={"X-Conversation-Id": conversation},
)
assert raw.headers["x-conversation-id"] == conversation
completion = raw.parse()
assert completion.object == "chat.completion"
assert completion.choices[0].finish_reason == "stop"
assert completion.choices[0].message.role == "assistant"
assert completion.usage.total_tokens > 0, completion.usage
second = completion.choices[0].message.content

# metadata.conversation_id continues it too.
third = client.chat.completions.create(
    model="chat",
    messages=[{"role": "user", "content": "Thanks"}],
    metadata={"conversation_id": conversation},
).choices[0].message.content


def refused(error_class, make_call):
    """The error a call raises, and how many requests it took."""
    before = len(sent)
    try:
        make_call()
    except error_class as error:
        status = getattr(error, "status_code", None)
        return {"requests": len(sent) - before, "status": status, "code": error.code}
    raise AssertionError(f"no {error_class.__name__}")


hello = [{"role": "user", "content": "hello"}]
wrong_key = OpenAI(api_key="ask_wrong", http_client=http)
errors = {
    "unauthorized": refused(
        openai.AuthenticationError,
        lambda: wrong_key.chat.completions.create(model="chat", messages=hello),
    ),
    "unknown_model": refused(
        openai.NotFoundError,
        lambda: client.chat.completions.create(model="gpt-4", messages=hello),
    ),
    "unknown_conversation": refused(
        openai.NotFoundError,
        lambda: client.chat.completions.create(
            model="chat",
            messages=hello,
            extra_headers={"X-Conversation-Id": "01900000-0000-7000-8000-000000000000"},
        ),
    ),
    "busy": refused(
        openai.ConflictError,
        lambda: client.chat.completions.create(
            model="slow",
            messages=hello,
            extra_headers={"X-Conversation-Id": os.environ["BUSY_CONVERSATION"]},
        ),
    ),
    "tools": refused(
        openai.BadRequestError,
        lambda: client.chat.completions.create(
            model="chat",
            messages=hello,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        ),
    ),
}


def stream_flaky():
    stream = client.chat.completions.create(model="flaky", messages=hello, stream=True)
    chunks = list(stream)
    raise AssertionError(f"the stream ended without an error: {chunks}")


before = len(sent)
try:
    stream_flaky()
except openai.APIStatusError as error:
    raise AssertionError(f"an HTTP error, not a failure mid-stream: {error}")
except openai.APIError as error:
    errors["mid_stream"] = {
        "requests": len(sent) - before,
        "status": None,
        "code": error.code,
        "message": error.message,
    }
errors["failed_run"] = refused(
    openai.InternalServerError,
    lambda: client.chat.completions.create(model="flaky", messages=hello),
)

models = sorted(model.id for model in client.models.list())

print(
    json.dumps(
        {
            "conversation": conversation,
            "streamed": text,
            "second": second,
            "third": third,
            "errors": errors,
            "models": models,
        }
    )
)
