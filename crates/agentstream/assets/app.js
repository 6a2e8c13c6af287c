// agentstream chat page: the list of conversations, streamed runs, resume
// after a reload, a switch or a lost connection, stop, retry and edit,
// approval of tool calls, replies as Markdown, and the API key prompt.
// Plain JS, no build step; marked and DOMPurify are vendored beside it.
//
// The SSE stream is read with fetch() and parsed here, because EventSource
// cannot send the Authorization header.
"use strict";

const els = {
  body: document.body,
  app: document.getElementById("app"),
  sidebar: document.getElementById("sidebar"),
  drawerToggle: document.getElementById("drawer-toggle"),
  backdrop: document.getElementById("backdrop"),
  modes: document.getElementById("modes"),
  newConversation: document.getElementById("new-conversation"),
  search: document.getElementById("search"),
  conversations: document.getElementById("conversations"),
  listEmpty: document.getElementById("list-empty"),
  more: document.getElementById("more-conversations"),
  currentTitle: document.getElementById("current-title"),
  currentAgent: document.getElementById("current-agent"),
  transcript: document.getElementById("transcript"),
  hint: document.getElementById("empty-hint"),
  profileState: document.getElementById("profile-state"),
  profileFields: document.getElementById("profile-fields"),
  resetProfile: document.getElementById("reset-profile"),
  status: document.getElementById("status"),
  keyForm: document.getElementById("key-form"),
  keyInput: document.getElementById("key-input"),
  keyLabel: document.querySelector("label[for=key-input]"),
  composer: document.getElementById("composer"),
  input: document.getElementById("input"),
  send: document.getElementById("send"),
  stop: document.getElementById("stop"),
};

// The agents the server lists (GET /v1/agents), by name.
const agents = new Map();

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
// A run in one of these is still going (requires_action waits for the user).
const OPEN = ["queued", "running", "requires_action"];
// Reconnect delays in ms; the last one repeats.
const BACKOFF = [500, 1000, 2000, 4000, 8000];
const SSE = "text/event-stream";
// The narrow layout, where the list of conversations is a drawer.
const narrow = window.matchMedia("(max-width: 48rem)");

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
};

const state = {
  agent: "onboarding", // the agent of the conversation shown, or of the new one
  conversationId: null, // null: a new conversation, created by the first message
  conversation: null, // the conversation shown, as the server last gave it
  view: 0, // counts switches: an answer for an older view is dropped
  run: null, // the shown conversation's run in flight: see newRun()
  lastRun: null, // {id, status} of the shown conversation's last run
  profile: null,
  list: { items: [], cursor: null, q: "", token: 0, pending: false },
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

function sendJson(method, path, body) {
  return apiJson(path, {
    method,
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

// ---- Markdown, made safe ----

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// marked turns the reply into HTML; HTML the model wrote is shown as text,
// never parsed, and images become links (nothing loads by itself). DOMPurify
// then keeps only the tags marked makes and links to http(s) and mailto.
const markdown = window.marked?.Marked
  ? new window.marked.Marked({ gfm: true }).use({
      renderer: {
        html: ({ text, block }) => (block ? `<p>${escapeHtml(text)}</p>` : escapeHtml(text)),
        image: ({ href, text }) => `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`,
      },
    })
  : null;
const purify = window.DOMPurify?.isSupported ? window.DOMPurify : null;
const PURIFY = {
  ALLOWED_TAGS: [
    "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
    "li", "ol", "p", "pre", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
  ],
  ALLOWED_ATTR: ["href", "title", "class", "align", "start"],
  ALLOWED_URI_REGEXP: /^(?:https?|mailto):/i,
  RETURN_DOM_FRAGMENT: true,
};
purify?.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

// Draws Markdown into `target`; without both libraries, the plain text.
function renderMarkdown(target, source) {
  if (!markdown || !purify) {
    target.textContent = source;
    return;
  }
  const html = markdown.parse(source, { async: false }).trim();
  target.replaceChildren(purify.sanitize(html, PURIFY));
}

// ---- the transcript ----

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

function button(label, className, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = label;
  if (onClick) b.addEventListener("click", onClick);
  return b;
}

// A message bubble: its text in `.text`, its buttons in `.msg-actions`.
function bubble(role, runId) {
  const li = document.createElement("li");
  li.className = "msg " + role;
  if (runId) li.dataset.runId = runId;
  const text = document.createElement("div");
  text.className = "text";
  const actions = document.createElement("div");
  actions.className = "msg-actions";
  const copy = button("Copy", "copy", () => copyMessage(li, copy));
  actions.append(copy);
  li.append(text, actions);
  return li;
}

function addUser(text, runId) {
  const li = bubble("user", runId);
  li.querySelector(".text").textContent = text;
  append(li);
  return li;
}

// An assistant bubble; `li.markdown` holds its text as the model wrote it,
// drawn as Markdown into `.text`.
function addAssistant(runId, text = "", status = "streaming") {
  const li = bubble("assistant", runId);
  li.querySelector(".text").classList.add("md");
  setReply(li, text);
  setBubbleStatus(li, status);
  append(li);
  return li;
}

function setReply(li, text) {
  li.markdown = text;
  renderMarkdown(li.querySelector(".text"), text);
}

// The text a message's Copy button copies: the reply's Markdown, or what the user wrote.
function messageText(li) {
  return li.markdown ?? li.querySelector(".text").textContent;
}

async function copyMessage(li, copyButton) {
  const copied = await copyText(messageText(li));
  copyButton.focus();
  copyButton.textContent = copied ? "Copied" : "Copy failed";
  if (!copied) setStatus("Could not copy: select the text and copy it by hand.", "error");
  setTimeout(() => {
    copyButton.textContent = "Copy";
  }, 1500);
}

// The clipboard API where the browser allows it; else the older way, through
// a selected text area off screen.
async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = document.createElement("textarea");
    area.value = text;
    area.readOnly = true;
    area.className = "offscreen";
    document.body.append(area);
    area.select();
    let copied = false;
    try {
      copied = document.execCommand("copy");
    } catch {
      copied = false;
    }
    area.remove();
    return copied;
  }
}

// The model's reasoning, apart from its reply: collapsed until opened.
function addReasoning(runId) {
  const li = document.createElement("li");
  li.className = "msg reasoning";
  if (runId) li.dataset.runId = runId;
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
    li.querySelector(".msg-actions").before(marker);
  }
}

function addNote(text, runId) {
  const li = document.createElement("li");
  li.className = "msg error-note";
  if (runId) li.dataset.runId = runId;
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

function addChip(callId, name, args, runId) {
  const li = document.createElement("li");
  li.className = "chip";
  li.dataset.callId = callId;
  li.dataset.tool = name;
  if (runId) li.dataset.runId = runId;
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
  const approve = button("Approve", "approve", () => decide(run, chip, true, reason.value));
  const deny = button("Deny", "deny", () => decide(run, chip, false, reason.value));
  for (const control of [reason, approve, deny]) control.disabled = !run.paused;
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
    const stored = await sendJson("POST", `/v1/runs/${run.id}/approvals`, body);
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
// Messages a retry or an edit replaced (`superseded`) are not shown.
function renderTranscript(messages, skipRun) {
  els.transcript.replaceChildren();
  const chips = new Map();
  for (const m of messages) {
    if (m.superseded) continue;
    if (m.role === "user") {
      addUser(m.content, m.run_id);
      continue;
    }
    if (skipRun && m.run_id === skipRun) continue;
    if (m.role === "assistant") {
      if (m.content || (m.status !== "complete" && !m.tool_calls)) {
        addAssistant(m.run_id, m.content, m.status);
      }
      for (const call of m.tool_calls || []) {
        chips.set(call.id, addChip(call.id, call.name, parseJson(call.arguments), m.run_id));
      }
    } else if (m.role === "tool") {
      const output = parseJson(m.content);
      setChipResult(chips.get(m.tool_call_id), output, false);
    }
  }
  showHint();
}

// Retry on the last run's reply and Edit on the last question, once that run
// has ended; a run that ended with no reply gets a bubble to carry its Retry.
function refreshActions() {
  for (const old of els.transcript.querySelectorAll("button.retry, button.edit")) old.remove();
  const last = state.lastRun;
  if (state.run || !last || OPEN.includes(last.status)) return;
  const replies = els.transcript.querySelectorAll(`li.msg.assistant[data-run-id="${CSS.escape(last.id)}"]`);
  let reply = replies[replies.length - 1];
  if (!reply && last.status !== "completed") reply = addAssistant(last.id, "", last.status);
  // Copy sits at the outer end of each bar: Retry first on replies, Edit last on questions.
  reply?.querySelector(".msg-actions").prepend(button("Retry", "retry", () => startRetry(last.id)));
  const questions = els.transcript.querySelectorAll("li.msg.user");
  const question = questions[questions.length - 1];
  question?.querySelector(".msg-actions").append(button("Edit", "edit", () => beginEdit(question, last.id)));
}

// Edit and resend: the question becomes a text area in place; Enter (or
// Send) sends it as an edit of the last run, Escape puts it back.
function beginEdit(li, runId) {
  if (state.run || li.querySelector(".edit-form")) return;
  const form = document.createElement("form");
  form.className = "edit-form";
  const area = document.createElement("textarea");
  area.value = li.querySelector(".text").textContent;
  area.rows = Math.min(8, Math.max(2, area.value.split("\n").length));
  area.setAttribute("aria-label", "Edit your message");
  const row = document.createElement("div");
  row.className = "row";
  const cancel = button("Cancel", "secondary", () => close());
  const send = button("Send", "send-edit");
  send.type = "submit";
  row.append(cancel, send);
  form.append(area, row);
  li.classList.add("editing");
  li.append(form);
  area.focus();
  area.setSelectionRange(area.value.length, area.value.length);

  function close() {
    form.remove();
    li.classList.remove("editing");
    li.querySelector("button.edit")?.focus();
  }
  area.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      close();
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!area.value.trim() || state.run) return;
    startRetry(runId, area.value);
    els.input.focus();
  });
}

function showHint() {
  els.hint.textContent = els.transcript.children.length ? "" : hintFor(state.agent);
}

function hintFor(agent) {
  if (agent === "onboarding" && state.profile) {
    if (state.profile.completed_at) {
      return "Your onboarding is complete. Start a chat conversation, or reset your profile to go through onboarding again.";
    }
    if (Object.keys(state.profile.fields || {}).length) {
      return "Onboarding: some answers are already in your profile; answer the assistant's questions to fill in the rest.";
    }
  }
  return HINTS[agent] || agents.get(agent)?.description || "Ask anything.";
}

// ---- the profile panel ----

function renderProfile(profile) {
  state.profile = profile;
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
  showResetButton();
  showHint();
}

async function loadProfile() {
  try {
    renderProfile(await apiJson("/v1/profile"));
  } catch (error) {
    els.profileState.textContent = "Could not load the profile: " + error.message;
  }
}

// Reset profile is offered when there is something to reset.
function showResetButton() {
  const profile = state.profile;
  els.resetProfile.hidden = !profile || (!Object.keys(profile.fields || {}).length && !profile.completed_at);
}

// Reset profile, confirmed in place: every saved answer is forgotten
// (DELETE /v1/profile) and onboarding can start over.
function confirmResetProfile() {
  confirmInPlace(els.resetProfile, {
    question: "Forget every answer in your profile?",
    yes: "Reset",
    async onYes() {
      try {
        await apiJson("/v1/profile", { method: "DELETE" });
        await loadProfile();
        setStatus("Your profile was reset.");
      } catch (error) {
        setStatus("Could not reset the profile: " + error.message, "error");
      }
    },
    onClose: showResetButton,
    focusAfter: () => (els.resetProfile.hidden ? els.input : els.resetProfile),
  });
}

// Swaps `anchor` for a question with two buttons, Cancel focused; Escape
// cancels. Used for the deletes, which cannot be undone.
function confirmInPlace(anchor, { question, yes, onYes, onClose, focusAfter }) {
  const box = document.createElement("div");
  box.className = "confirm";
  box.setAttribute("role", "group");
  const text = document.createElement("p");
  text.textContent = question;
  box.setAttribute("aria-label", question);
  const yesButton = button(yes, "danger confirm-yes", async () => {
    yesButton.disabled = true;
    await onYes();
    close();
  });
  const noButton = button("Cancel", "secondary confirm-no", () => close());
  box.append(text, yesButton, noButton);
  box.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      close();
    }
  });
  anchor.hidden = true;
  anchor.after(box);
  noButton.focus();

  function close() {
    if (!box.isConnected) return;
    box.remove();
    anchor.hidden = false;
    onClose?.();
    (focusAfter?.() || anchor).focus();
  }
  return box;
}

// ---- runs ----

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function randomId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Date.now().toString(36) + Math.random().toString(36).slice(2);
}

function setRunning(running) {
  els.send.disabled = running;
  els.stop.hidden = !running;
  els.stop.disabled = false;
}

// A run the page follows and what it has drawn so far. Only the shown
// conversation's run is followed; switching away detaches it (the run goes
// on on the server) and coming back follows it again from its first event.
function newRun(conversationId, fields) {
  return {
    id: null,
    conversationId,
    seq: 0,
    finished: false,
    detached: false,
    abort: new AbortController(), // ends its requests when it is detached
    stopRequested: false,
    paused: false, // waiting for the user's decisions on tool calls
    current: null, // the assistant bubble deltas go to
    reasoning: null, // the reasoning block reasoning deltas go to
    chips: new Map(),
    start: null, // {input, client_message_id} until the server names the run
    retryOf: null, // the run a retry answers again, until the server names the new one
    retryBody: null, // {} or {input}: what the retry sends
    question: null, // the user bubble of a new question, named with the run
    ...fields,
  };
}

function detach(run) {
  run.detached = true;
  run.abort.abort();
}

// The server named the run (X-Run-Id): it is now the conversation's last.
function runNamed(run, id) {
  run.id = id;
  if (run.question) run.question.dataset.runId = id;
  state.lastRun = { id, status: "running" };
  loadConversations();
  if (run.stopRequested) cancelRun(run);
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
        run.reasoning = addReasoning(run.id);
      }
      run.reasoning.querySelector(".reasoning-text").append(data.text);
      break;
    case "delta":
      if (!run.current) run.current = addAssistant(run.id);
      setReply(run.current, run.current.markdown + data.text);
      scrollToEnd();
      break;
    case "message.completed":
      if (run.current) {
        if (run.current.markdown === "") run.current.remove();
        else setBubbleStatus(run.current, "complete");
      }
      run.current = null;
      break;
    case "tool.call.delta": {
      let chip = run.chips.get(data.call_id);
      if (!chip) {
        endBubble(run);
        chip = addChip(data.call_id, data.name, "", run.id);
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
        run.chips.set(data.call_id, addChip(data.call_id, data.name, data.arguments, run.id));
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
      addNote(`The run hit a problem (${data.code}): ${data.message}`, run.id);
      break;
    case "done":
      if (data.finish_reason === "length") {
        addNote("The reply stopped at the model's length limit (finish_reason: length).", run.id);
      } else if (data.finish_reason) {
        addNote(`The model stopped early (finish_reason: ${data.finish_reason}).`, run.id);
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
  if (run.current && run.current.markdown === "") {
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
    const reply = run.current || addAssistant(run.id, "", status);
    setBubbleStatus(reply, status);
  } else if (run.current) {
    setBubbleStatus(run.current, "complete");
  }
  run.current = null;
  if (state.run === run) state.run = null;
  if (run.id) state.lastRun = { id: run.id, status };
  setRunning(false);
  setStatus(status === "completed" ? "" : `The reply ${MARKERS[status]?.toLowerCase() || status}.`);
  refreshActions();
  showHint();
  loadConversations();
}

// When a stream ends with nothing left to replay, the run's stored status says how it ended.
async function finishFromServer(run) {
  try {
    const stored = await apiJson(`/v1/runs/${run.id}`, { signal: run.abort.signal });
    finishRun(run, stored.status);
  } catch (error) {
    if (run.detached) return;
    finishRun(run, "failed");
    addNote("Could not read the run: " + error.message, run.id);
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

// The request that opens the run's stream: its events once it has an ID,
// else the start of a run or of a retry.
function openStream(run) {
  const signal = run.abort.signal;
  if (run.id) {
    return api(`/v1/runs/${run.id}/events`, {
      signal,
      headers: { accept: SSE, "last-event-id": String(run.seq) },
    });
  }
  const headers = { accept: SSE, "content-type": "application/json" };
  if (run.retryOf) {
    return api(`/v1/runs/${run.retryOf}/retry`, {
      method: "POST",
      signal,
      headers,
      body: JSON.stringify(run.retryBody),
    });
  }
  // Same client_message_id on a retry: the server answers with the same run.
  return api(`/v1/conversations/${run.conversationId}/runs`, {
    method: "POST",
    signal,
    headers,
    body: JSON.stringify(run.start),
  });
}

// A retry has no idempotency key: when its answer was lost, the run it may
// have started is looked for before another is asked for.
async function findRetried(run) {
  try {
    const { data } = await apiJson(`/v1/conversations/${run.conversationId}/runs?limit=1`, {
      signal: run.abort.signal,
    });
    if (data[0] && data[0].id !== run.retryOf) {
      runNamed(run, data[0].id);
      return true;
    }
  } catch {
    // Still unreachable: the caller waits and tries again.
  }
  return false;
}

// Opens (or re-opens) the run's stream and draws its events until `done`,
// reconnecting with backoff from the last seen `seq` when the connection fails.
async function follow(run) {
  let attempt = 0;
  while (!run.finished && !run.paused && !run.detached) {
    let response;
    try {
      response = await openStream(run);
    } catch {
      if (run.detached) return;
      if (run.retryOf && !run.id && (await findRetried(run))) continue;
      await trouble(run, attempt++);
      continue;
    }
    if (run.detached) return;
    if (response.status === 204) {
      await finishFromServer(run);
      return;
    }
    if (!response.ok) {
      const error = await failure(response);
      if (response.status === 429 || response.status >= 500) {
        await trouble(run, attempt++, error.message);
        continue;
      }
      if (run.retryOf && !run.id) {
        // Refused (409: a newer run, or one still going): the transcript is drawn again as it stands.
        run.finished = true;
        state.run = null;
        setRunning(false);
        await loadConversation(state.view);
        setStatus("Could not answer again: " + error.message, "error");
        return;
      }
      addNote(error.message, run.id);
      finishRun(run, "failed");
      setStatus(error.message, "error");
      return;
    }
    if (!run.id) runNamed(run, response.headers.get("x-run-id"));
    if (attempt > 0) setStatus("Reconnected.");
    try {
      for await (const event of sseEvents(response.body)) {
        if (run.detached) return;
        if (event.event === "error" && event.id === null) {
          setStatus("The server is busy; reconnecting…", "trouble");
          continue;
        }
        const data = parseJson(event.data);
        const seq = Number(event.id);
        if (seq > 0 && seq <= run.seq) continue; // already drawn
        attempt = 0;
        applyEvent(run, data);
        if (seq > 0) run.seq = seq;
        if (run.finished) return;
      }
    } catch {
      // The connection broke mid-stream, or the run was detached: see below.
    }
    if (!run.finished && !run.paused && !run.detached) await trouble(run, attempt++);
  }
}

async function trouble(run, attempt, reason = "Connection lost") {
  const delay = BACKOFF[Math.min(attempt, BACKOFF.length - 1)];
  const jittered = delay / 2 + Math.random() * (delay / 2);
  if (run?.detached) return;
  setStatus(`${reason}. Reconnecting in ${Math.max(1, Math.round(jittered / 1000))} s…`, "trouble");
  await sleep(jittered);
  if (run?.detached) return;
  setStatus("Reconnecting…", "trouble");
}

async function ensureConversation() {
  if (state.conversationId) return state.conversationId;
  const conversation = await sendJson("POST", "/v1/conversations", { agent: state.agent });
  state.conversationId = conversation.id;
  state.conversation = conversation;
  saved.set("conversation", conversation.id);
  showCurrent();
  return conversation.id;
}

async function sendMessage(text) {
  if (state.run || !text.trim()) return false;
  const view = state.view;
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
  if (view !== state.view) return false; // another conversation was opened meanwhile
  const run = newRun(conversationId, {
    start: { input: text, client_message_id: randomId() },
  });
  run.question = addUser(text);
  state.run = run;
  refreshActions();
  follow(run);
  return true;
}

// Retry (no `input`) answers the last question again; with `input`, the
// question is edited and answered. The replaced messages leave the page (the
// server keeps them, marked superseded) and the new run streams in their place.
function startRetry(runId, input) {
  if (state.run) return;
  for (const node of els.transcript.querySelectorAll(`[data-run-id="${CSS.escape(runId)}"]:not(.user)`)) {
    node.remove();
  }
  const run = newRun(state.conversationId, {
    retryOf: runId,
    retryBody: input === undefined ? {} : { input },
  });
  if (input !== undefined) {
    const questions = els.transcript.querySelectorAll("li.msg.user");
    questions[questions.length - 1]?.remove();
    run.question = addUser(input);
  }
  state.run = run;
  setRunning(true);
  setStatus("");
  refreshActions();
  follow(run);
}

// ---- the list of conversations ----

function agentLabel(name) {
  const words = name.replaceAll("_", " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function titleOf(conversation) {
  return conversation?.title || "New conversation";
}

// Loads the first page of the list again (or, with `more`, the next page).
async function loadConversations({ more = false } = {}) {
  const params = new URLSearchParams({ limit: "50" });
  if (more && state.list.cursor) params.set("cursor", state.list.cursor);
  if (state.list.q) params.set("q", state.list.q);
  const token = ++state.list.token;
  let page;
  try {
    page = await apiJson("/v1/conversations?" + params);
  } catch (error) {
    if (token === state.list.token) els.listEmpty.textContent = "Could not load the conversations: " + error.message;
    return;
  }
  if (token !== state.list.token) return; // a later load answers instead
  state.list.items = more ? [...state.list.items, ...page.data] : page.data;
  state.list.cursor = page.next_cursor;
  const current = state.list.items.find((c) => c.id === state.conversationId);
  if (current) state.conversation = current;
  renderConversations();
}

// Draws the list, unless one of its items is being renamed or has its menu
// open: then it is drawn when that closes.
function renderConversations() {
  if (els.conversations.querySelector(".rename-form, .item-menu:not([hidden])")) {
    state.list.pending = true;
    return;
  }
  state.list.pending = false;
  const focused = document.activeElement?.closest?.("li.conversation");
  const focusedClass = document.activeElement?.className;
  els.conversations.replaceChildren(...state.list.items.map(conversationItem));
  els.listEmpty.textContent = state.list.items.length
    ? ""
    : state.list.q
      ? "No conversation has that in its title."
      : "No conversations yet.";
  els.more.hidden = !state.list.cursor;
  if (focused) {
    const again = els.conversations.querySelector(`li[data-id="${CSS.escape(focused.dataset.id)}"]`);
    (again?.querySelector(`button.${focusedClass?.split(" ")[0]}`) || again?.querySelector(".open"))?.focus();
  }
  showCurrent();
}

function closedEditor() {
  if (state.list.pending) renderConversations();
}

// One item: the button that opens it (title, agent, preview) and a menu
// button with Rename and Delete.
function conversationItem(conversation) {
  const li = document.createElement("li");
  li.className = "conversation";
  li.dataset.id = conversation.id;
  const open = button("", "open", () => {
    const fromDrawer = els.body.classList.contains("drawer-open");
    setDrawer(false);
    if (conversation.id !== state.conversationId) showConversation(conversation.id, conversation.agent);
    if (fromDrawer) els.input.focus();
  });
  if (conversation.id === state.conversationId) open.setAttribute("aria-current", "true");
  const title = document.createElement("span");
  title.className = "title";
  title.textContent = titleOf(conversation);
  const meta = document.createElement("span");
  meta.className = "meta";
  const agent = document.createElement("span");
  agent.className = "agent";
  agent.textContent = agentLabel(conversation.agent);
  meta.append(agent);
  if (conversation.preview) {
    const preview = document.createElement("span");
    preview.className = "preview";
    preview.textContent = conversation.preview;
    meta.append(" · ", preview);
  }
  open.append(title, meta);

  const menuId = "menu-" + conversation.id;
  const toggle = button("⋯", "menu-button");
  toggle.setAttribute("aria-label", `Rename or delete “${titleOf(conversation)}”`);
  toggle.setAttribute("aria-expanded", "false");
  toggle.setAttribute("aria-controls", menuId);
  const menu = document.createElement("div");
  menu.className = "item-menu";
  menu.id = menuId;
  menu.hidden = true;
  const rename = button("Rename", "rename", () => beginRename(li, conversation));
  const remove = button("Delete", "delete", () => confirmDelete(li, conversation));
  menu.append(rename, remove);
  toggle.addEventListener("click", () => setMenu(li, menu.hidden));
  menu.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      setMenu(li, false);
      toggle.focus();
    }
  });
  li.append(open, toggle, menu);
  return li;
}

// Opens or closes an item's menu; a list drawn meanwhile is drawn on close,
// unless `quiet` (the item stays in use: a rename or a question replaces the menu).
function setMenu(li, open, { quiet = false } = {}) {
  const menu = li.querySelector(".item-menu");
  const toggle = li.querySelector(".menu-button");
  if (open) {
    for (const other of els.conversations.querySelectorAll("li.conversation")) {
      if (other !== li) setMenu(other, false);
    }
  }
  menu.hidden = !open;
  menu.querySelector(".confirm")?.remove();
  for (const b of menu.querySelectorAll("button")) b.hidden = false;
  toggle.setAttribute("aria-expanded", String(open));
  if (open) menu.querySelector("button").focus();
  else if (!quiet) closedEditor();
}

// Rename in place: Enter (or Save) sends the title, Escape keeps the old
// one; an empty title clears it.
function beginRename(li, conversation) {
  setMenu(li, false, { quiet: true });
  const open = li.querySelector(".open");
  const form = document.createElement("form");
  form.className = "rename-form";
  const input = document.createElement("input");
  input.type = "text";
  input.value = conversation.title || "";
  input.maxLength = 200;
  input.setAttribute("aria-label", "Title of the conversation");
  const save = button("Save", "save");
  save.type = "submit";
  const cancel = button("Cancel", "secondary", () => close());
  form.append(input, save, cancel);
  open.hidden = true;
  li.querySelector(".menu-button").hidden = true;
  open.after(form);
  input.focus();
  input.select();

  function close() {
    form.remove();
    open.hidden = false;
    li.querySelector(".menu-button").hidden = false;
    open.focus();
    closedEditor();
  }
  input.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      close();
    }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const title = input.value.trim() || null;
    save.disabled = true;
    try {
      const renamed = await sendJson("PATCH", `/v1/conversations/${conversation.id}`, { title });
      Object.assign(conversation, renamed);
      if (state.conversationId === conversation.id) {
        state.conversation = renamed;
        showCurrent();
      }
      li.querySelector(".open .title").textContent = titleOf(renamed);
      li.querySelector(".menu-button").setAttribute("aria-label", `Rename or delete “${titleOf(renamed)}”`);
      setStatus("Renamed.");
      close();
    } catch (error) {
      save.disabled = false;
      setStatus("Could not rename: " + error.message, "error");
    }
  });
}

function confirmDelete(li, conversation) {
  const menu = li.querySelector(".item-menu");
  const first = menu.querySelector("button");
  for (const b of menu.querySelectorAll("button")) {
    if (b !== first) b.hidden = true;
  }
  confirmInPlace(first, {
    question: `Delete “${titleOf(conversation)}”? This cannot be undone.`,
    yes: "Delete",
    async onYes() {
      try {
        await apiJson(`/v1/conversations/${conversation.id}`, { method: "DELETE" });
      } catch (error) {
        const busy = error instanceof HttpError && error.status === 409;
        setStatus(
          busy ? "That conversation has a reply in progress: stop it, then delete." : "Could not delete: " + error.message,
          "error",
        );
        return;
      }
      const next = li.nextElementSibling || li.previousElementSibling;
      state.list.items = state.list.items.filter((c) => c.id !== conversation.id);
      li.remove();
      setStatus("Deleted.");
      if (state.conversationId === conversation.id) showConversation(null, conversation.agent);
      renderConversations();
      const again = next && els.conversations.querySelector(`li[data-id="${CSS.escape(next.dataset.id)}"] .open`);
      (again || els.newConversation).focus();
    },
    onClose: () => {
      if (li.isConnected) setMenu(li, false);
    },
    focusAfter: () =>
      els.conversations.querySelector(`li[data-id="${CSS.escape(conversation.id)}"] .menu-button`) ||
      document.activeElement,
  });
}

// The header names what is shown: its title and its agent.
function showCurrent() {
  els.currentTitle.textContent = titleOf(state.conversation);
  els.currentAgent.textContent = agentLabel(state.agent);
  els.body.dataset.conversation = state.conversationId || "";
  for (const open of els.conversations.querySelectorAll("button.open")) {
    if (open.closest("li").dataset.id === state.conversationId) open.setAttribute("aria-current", "true");
    else open.removeAttribute("aria-current");
  }
}

// ---- switching ----

function setAgent(agent) {
  state.agent = agent;
  saved.set("agent", agent);
  els.body.classList.toggle("chat-mode", agent !== "onboarding");
  for (const radio of els.modes.querySelectorAll("input")) radio.checked = radio.value === agent;
}

// Shows a conversation (or, with `id` null, a new one with `agent`). A run
// in flight in the one left goes on on the server; the page stops following it.
function showConversation(id, agent) {
  if (state.run) {
    detach(state.run);
    state.run = null;
  }
  state.view += 1;
  state.conversationId = id;
  state.conversation = id ? state.list.items.find((c) => c.id === id) || null : null;
  state.lastRun = null;
  saved.set("conversation", id);
  if (agent) setAgent(agent);
  setRunning(false);
  setStatus("");
  showCurrent();
  return loadConversation(state.view);
}

function newConversation(agent) {
  showConversation(null, agent);
  setDrawer(false);
  els.input.focus();
}

// Loads the shown conversation: its last run first, then the transcript. A
// run still going is followed from its first event, its stored messages
// left out, so no text is drawn twice.
async function loadConversation(view, attempt = 0) {
  els.transcript.replaceChildren();
  if (state.agent === "onboarding") loadProfile();
  const id = state.conversationId;
  if (!id) {
    showHint();
    return;
  }
  try {
    const [conversation, runs] = await Promise.all([
      apiJson(`/v1/conversations/${id}`),
      apiJson(`/v1/conversations/${id}/runs?limit=1`),
    ]);
    const { data: messages } = await apiJson(`/v1/conversations/${id}/messages`);
    if (view !== state.view) return;
    state.conversation = conversation;
    if (conversation.agent !== state.agent) {
      setAgent(conversation.agent);
      if (state.agent === "onboarding") loadProfile();
    }
    showCurrent();
    const last = runs.data[0] || null;
    state.lastRun = last && { id: last.id, status: last.status };
    const resume = last && OPEN.includes(last.status) ? last : null;
    renderTranscript(messages, resume?.id);
    if (attempt > 0) setStatus("");
    if (!resume) {
      refreshActions();
      return;
    }
    const run = newRun(id, { id: resume.id });
    state.run = run;
    els.body.dataset.resumedRun = resume.id;
    setRunning(true);
    setStatus("Resuming the reply…");
    follow(run).then(() => {
      if (els.status.textContent === "Resuming the reply…") setStatus("");
    });
  } catch (error) {
    if (view !== state.view) return;
    if (error instanceof HttpError && error.status === 404) {
      showConversation(null, state.agent);
    } else if (error instanceof HttpError && error.status < 500 && error.status !== 429) {
      setStatus("Could not load the conversation: " + error.message, "error");
    } else {
      // The server is unreachable or busy: try again, unless another conversation was opened meanwhile.
      await trouble(null, attempt, "Cannot reach the server");
      if (view === state.view && !state.run) await loadConversation(view, attempt + 1);
    }
  }
}

// Adds a choice for each agent the server lists besides the two built in
// the page, labelled with its description.
async function loadAgents() {
  let list;
  try {
    ({ data: list } = await apiJson("/v1/agents"));
  } catch {
    return; // The two built-in choices still work.
  }
  for (const agent of list) {
    agents.set(agent.name, agent);
    let radio = els.modes.querySelector(`input[value="${CSS.escape(agent.name)}"]`);
    if (!radio) {
      const label = document.createElement("label");
      radio = document.createElement("input");
      radio.type = "radio";
      radio.name = "agent";
      radio.value = agent.name;
      label.append(radio, " " + agentLabel(agent.name));
      els.modes.append(label);
    }
    radio.parentElement.title = agent.description + (agent.demo ? " (demo model)" : "");
    radio.checked = agent.name === state.agent;
  }
  showHint();
}

// ---- the drawer (narrow screens) ----

function setDrawer(open) {
  const was = els.body.classList.contains("drawer-open");
  const modal = open && narrow.matches;
  els.body.classList.toggle("drawer-open", modal);
  els.drawerToggle.setAttribute("aria-expanded", String(modal));
  els.backdrop.hidden = !modal;
  els.app.inert = modal;
  if (modal) {
    // The drawer opens at its top; focus moves in without the scroll it
    // would make while the drawer slides.
    els.sidebar.scrollTop = 0;
    const target = els.conversations.querySelector("[aria-current]") || els.newConversation;
    target.focus({ preventScroll: true });
    target.scrollIntoView({ block: "nearest" });
  } else if (was && els.sidebar.contains(document.activeElement)) {
    els.drawerToggle.focus();
  }
}

// ---- start ----

function init() {
  setAgent(saved.get("agent") || "onboarding");
  state.conversationId = saved.get("conversation");
  showCurrent();
  loadAgents();
  loadConversations();
  loadConversation(state.view);

  els.modes.addEventListener("change", (event) => {
    showConversation(null, event.target.value);
  });
  els.newConversation.addEventListener("click", () => {
    newConversation(els.modes.querySelector("input:checked")?.value || state.agent);
  });
  els.more.addEventListener("click", () => loadConversations({ more: true }));

  let searching = null;
  els.search.addEventListener("input", () => {
    clearTimeout(searching);
    searching = setTimeout(() => {
      state.list.q = els.search.value.trim();
      loadConversations();
    }, 250);
  });

  els.drawerToggle.addEventListener("click", () => setDrawer(!els.body.classList.contains("drawer-open")));
  els.backdrop.addEventListener("click", () => setDrawer(false));
  narrow.addEventListener("change", () => setDrawer(false));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && els.body.classList.contains("drawer-open")) setDrawer(false);
  });
  // A click elsewhere closes an item's open menu.
  document.addEventListener("click", (event) => {
    for (const menu of els.conversations.querySelectorAll(".item-menu:not([hidden])")) {
      const li = menu.closest("li");
      if (!li.contains(event.target)) setMenu(li, false);
    }
  });

  els.resetProfile.addEventListener("click", confirmResetProfile);
  document.querySelector(".skip-link").addEventListener("click", (event) => {
    event.preventDefault();
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
