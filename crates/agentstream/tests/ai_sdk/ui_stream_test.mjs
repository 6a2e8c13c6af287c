// The Vercel AI SDK's own code against agentstream's /v1/ai-sdk routes: its
// parser (`parseJsonEventStream` with `uiMessageChunkSchema`), its message
// reader (`readUIMessageStream`) and its chat engine (`AbstractChat`, what
// `useChat` runs, with `DefaultChatTransport`). Run by tests/api/ai_sdk.rs
// once per major version of the `ai` package, with
//   AI_SDK_DIR        the folder the package is installed in (scripts/ai-sdk.sh)
//   AGENTSTREAM_URL   the server
//   AGENTSTREAM_KEY   an API key
// Prints one JSON object: what each scenario saw, for the Rust side to
// compare with the stored transcript. Exits non-zero on a chunk the schema
// refuses, an unexpected `onError`, or a broken expectation checked here.

import { randomUUID } from "node:crypto";
import { createRequire } from "node:module";
import { resolve } from "node:path";

const require = createRequire(`${resolve(process.env.AI_SDK_DIR)}/`);
const ai = require("ai");
const version = require("ai/package.json").version;
const base = process.env.AGENTSTREAM_URL;
const headers = { Authorization: `Bearer ${process.env.AGENTSTREAM_KEY}` };
const api = `${base}/v1/ai-sdk/chat`;

function check(condition, message) {
  if (!condition) {
    throw new Error(`ai@${version}: ${message}`);
  }
}

/** A chat's state, as a framework binding keeps it (React's is the same). */
class ChatState {
  constructor(messages = []) {
    this.messages = messages;
    this.statusNow = "ready";
    this.error = undefined;
    this.onChange = () => {};
    this.waiting = [];
  }
  get status() {
    return this.statusNow;
  }
  set status(status) {
    this.statusNow = status;
    if (status === "ready" || status === "error") {
      const waiting = this.waiting;
      this.waiting = [];
      waiting.forEach((resolve) => resolve(status));
    }
  }
  /** Settles when the chat is next ready (or failed): a request it makes by itself ended. */
  settled() {
    return new Promise((resolve) => this.waiting.push(resolve));
  }
  pushMessage(message) {
    this.messages = this.messages.concat(message);
    this.onChange(this.messages);
  }
  popMessage() {
    this.messages = this.messages.slice(0, -1);
    this.onChange(this.messages);
  }
  replaceMessage(index, message) {
    this.messages = [
      ...this.messages.slice(0, index),
      this.snapshot(message),
      ...this.messages.slice(index + 1),
    ];
    this.onChange(this.messages);
  }
  snapshot(value) {
    return structuredClone(value);
  }
}

/**
 * A `fetch` that keeps the `data:` lines of every response it reads, each
 * response's whole body (the chat engine may stop reading early); `reads`
 * gets a promise per response that settles once its body is read.
 */
function recordingFetch(lines, reads) {
  return async (url, init) => {
    const response = await fetch(url, init);
    if (!response.body) {
      return response;
    }
    const [kept, read] = response.body.tee();
    const reading = (async () => {
      let text = "";
      const decoder = new TextDecoder();
      for await (const bytes of read) {
        text += decoder.decode(bytes, { stream: true });
      }
      for (const line of text.split("\n")) {
        if (line.startsWith("data: ")) {
          lines.push(line.slice(6));
        }
      }
    })();
    reads.push(reading);
    return new Response(kept, {
      status: response.status,
      statusText: response.statusText,
      headers: response.headers,
    });
  };
}

/** A chat engine on chat `id`, as `useChat({id, transport})` makes one. */
function chatEngine(id, { agent, messages, extraHeaders, sendAutomaticallyWhen } = {}) {
  const lines = [];
  const reads = [];
  const errors = [];
  const state = new ChatState(messages);
  const transport = new ai.DefaultChatTransport({
    api,
    headers: { ...headers, ...extraHeaders },
    body: agent ? { agent } : undefined,
    fetch: recordingFetch(lines, reads),
  });
  const chat = new ai.AbstractChat({
    id,
    transport,
    state,
    sendAutomaticallyWhen,
    onError: (error) => errors.push(String(error.message ?? error)),
  });
  /** The chunks the engine's requests were answered with, each body read whole. */
  const chunks = async () => {
    await Promise.all(reads);
    return chunksOf(lines);
  };
  return { chat, state, transport, chunks, errors };
}

/** The chunks of recorded `data:` lines, and whether `[DONE]` ended them. */
function chunksOf(lines) {
  const done = lines.at(-1) === "[DONE]";
  const chunks = lines.filter((line) => line !== "[DONE]").map((line) => JSON.parse(line));
  return { chunks, done };
}

/**
 * A UI message stream read by the package: every chunk through
 * `parseJsonEventStream` and `uiMessageChunkSchema` (a chunk it refuses fails
 * the test), then `readUIMessageStream`. `stopAfter(chunks)` true stops
 * reading, which closes the connection.
 */
async function readStream(response, { stopAfter } = {}) {
  if (response.status !== 200) {
    check(false, `status ${response.status}: ${await response.text()}`);
  }
  check(
    response.headers.get("x-vercel-ai-ui-message-stream") === "v1",
    "no x-vercel-ai-ui-message-stream: v1 header",
  );
  const chunks = [];
  const parsed = ai
    .parseJsonEventStream({ stream: response.body, schema: ai.uiMessageChunkSchema })
    .pipeThrough(
      new TransformStream({
        transform(result, controller) {
          if (!result.success) {
            throw new Error(`a chunk the schema refuses: ${result.error} (${result.rawValue ? JSON.stringify(result.rawValue) : ""})`);
          }
          chunks.push(result.value);
          controller.enqueue(result.value);
        },
      }),
    );
  const errors = [];
  let message;
  for await (const snapshot of ai.readUIMessageStream({
    stream: parsed,
    onError: (error) => errors.push(String(error.message ?? error)),
  })) {
    message = snapshot;
    if (stopAfter?.(chunks)) {
      break;
    }
  }
  return { chunks, message, errors };
}

function userMessage(text) {
  return { id: randomUUID(), role: "user", parts: [{ type: "text", text }] };
}

function post(chatId, message, extra = {}) {
  return fetch(api, {
    method: "POST",
    headers: { ...headers, "content-type": "application/json" },
    body: JSON.stringify({ id: chatId, messages: [message], trigger: "submit-message", ...extra }),
  });
}

/** Each tool call's `tool-input-delta`s, joined, parse to its `tool-input-available` input. */
function checkToolInputs(chunks) {
  const pieces = new Map();
  let formed = 0;
  for (const chunk of chunks) {
    if (chunk.type === "tool-input-start") {
      pieces.set(chunk.toolCallId, "");
    } else if (chunk.type === "tool-input-delta") {
      check(pieces.has(chunk.toolCallId), `a delta before tool-input-start: ${chunk.toolCallId}`);
      pieces.set(chunk.toolCallId, pieces.get(chunk.toolCallId) + chunk.inputTextDelta);
    } else if (chunk.type === "tool-input-available") {
      const text = pieces.get(chunk.toolCallId);
      check(text !== undefined, `tool-input-available without start: ${chunk.toolCallId}`);
      if (text !== "") {
        formed += 1;
        check(
          JSON.stringify(JSON.parse(text)) === JSON.stringify(chunk.input),
          `pieces ${text} do not make the input ${JSON.stringify(chunk.input)}`,
        );
      }
    }
  }
  return formed;
}

/** The engine's chat ends ready with no error, its stream whole. */
function checkClean(engine, what) {
  check(engine.errors.length === 0, `${what}: onError: ${engine.errors}`);
  check(engine.chat.status === "ready", `${what}: status ${engine.chat.status}`);
  check(engine.chat.error === undefined, `${what}: error ${engine.chat.error}`);
}

/** A chat with the onboarding agent: a tool call forms, runs, and the reply follows. */
async function tools() {
  const chatId = `chat-${randomUUID()}`;
  const engine = chatEngine(chatId, { agent: "onboarding" });
  await engine.chat.sendMessage({ text: "Ada Lovelace" });
  checkClean(engine, "first message");
  await engine.chat.sendMessage({ text: "Tell me about my profile" });
  checkClean(engine, "second message");
  const { chunks, done } = await engine.chunks();
  check(done, "the engine's streams did not end with [DONE]");
  const formed = checkToolInputs(chunks);
  check(formed > 0, "no tool call formed from tool-input-delta pieces");
  // The same chat through the parser alone.
  const raw = await readStream(await post(chatId, userMessage("Lovelace, Ada"), { agent: "onboarding" }));
  check(raw.errors.length === 0, `onError: ${raw.errors}`);
  check(raw.chunks.at(-1).type === "finish" && raw.chunks.at(-1).finishReason === "stop", "no finish: stop");
  checkToolInputs(raw.chunks);
  // The chat as a reloaded page loads it: valid UI messages.
  const stored = await (await fetch(`${api}/${encodeURIComponent(chatId)}/messages`, { headers })).json();
  await ai.validateUIMessages({ messages: stored.data });
  return {
    chat_id: chatId,
    engine_messages: engine.state.messages,
    stored_messages: stored.data,
    raw_message: raw.message,
    raw_types: raw.chunks.map((chunk) => chunk.type),
    formed,
  };
}

/** A run followed, dropped mid-reply, and resumed as `useChat({resume: true})` does. */
async function resume() {
  const chatId = `chat-${randomUUID()}`;
  const question = userMessage("Tell me a long story");
  const first = await readStream(await post(chatId, question, { agent: "long" }), {
    stopAfter: (chunks) => chunks.some((chunk) => chunk.type === "text-delta"),
  });
  check(first.errors.length === 0, `onError: ${first.errors}`);
  const runId = first.chunks[0].messageMetadata.run_id;
  // A page reloaded mid-reply: the engine starts with the user's message
  // (loaded from the server) and resumes; the parser reads a second
  // reconnection at the same time.
  const engine = chatEngine(chatId, { messages: [question] });
  const [, replay] = await Promise.all([
    engine.chat.resumeStream(),
    fetch(`${api}/${encodeURIComponent(chatId)}/stream`, { headers }).then((r) => readStream(r)),
  ]);
  checkClean(engine, "resumed");
  check(replay.errors.length === 0, `onError: ${replay.errors}`);
  check(replay.chunks[0].type === "start", "a resumed stream starts with start");
  check(replay.chunks[0].messageId === runId, "the resumed message is the run's");
  const { done } = await engine.chunks();
  check(done, "the resumed stream did not end with [DONE]");
  // Nothing active now: 204, which the transport reads as nothing to resume.
  const after = await engine.transport.reconnectToStream({ chatId });
  check(after === null, "a chat with no active run resumed something");
  const never = await engine.transport.reconnectToStream({ chatId: `never-${randomUUID()}` });
  check(never === null, "a chat never used resumed something");
  return {
    chat_id: chatId,
    run_id: runId,
    first_chunks: first.chunks.length,
    engine_messages: engine.state.messages,
    raw_message: replay.message,
  };
}

/** A run stopped from the page: the cancel route, then `abort` and `finish`. */
async function cancel() {
  const chatId = `chat-${randomUUID()}`;
  const engine = chatEngine(chatId, { agent: "slow" });
  let cancelled;
  engine.state.onChange = (messages) => {
    const last = messages.at(-1);
    const runId = last?.metadata?.run_id;
    const wrote = last?.parts.some((part) => part.type === "text" && part.text.length > 0);
    if (!cancelled && last?.role === "assistant" && runId && wrote) {
      cancelled = fetch(`${base}/v1/runs/${runId}/cancel`, { method: "POST", headers }).then(
        (r) => r.status,
      );
    }
  };
  await engine.chat.sendMessage({ text: "go on and on" });
  checkClean(engine, "cancelled");
  const { chunks, done } = await engine.chunks();
  check(done, "the cancelled stream did not end with [DONE]");
  return {
    chat_id: chatId,
    cancel_status: await cancelled,
    types: chunks.map((chunk) => chunk.type),
    finish: chunks.at(-1),
    engine_messages: engine.state.messages,
  };
}

/** A run whose model server fails mid-reply: `error`, then `finish`. */
async function failed() {
  const chatId = `chat-${randomUUID()}`;
  const engine = chatEngine(chatId, { agent: "flaky" });
  await engine.chat.sendMessage({ text: "hello" });
  check(engine.chat.status === "error", `status ${engine.chat.status}`);
  const { chunks, done } = await engine.chunks();
  check(done, "the failed stream did not end with [DONE]");
  const raw = await readStream(await post(chatId, userMessage("again")));
  return {
    engine_error: engine.chat.error?.message,
    engine_errors: engine.errors,
    types: chunks.map((chunk) => chunk.type),
    finish: chunks.at(-1),
    raw_errors: raw.errors,
    raw_types: raw.chunks.map((chunk) => chunk.type),
  };
}

/** A thinking model's reply: a reasoning part, then the text. */
async function reasoning() {
  const engine = chatEngine(`chat-${randomUUID()}`, { agent: "thinker" });
  await engine.chat.sendMessage({ text: "Why?" });
  checkClean(engine, "reasoning");
  return { reply: engine.state.messages.at(-1) };
}

/**
 * Another answer, as `regenerate()` asks for it, then an edit of the
 * question (`sendMessage({text, messageId})`): each a new run, the replaced
 * reply (and question) gone from the chat as reloaded.
 */
async function again() {
  const chatId = `chat-${randomUUID()}`;
  const engine = chatEngine(chatId);
  await engine.chat.sendMessage({ text: "hello" });
  checkClean(engine, "hello");
  const first = engine.state.messages.at(-1);
  await engine.chat.regenerate();
  checkClean(engine, "regenerate");
  const second = engine.state.messages.at(-1);
  check(engine.state.messages.length === 2, `regenerate: ${engine.state.messages.length} messages`);
  check(second.role === "assistant" && second.id !== first.id, "regenerate: a new reply");
  const question = engine.state.messages[0];
  await engine.chat.sendMessage({ text: "hello again", messageId: question.id });
  checkClean(engine, "edit");
  check(engine.state.messages.length === 2, `edit: ${engine.state.messages.length} messages`);
  const stored = await (await fetch(`${api}/${encodeURIComponent(chatId)}/messages`, { headers })).json();
  await ai.validateUIMessages({ messages: stored.data });
  return {
    runs: [first.id, second.id, engine.state.messages[1].id],
    engine_messages: engine.state.messages,
    stored_messages: stored.data,
  };
}

/**
 * The README's client module (README_CLIENT): a chat on its transport, and
 * its stop once the reply has begun.
 */
async function readme() {
  const client = await import(process.env.README_CLIENT);
  const token = process.env.AGENTSTREAM_KEY;
  const state = new ChatState();
  const errors = [];
  const chat = new ai.AbstractChat({
    id: `chat-${randomUUID()}`,
    transport: client.agentstreamTransport(base, token, "slow"),
    state,
    onError: (error) => errors.push(String(error.message ?? error)),
  });
  let stopping;
  state.onChange = (messages) => {
    const last = messages.at(-1);
    const wrote = last?.parts.some((part) => part.type === "text" && part.text.length > 0);
    if (!stopping && last?.role === "assistant" && wrote) {
      stopping = client.stopReply(base, token, last);
    }
  };
  await chat.sendMessage({ text: "Tell me everything" });
  await stopping;
  check(errors.length === 0, `README client: onError: ${errors}`);
  check(chat.status === "ready", `README client: status ${chat.status}`);
  const reply = chat.messages.at(-1);
  return {
    status: reply.metadata?.status,
    wrote: reply.parts.some((part) => part.type === "text" && part.text.length > 0),
  };
}

/**
 * Human approval of a tool call. AI SDK 6, opted into its parts: the call
 * waits (`approval-requested`), `addToolApprovalResponse` answers it and the
 * engine sends the answer by itself (`lastAssistantMessageIsCompleteWithApprovalResponses`),
 * and the same message goes on: approved, the call's output; denied,
 * `output-denied`. AI SDK 5: the stream ends at the pause with nothing its
 * parser does not know; the call is approved through the runs API.
 */
async function approval() {
  const six = version.startsWith("6.");
  const chatId = `chat-${randomUUID()}`;
  const engine = chatEngine(chatId, {
    agent: "careful",
    extraHeaders: six ? { "x-ai-sdk-version": "6" } : {},
    sendAutomaticallyWhen: six ? ai.lastAssistantMessageIsCompleteWithApprovalResponses : undefined,
  });
  const answers = [];
  for (const [text, approved, reason] of [
    ["buy milk", true, undefined],
    ["sell the car", false, "not today"],
  ]) {
    await engine.chat.sendMessage({ text });
    checkClean(engine, `asked: ${text}`);
    const asking = engine.state.messages.at(-1);
    check(asking.metadata?.status === "requires_action", `paused: ${JSON.stringify(asking.metadata)}`);
    const part = asking.parts.find((p) => p.type === "dynamic-tool");
    if (!six) {
      check(part?.state === "input-available", `ai 5: part ${JSON.stringify(part)}`);
      const decided = await fetch(`${base}/v1/runs/${asking.metadata.run_id}/approvals`, {
        method: "POST",
        headers: { ...headers, "content-type": "application/json" },
        body: JSON.stringify({ call_id: part.toolCallId, approved, reason }),
      });
      check(decided.status === 200, `ai 5: decision ${decided.status}`);
      // Read the run's events on from its pause to its end.
      const { last_seq: pause } = await decided.json();
      const rest = await fetch(`${base}/v1/runs/${asking.metadata.run_id}/events?after=${pause}`, {
        headers,
      });
      const events = await rest.text();
      check(events.includes("event: done"), `ai 5: the run went on: ${events}`);
      answers.push({ run_id: asking.metadata.run_id });
      continue;
    }
    check(part?.state === "approval-requested", `part ${JSON.stringify(part)}`);
    check(part.approval.id === part.toolCallId, "the approval's ID is the call's");
    const settled = engine.state.settled();
    await engine.chat.addToolApprovalResponse({ id: part.approval.id, approved, reason });
    check((await settled) === "ready", `after the decision: ${engine.chat.status} ${engine.errors}`);
    checkClean(engine, `decided: ${text}`);
    const reply = engine.state.messages.at(-1);
    check(reply.id === asking.id, "the run's message goes on");
    answers.push({ run_id: asking.metadata.run_id, reply });
  }
  const stored = await (
    await fetch(`${api}/${encodeURIComponent(chatId)}/messages`, {
      headers: { ...headers, ...(six ? { "x-ai-sdk-version": "6" } : {}) },
    })
  ).json();
  await ai.validateUIMessages({ messages: stored.data });
  const { chunks, done } = await engine.chunks();
  check(done, "the approval streams did not end with [DONE]");
  return {
    answers,
    stored_messages: stored.data,
    types: chunks.map((chunk) => chunk.type),
    engine_messages: engine.state.messages,
  };
}

const seen = { version };
seen.tools = await tools();
seen.resume = await resume();
seen.cancel = await cancel();
seen.failed = await failed();
seen.reasoning = await reasoning();
seen.again = await again();
seen.readme = await readme();
seen.approval = await approval();
process.stdout.write(`${JSON.stringify(seen)}\n`);
