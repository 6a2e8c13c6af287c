// agentstream chat page: conversations, streamed runs, resume after reload or
// connection loss, cancel, approval of tool calls, and the API key prompt.
// Plain JS, no build step.
//
// The SSE stream is read with fetch() and parsed here, because EventSource
// cannot send the Authorization header.
"use strict";

const els = {
  body: document.body,
  modes: document.getElementById("modes"),
  newConversation: document.getElementById("new-conversation"),
  transcript: document.getElementById("transcript"),
  hint: document.getElementById("empty-hint"),
  profileState: document.getElementById("profile-state"),
  profileFields: document.getElementById("profile-fields"),
  status: document.getElementById("status"),
  keyForm: document.getElementById("key-form"),
  keyInput: document.getElementById("key-input"),
  keyLabel: document.querySelector("label[for=key-input]"),
  composer: document.getElementById("composer"),
  input: document.getElementById("input"),
  send: document.getElementById("send"),
  stop: document.getElementById("stop"),
};

// One line per agent the server lists (GET /v1/agents), by name.
const descriptions = new Map();

const HINTS = {
  onboarding:
    "Onboarding: the assistant asks a few questions and saves your answers to your profile. Start with your name.",
  chat: "Chat: ask anything. Mention your profile to see a tool call.",
};
const MARKERS = {
  cancelled: "Stopped",
  failed: "Failed",
  interrupted: "Interrupted",
  expired: "Expired: no decision came in time",
};
// Reconnect delays in ms; the last one repeats.
const BACKOFF = [500, 1000, 2000, 4000, 8000];

// ---- session storage (per tab; the API key never goes in a URL) ----

const saved = {
  get(name) {
    try {
      return sessionStorage.getItem("agentstream." + name);
    } catch {
      return null;
    }
  },
  set(name, value) {
    try {
      if (value === null || value === undefined) sessionStorage.removeItem("agentstream." + name);
      else sessionStorage.setItem("agentstream." + name, value);
    } catch {
      // Storage disabled: the page still works, it just forgets on reload.
    }
  },
  json(name) {
    try {
      return JSON.parse(this.get(name) || "null");
    } catch {
      return null;
    }
  },
};

const state = {
  mode: "onboarding",
  conversationId: null,
  run: null, // the run in flight: see startRun()
};

// ---- status line ----

function setStatus(text, kind = "") {
  els.status.textContent = text;
  els.status.className = "status" + (kind ? " " + kind : "");
}

// ---- HTTP with the API key ----

class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let keyPrompt = null;

// Shows the key form once, however many requests are waiting for it.
function askForKey(rejected) {
  if (!keyPrompt) {
    keyPrompt = new Promise((resolve) => {
      els.keyLabel.textContent = rejected
        ? "That API key was not accepted; enter another"
        : "This server needs an API key or a sign-in token";
      els.keyForm.hidden = false;
      els.keyInput.focus();
      els.keyForm.onsubmit = (event) => {
        event.preventDefault();
        const key = els.keyInput.value.trim();
        if (!key) return;
        saved.set("key", key);
        els.keyInput.value = "";
        els.keyForm.hidden = true;
        keyPrompt = null;
        resolve();
      };
    });
  }
  return keyPrompt;
}

// fetch() with `Authorization: Bearer <key>` when a key is known; on 401
// asks for a key and tries again.
async function api(path, options = {}) {
  for (;;) {
    const headers = new Headers(options.headers || {});
    const key = saved.get("key");
    if (key) headers.set("authorization", "Bearer " + key);
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    const body = await response.json().catch(() => null);
    if (body?.error?.code !== "unauthorized") return response;
    saved.set("key", null);
    await askForKey(Boolean(key));
  }
}

async function failure(response) {
  const body = await response.json().catch(() => null);
  return new HttpError(
    response.status,
    body?.error?.code || "http_" + response.status,
    body?.error?.message || response.statusText || "request failed",
  );
}

async function apiJson(path, options = {}) {
  const response = await api(path, options);
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

function postJson(path, body) {
  return apiJson(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}

// ---- SSE parsing ----

// Yields {event, data, id} for each event of a text/event-stream body.
async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "message";
  let data = [];
  let id = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n")) >= 0) {
        let line = buffer.slice(0, end);
        buffer = buffer.slice(end + 1);
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") {
          if (data.length > 0) yield { event, data: data.join("\n"), id };
          event = "message";
          data = [];
          id = null;
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "event") event = text;
        else if (field === "data") data.push(text);
        else if (field === "id") id = text;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

// ---- rendering ----

// The page follows the reply while the reader is at the bottom; one who
// scrolled up to read is left there.
let following = true;
window.addEventListener("scroll", () => {
  following = window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 80;
});

function scrollToEnd() {
  if (following) window.scrollTo(0, document.documentElement.scrollHeight);
}

function append(node) {
  els.transcript.append(node);
  els.hint.textContent = "";
  scrollToEnd();
}

function addUser(text) {
  const li = document.createElement("li");
  li.className = "msg user";
  li.textContent = text;
  append(li);
  return li;
}

// An assistant bubble: text in `.text`, a marker when it was cut short.
function addAssistant(runId, text = "", status = "streaming") {
  const li = document.createElement("li");
  li.className = "msg assistant";
  if (runId) li.dataset.runId = runId;
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text;
  li.append(span);
  setBubbleStatus(li, status);
  append(li);
  return li;
}

// The model's reasoning, apart from its reply: collapsed until opened.
function addReasoning() {
  const li = document.createElement("li");
  li.className = "msg reasoning";
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = "Reasoning";
  const text = document.createElement("div");
  text.className = "reasoning-text";
  details.append(summary, text);
  li.append(details);
  append(li);
  return li;
}

function setBubbleStatus(li, status) {
  li.dataset.status = status;
  li.classList.toggle("streaming", status === "streaming");
  li.classList.toggle("stopped", status === "cancelled");
  li.querySelector(".marker")?.remove();
  if (MARKERS[status]) {
    const marker = document.createElement("span");
    marker.className = "marker";
    marker.textContent = MARKERS[status];
    li.append(marker);
  }
}

function addNote(text) {
  const li = document.createElement("li");
  li.className = "msg error-note";
  li.setAttribute("role", "alert");
  li.textContent = text;
  append(li);
}

function short(value, max = 60) {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

function describeArgs(args) {
  if (args && typeof args === "object" && !Array.isArray(args)) {
    return Object.entries(args)
      .map(([k, v]) => `${k}: ${short(v, 40)}`)
      .join(", ");
  }
  return short(args ?? "");
}

function addChip(callId, name, args) {
  const li = document.createElement("li");
  li.className = "chip";
  li.dataset.callId = callId;
  li.dataset.tool = name;
  li.title = `${name}(${JSON.stringify(args)})`;
  const label = document.createElement("span");
  label.className = "visually-hidden";
  label.textContent = "Tool call:";
  const icon = document.createElement("span");
  icon.setAttribute("aria-hidden", "true");
  icon.textContent = "⚙";
  const title = document.createElement("span");
  title.className = "name";
  title.textContent = name;
  const detail = document.createElement("span");
  detail.className = "args";
  detail.textContent = describeArgs(args);
  const result = document.createElement("span");
  result.className = "result";
  result.textContent = "…";
  li.append(label, icon, title, detail, result);
  append(li);
  return li;
}

// The tail of a forming call's arguments text, so the chip shows it growing.
function tail(text, max = 60) {
  return text.length > max ? "…" + text.slice(text.length - max + 1) : text;
}

// A tool call whose arguments are still arriving: its chip shows their text so far.
function growChip(chip, name, piece) {
  chip.dataset.arguments = (chip.dataset.arguments ?? "") + piece;
  chip.dataset.tool = name;
  chip.querySelector(".name").textContent = name;
  chip.querySelector(".args").textContent = tail(chip.dataset.arguments);
  chip.title = `${name}(${chip.dataset.arguments}`;
}

// The call is whole: its forming chip becomes the normal one.
function settleChip(chip, name, args) {
  delete chip.dataset.forming;
  delete chip.dataset.arguments;
  chip.dataset.tool = name;
  chip.querySelector(".name").textContent = name;
  chip.querySelector(".args").textContent = describeArgs(args);
  chip.title = `${name}(${JSON.stringify(args)})`;
}

function setChipResult(chip, output, isError) {
  if (!chip) return;
  const result = chip.querySelector(".result");
  const error = isError || (output && typeof output === "object" && "error" in output);
  result.className = "result " + (error ? "err" : "ok");
  if (error) result.textContent = "✗ " + short(output?.error ?? output);
  else if (output && typeof output === "object" && output.ok === true) result.textContent = "✓ done";
  else result.textContent = "✓ " + short(output);
  chip.title += " → " + JSON.stringify(output);
  chip.dataset.done = "true";
}

// A call that waits for the user's decision: Approve and Deny (with an
// optional reason), usable once the run has paused (`done` requires_action).
function askApproval(run, chip) {
  if (!chip || chip.querySelector(".approval")) return;
  chip.dataset.approval = "requested";
  const box = document.createElement("span");
  box.className = "approval";
  const reason = document.createElement("input");
  reason.type = "text";
  reason.className = "reason";
  reason.placeholder = "reason (optional)";
  reason.setAttribute("aria-label", `Why, for ${chip.dataset.tool}`);
  reason.maxLength = 500;
  const approve = document.createElement("button");
  approve.type = "button";
  approve.className = "approve";
  approve.textContent = "Approve";
  const deny = document.createElement("button");
  deny.type = "button";
  deny.className = "deny";
  deny.textContent = "Deny";
  for (const control of [reason, approve, deny]) control.disabled = !run.paused;
  approve.addEventListener("click", () => decide(run, chip, true, reason.value));
  deny.addEventListener("click", () => decide(run, chip, false, reason.value));
  box.append(approve, deny, reason);
  chip.append(box);
  chip.querySelector(".result").textContent = "waiting for your approval";
}

// The run paused: its questions can be answered now.
function enableApprovals(run) {
  for (const chip of run.chips.values()) {
    for (const control of chip.querySelectorAll(".approval button, .approval input")) {
      control.disabled = false;
    }
  }
  const first = [...run.chips.values()].find((chip) => chip.querySelector(".approval"));
  first?.querySelector(".approve")?.focus();
}

function showDecision(chip, approved, reason) {
  if (!chip) return;
  chip.querySelector(".approval")?.remove();
  chip.dataset.approval = approved ? "approved" : "denied";
  chip.querySelector(".result").textContent = approved
    ? "approved"
    : "denied" + (reason ? `: ${short(reason)}` : "");
}

// Sends the decision; once the run has every answer it goes on, and the
// page follows it from the pause.
async function decide(run, chip, approved, reason) {
  for (const control of chip.querySelectorAll(".approval button, .approval input")) {
    control.disabled = true;
  }
  try {
    const body = { call_id: chip.dataset.callId, approved };
    if (reason.trim()) body.reason = reason.trim();
    const stored = await postJson(`/v1/runs/${run.id}/approvals`, body);
    showDecision(chip, approved, reason.trim());
    if (stored.status !== "requires_action" && run.paused) {
      run.paused = false;
      setStatus("");
      follow(run);
    }
  } catch (error) {
    setStatus("Could not send the decision: " + error.message, "error");
    for (const control of chip.querySelectorAll(".approval button, .approval input")) {
      control.disabled = false;
    }
  }
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

// Renders stored messages; `skipRun` leaves out the assistant and tool
// messages of the run that is about to be replayed from its events.
function renderTranscript(messages, skipRun) {
  els.transcript.replaceChildren();
  const chips = new Map();
  for (const m of messages) {
    if (m.role === "user") {
      addUser(m.content);
      continue;
    }
    if (skipRun && m.run_id === skipRun) continue;
    if (m.role === "assistant") {
      if (m.content || (m.status !== "complete" && !m.tool_calls)) {
        addAssistant(m.run_id, m.content, m.status);
      }
      for (const call of m.tool_calls || []) {
        chips.set(call.id, addChip(call.id, call.name, parseJson(call.arguments)));
      }
    } else if (m.role === "tool") {
      const output = parseJson(m.content);
      setChipResult(chips.get(m.tool_call_id), output, false);
    }
  }
  showHint();
}

function showHint() {
  els.hint.textContent = els.transcript.children.length
    ? ""
    : HINTS[state.mode] || descriptions.get(state.mode) || "Ask anything.";
}

// ---- the profile panel ----

function renderProfile(profile) {
  const previous = new Map(
    [...els.profileFields.querySelectorAll("dd")].map((dd) => [dd.dataset.field, dd.textContent]),
  );
  els.profileFields.replaceChildren();
  const fields = Object.entries(profile.fields || {});
  for (const [field, value] of fields) {
    const dt = document.createElement("dt");
    dt.textContent = field.replaceAll("_", " ");
    const dd = document.createElement("dd");
    dd.dataset.field = field;
    dd.textContent = String(value);
    if (previous.get(field) !== dd.textContent) dd.classList.add("fresh");
    els.profileFields.append(dt, dd);
  }
  if (profile.completed_at) {
    els.profileState.textContent = "Onboarding complete.";
    els.profileState.className = "done";
  } else {
    els.profileState.textContent = fields.length ? "" : "Nothing saved yet.";
    els.profileState.className = "muted";
  }
}

async function loadProfile() {
  try {
    renderProfile(await apiJson("/v1/profile"));
  } catch (error) {
    els.profileState.textContent = "Could not load the profile: " + error.message;
  }
}

// ---- runs ----

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function randomId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Date.now().toString(36) + Math.random().toString(36).slice(2);
}

function persistRun(run) {
  saved.set(
    "inflight",
    JSON.stringify({
      mode: state.mode,
      conversation_id: run.conversationId,
      run_id: run.id,
      seq: run.seq,
    }),
  );
}

function setRunning(running) {
  els.send.disabled = running;
  els.stop.hidden = !running;
  els.stop.disabled = false;
  els.newConversation.disabled = running;
  for (const radio of els.modes.querySelectorAll("input")) radio.disabled = running;
}

// A run in flight and what it has drawn so far.
function newRun(conversationId, fields) {
  return {
    id: null,
    conversationId,
    seq: 0,
    finished: false,
    stopRequested: false,
    paused: false, // waiting for the user's decisions on tool calls
    current: null, // the assistant bubble deltas go to
    reasoning: null, // the reasoning block reasoning deltas go to
    chips: new Map(),
    start: null, // {input, client_message_id} until the server names the run
    ...fields,
  };
}

function applyEvent(run, data) {
  // A replay passes a pause the run went on after.
  if (run.paused && data.type !== "done") {
    run.paused = false;
    setStatus("");
  }
  // Reasoning ends where the reply, or a tool call, begins.
  if (data.type !== "reasoning.delta") run.reasoning = null;
  switch (data.type) {
    case "reasoning.delta":
      if (!run.reasoning) {
        endBubble(run);
        run.reasoning = addReasoning();
      }
      run.reasoning.querySelector(".reasoning-text").append(data.text);
      break;
    case "delta":
      if (!run.current) run.current = addAssistant(run.id);
      run.current.querySelector(".text").append(data.text);
      scrollToEnd();
      break;
    case "message.completed":
      if (run.current) {
        if (run.current.querySelector(".text").textContent === "") run.current.remove();
        else setBubbleStatus(run.current, "complete");
      }
      run.current = null;
      break;
    case "tool.call.delta": {
      let chip = run.chips.get(data.call_id);
      if (!chip) {
        endBubble(run);
        chip = addChip(data.call_id, data.name, "");
        chip.dataset.forming = "true";
        run.chips.set(data.call_id, chip);
      }
      growChip(chip, data.name, data.arguments_delta);
      scrollToEnd();
      break;
    }
    case "tool.call": {
      const chip = run.chips.get(data.call_id);
      if (chip) {
        settleChip(chip, data.name, data.arguments);
      } else {
        endBubble(run);
        run.chips.set(data.call_id, addChip(data.call_id, data.name, data.arguments));
      }
      break;
    }
    case "tool.approval_requested":
      askApproval(run, run.chips.get(data.call_id));
      scrollToEnd();
      break;
    case "tool.approval_decided":
      showDecision(run.chips.get(data.call_id), data.approved, data.reason);
      break;
    case "tool.result": {
      const chip = run.chips.get(data.call_id);
      setChipResult(chip, data.output, data.is_error);
      const tool = chip?.dataset.tool;
      if (!data.is_error && (tool === "update_profile" || tool === "complete_onboarding")) {
        loadProfile();
      }
      break;
    }
    case "error":
      addNote(`The run hit a problem (${data.code}): ${data.message}`);
      break;
    case "done":
      if (data.finish_reason === "length") {
        addNote("The reply stopped at the model's length limit (finish_reason: length).");
      } else if (data.finish_reason) {
        addNote(`The model stopped early (finish_reason: ${data.finish_reason}).`);
      }
      if (data.status === "requires_action") pauseRun(run);
      else finishRun(run, data.status);
      break;
    default:
      break;
  }
}

// Text after a tool call goes to a new bubble, below the chip.
function endBubble(run) {
  if (run.current && run.current.querySelector(".text").textContent === "") {
    run.current.remove();
  } else if (run.current) {
    setBubbleStatus(run.current, "complete");
  }
  run.current = null;
}

// The run waits for the user's decisions: nothing streams meanwhile. Stop
// still cancels it; the composer waits, as the conversation's turn is the run's.
function pauseRun(run) {
  endBubble(run);
  run.paused = true;
  setStatus("The assistant wants to use a tool: approve or deny it above.");
  enableApprovals(run);
}

function finishRun(run, status) {
  if (run.finished) return;
  run.finished = true;
  if (status !== "completed") {
    const bubble = run.current || addAssistant(run.id, "", status);
    setBubbleStatus(bubble, status);
  } else if (run.current) {
    setBubbleStatus(run.current, "complete");
  }
  run.current = null;
  if (state.run === run) state.run = null;
  saved.set("inflight", null);
  setRunning(false);
  setStatus(status === "completed" ? "" : `The reply ${MARKERS[status]?.toLowerCase() || status}.`);
  showHint();
}

// When a stream ends with nothing left to replay, the run's stored status says how it ended.
async function finishFromServer(run) {
  try {
    const stored = await apiJson(`/v1/runs/${run.id}`);
    finishRun(run, stored.status);
  } catch (error) {
    finishRun(run, "failed");
    addNote("Could not read the run: " + error.message);
  }
}

async function cancelRun(run) {
  run.stopRequested = true;
  els.stop.disabled = true;
  if (!run.id) return; // cancelled as soon as the server names the run
  setStatus("Stopping…");
  try {
    await apiJson(`/v1/runs/${run.id}/cancel`, { method: "POST" });
    if (run.paused) {
      // A paused run ends at once; its end is read from the pause on.
      run.paused = false;
      for (const chip of run.chips.values()) chip.querySelector(".approval")?.remove();
      follow(run);
    }
  } catch (error) {
    setStatus("Could not stop the reply: " + error.message, "error");
    els.stop.disabled = false;
  }
}

// Opens (or re-opens) the run's stream and draws its events until `done`,
// reconnecting with backoff from the last seen `seq` when the connection fails.
async function follow(run) {
  let attempt = 0;
  while (!run.finished && !run.paused) {
    let response;
    try {
      if (run.id) {
        response = await api(`/v1/runs/${run.id}/events`, {
          headers: { accept: "text/event-stream", "last-event-id": String(run.seq) },
        });
      } else {
        // Same client_message_id on a retry: the server answers with the same run.
        response = await api(`/v1/conversations/${run.conversationId}/runs`, {
          method: "POST",
          headers: { accept: "text/event-stream", "content-type": "application/json" },
          body: JSON.stringify(run.start),
        });
      }
    } catch {
      await trouble(attempt++);
      continue;
    }
    if (response.status === 204) {
      await finishFromServer(run);
      return;
    }
    if (!response.ok) {
      const error = await failure(response);
      if (response.status === 429 || response.status >= 500) {
        await trouble(attempt++, error.message);
        continue;
      }
      addNote(error.message);
      finishRun(run, "failed");
      setStatus(error.message, "error");
      return;
    }
    if (!run.id) {
      run.id = response.headers.get("x-run-id");
      persistRun(run);
      if (run.stopRequested) cancelRun(run);
    }
    if (attempt > 0) setStatus("Reconnected.");
    try {
      for await (const event of sseEvents(response.body)) {
        if (event.event === "error" && event.id === null) {
          setStatus("The server is busy; reconnecting…", "trouble");
          continue;
        }
        const data = parseJson(event.data);
        const seq = Number(event.id);
        if (seq > 0 && seq <= run.seq) continue; // already drawn
        attempt = 0;
        applyEvent(run, data);
        if (seq > 0) {
          run.seq = seq;
          if (!run.finished) persistRun(run);
        }
        if (run.finished) return;
      }
    } catch {
      // The connection broke mid-stream: reconnect below.
    }
    if (!run.finished && !run.paused) await trouble(attempt++);
  }
}

async function trouble(attempt, reason = "Connection lost") {
  const delay = BACKOFF[Math.min(attempt, BACKOFF.length - 1)];
  const jittered = delay / 2 + Math.random() * (delay / 2);
  setStatus(`${reason}. Reconnecting in ${Math.max(1, Math.round(jittered / 1000))} s…`, "trouble");
  await sleep(jittered);
  setStatus("Reconnecting…", "trouble");
}

async function ensureConversation() {
  if (state.conversationId) return state.conversationId;
  const conversation = await postJson("/v1/conversations", { agent: state.mode });
  state.conversationId = conversation.id;
  saved.set("conversation." + state.mode, conversation.id);
  return conversation.id;
}

async function sendMessage(text) {
  if (state.run || !text.trim()) return;
  setRunning(true);
  setStatus("");
  let conversationId;
  try {
    conversationId = await ensureConversation();
  } catch (error) {
    setRunning(false);
    setStatus("Could not start a conversation: " + error.message, "error");
    return false;
  }
  addUser(text);
  const run = newRun(conversationId, {
    start: { input: text, client_message_id: randomId() },
  });
  state.run = run;
  persistRun(run);
  follow(run);
  return true;
}

// ---- page set-up ----

function setMode(mode) {
  state.mode = mode;
  saved.set("mode", mode);
  els.body.classList.toggle("chat-mode", mode !== "onboarding");
  for (const radio of els.modes.querySelectorAll("input")) radio.checked = radio.value === mode;
  state.conversationId = saved.get("conversation." + mode);
}

// Loads the mode's conversation; resumes the run in flight from its first
// event, drawing it from the replay rather than from its stored partial
// message, so no text is drawn twice.
async function loadConversation(inflight, attempt = 0) {
  els.transcript.replaceChildren();
  if (state.mode === "onboarding") loadProfile();
  if (!state.conversationId) {
    showHint();
    return;
  }
  const mode = state.mode;
  try {
    let resume = null;
    if (inflight?.run_id && inflight.conversation_id === state.conversationId) {
      const run = await apiJson(`/v1/runs/${inflight.run_id}`).catch(() => null);
      const open = ["queued", "running", "requires_action"];
      if (run && open.includes(run.status)) resume = run;
    }
    const { data } = await apiJson(`/v1/conversations/${state.conversationId}/messages`);
    renderTranscript(data, resume?.id);
    if (attempt > 0) setStatus("");
    if (resume) {
      const run = newRun(state.conversationId, { id: resume.id });
      state.run = run;
      els.body.dataset.resumedRun = resume.id;
      setRunning(true);
      setStatus("Resuming the reply…");
      persistRun(run);
      follow(run).then(() => {
        if (els.status.textContent === "Resuming the reply…") setStatus("");
      });
    } else {
      saved.set("inflight", null);
    }
  } catch (error) {
    if (error instanceof HttpError && error.status === 404) {
      saved.set("conversation." + state.mode, null);
      state.conversationId = null;
      showHint();
    } else if (error instanceof HttpError && error.status < 500 && error.status !== 429) {
      setStatus("Could not load the conversation: " + error.message, "error");
    } else {
      // The server is unreachable or busy: try again, unless the mode changed meanwhile.
      await trouble(attempt, "Cannot reach the server");
      if (state.mode === mode && !state.run) await loadConversation(inflight, attempt + 1);
    }
  }
}

// Adds a choice for each agent the server lists besides the two built in
// the page, labelled with its description.
async function loadAgents() {
  let agents;
  try {
    ({ data: agents } = await apiJson("/v1/agents"));
  } catch {
    return; // The two built-in choices still work.
  }
  for (const agent of agents) {
    descriptions.set(agent.name, agent.description);
    let radio = els.modes.querySelector(`input[value="${CSS.escape(agent.name)}"]`);
    if (!radio) {
      const label = document.createElement("label");
      radio = document.createElement("input");
      radio.type = "radio";
      radio.name = "mode";
      radio.value = agent.name;
      radio.disabled = Boolean(state.run);
      const name = agent.name.replaceAll("_", " ");
      label.append(radio, " " + name.charAt(0).toUpperCase() + name.slice(1));
      els.modes.append(label);
    }
    radio.parentElement.title = agent.description + (agent.demo ? " (demo model)" : "");
    radio.checked = agent.name === state.mode;
  }
  showHint();
}

function init() {
  const inflight = saved.json("inflight");
  loadAgents();
  setMode(inflight?.mode || saved.get("mode") || "onboarding");
  loadConversation(inflight);

  els.modes.addEventListener("change", (event) => {
    if (state.run) return;
    setMode(event.target.value);
    setStatus("");
    loadConversation(null);
  });

  els.newConversation.addEventListener("click", () => {
    if (state.run) return;
    saved.set("conversation." + state.mode, null);
    state.conversationId = null;
    setStatus("");
    loadConversation(null);
    els.input.focus();
  });

  els.composer.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = els.input.value;
    if (await sendMessage(text)) els.input.value = "";
    els.input.focus();
  });

  els.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (!els.send.disabled) els.composer.requestSubmit();
    }
  });

  els.stop.addEventListener("click", () => {
    if (state.run) cancelRun(state.run);
  });
}

init();
