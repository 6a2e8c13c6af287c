// End-to-end tests of the chat page (GET /) in headless Chromium against the
// real agentstream binary. Run with scripts/browser-tests.sh, or after
// `npm ci` here: `node tests/browser/run.mjs`. Prints `N passed, N failed`
// last and exits non-zero on any failure.
//
// Environment: CHROMIUM (default /usr/bin/chromium), AGENTSTREAM_BIN and
// MOCK_LLM_BIN (skip the cargo build and use these binaries), SCREENSHOTS (default target/screenshots, outside the tracked tree:
// a test run leaves `git status` clean; `SCREENSHOTS=docs/screenshots`
// refreshes the README's pictures on purpose).

import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const screenshots = path.resolve(root, process.env.SCREENSHOTS || "target/screenshots");
const TIMEOUT = 20_000;

// A chat message long enough that the demo model's echo streams for about
// two seconds at 40 ms a word: time to reload or stop in the middle.
const LONG_MESSAGE =
  "Tell me about streaming replies: " +
  Array.from({ length: 30 }, (_, i) => `word${i + 1}`).join(" ");

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

function assertEqual(actual, expected, what) {
  if (actual !== expected) {
    throw new Error(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
  }
}

// ---- the server ----

function built(name) {
  const target = process.env.CARGO_TARGET_DIR
    ? path.resolve(root, process.env.CARGO_TARGET_DIR)
    : path.join(root, "target");
  return path.join(target, "debug", name);
}

// The server, and beside it the fake model server `mock-llm` that one test uses.
function serverBinary() {
  if (process.env.AGENTSTREAM_BIN) return process.env.AGENTSTREAM_BIN;
  execFileSync("cargo", ["build", "-p", "agentstream", "-p", "mock-llm"], { cwd: root, stdio: "inherit" });
  return built("agentstream");
}

// mock-llm on a free port, up once it logs "mock-llm listening". Its
// `fail_first=N` fails the first N requests of each model string with a 500.
async function startMock() {
  const port = await freePort();
  const binary = process.env.MOCK_LLM_BIN || built("mock-llm");
  const env = { ...process.env, NO_COLOR: "1", RUST_LOG: "info" };
  const child = spawn(binary, ["--bind", `127.0.0.1:${port}`], { env, stdio: ["ignore", "ignore", "pipe"] });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  let log = "";
  child.stderr.setEncoding("utf8");
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`mock-llm did not start:\n${log}`)), 30_000);
    child.stderr.on("data", (chunk) => {
      log += chunk;
      if (log.includes("mock-llm listening")) {
        clearTimeout(timer);
        resolve();
      }
    });
    exited.then((code) => reject(new Error(`mock-llm exited (${code}):\n${log}`)));
  });
  return {
    base: `http://127.0.0.1:${port}/v1`,
    async stop() {
      child.kill("SIGTERM");
      await exited;
    },
  };
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

// The database the tests' servers use: SQLite (the default), or with
// BROWSER_DATABASE=postgres a schema of its own for each server in the
// PostgreSQL that AGENTSTREAM_TEST_POSTGRES_URL names (scripts/postgres.sh).
const POSTGRES = process.env.BROWSER_DATABASE === "postgres";

// A fresh database in `dir` (SQLite) or schema (PostgreSQL), and how to drop it.
function freshDatabase(dir) {
  if (!POSTGRES) {
    return { database: `sqlite://${path.join(dir, "agentstream.db")}`, drop() {} };
  }
  const base = process.env.AGENTSTREAM_TEST_POSTGRES_URL;
  assert(base, "BROWSER_DATABASE=postgres needs AGENTSTREAM_TEST_POSTGRES_URL (source scripts/postgres.sh)");
  const schema = `browser_${path.basename(dir).replace(/[^a-zA-Z0-9]/g, "_").toLowerCase()}`;
  execFileSync("psql", [base, "-qc", `CREATE SCHEMA ${schema}`]);
  const separator = base.includes("?") ? "&" : "?";
  return {
    database: `${base}${separator}options=-csearch_path%3D${schema}`,
    drop() {
      execFileSync("psql", [base, "-qc", `DROP SCHEMA ${schema} CASCADE`]);
    },
  };
}

// Starts the server on a free port with a fresh database and waits for its
// "serving" line. Its stderr is kept to check for WARN and ERROR. `config`,
// the lines of a TOML file, is written to the server's own folder and passed
// with --config. `before` gets the database's URL, the environment and that
// folder.
async function startServer(binary, { name, config, before } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "agentstream-browser-"));
  const { database, drop } = freshDatabase(dir);
  const env = { ...process.env, AGENTSTREAM_LOG_FORMAT: "text", NO_COLOR: "1", RUST_LOG: "info" };
  delete env.RUST_BACKTRACE;
  const setup = before ? before({ database, env, dir }) : {};
  if (config) {
    const file = path.join(dir, "agentstream.toml");
    fs.writeFileSync(file, config.join("\n"));
    setup.args = [...(setup.args || []), "--config", file];
  }
  const port = await freePort();
  const args = [
    "--bind", `127.0.0.1:${port}`,
    "--database-url", database,
    "--scripted-delay-ms", "40",
    ...(setup.args || []),
  ];
  const child = spawn(binary, args, { env, stdio: ["ignore", "ignore", "pipe"] });
  const log = [];
  let pending = "";
  let onLine = () => {};
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk) => {
    pending += chunk;
    const lines = pending.split("\n");
    pending = lines.pop();
    for (const line of lines) {
      log.push(line);
      onLine(line);
    }
  });
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name}: no "serving" line:\n${log.join("\n")}`)), 60_000);
    onLine = (line) => {
      if (line.includes("serving")) {
        clearTimeout(timer);
        resolve();
      }
    };
    exited.then(({ code }) => reject(new Error(`${name}: the server exited (${code}):\n${log.join("\n")}`)));
  });
  return {
    name,
    base: `http://127.0.0.1:${port}`,
    log,
    ...setup,
    async stop() {
      child.kill("SIGTERM");
      const { code } = await exited;
      if (pending) log.push(pending);
      fs.rmSync(dir, { recursive: true, force: true });
      drop();
      return code;
    },
  };
}

// A TCP proxy in front of the server whose connections the test can cut,
// to show the page losing its stream and resuming it by itself.
async function startProxy(target) {
  const { port: targetPort } = new URL(target);
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(targetPort), "127.0.0.1");
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
      socket.on("error", () => {});
    }
    client.pipe(upstream);
    upstream.pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    base: `http://127.0.0.1:${server.address().port}`,
    cut() {
      for (const socket of sockets) socket.destroy();
    },
    close() {
      this.cut();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

async function getJson(base, route, key) {
  const headers = key ? { authorization: `Bearer ${key}` } : {};
  const response = await fetch(base + route, { headers });
  assert(response.ok, `GET ${route}: ${response.status}`);
  return response.json();
}

// ---- page helpers ----

async function newPage(browser, base, viewport = { width: 1000, height: 720 }) {
  const context = await browser.newContext({ viewport, baseURL: base });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
  page.errors = errors;
  // Failed loads (a 404 for an icon, say) show as console errors.
  const consoleErrors = [];
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(message.text());
  });
  page.consoleErrors = consoleErrors;
  return { context, page };
}

async function send(page, text) {
  const input = page.getByLabel("Message", { exact: true });
  await input.fill(text);
  await input.press("Enter");
}

// The streaming bubble's text (the Markdown it has received, which it
// draws) once it has at least `words` words.
async function partialText(page, words) {
  const handle = await page.waitForFunction(
    (words) => {
      const bubble = document.querySelector("li.msg.assistant.streaming");
      const text = bubble?.markdown?.trim() ?? "";
      if (!text || text.split(/\s+/).length < words) return null;
      return { text: bubble.markdown, runId: bubble.dataset.runId };
    },
    words,
    { polling: "raf" },
  );
  return handle.jsonValue();
}

// The last assistant bubble with this status: `text` is the reply as
// received (its Markdown), `shown` the text drawn from it.
async function lastAssistant(page, status) {
  const bubble = page.locator(`li.msg.assistant[data-status="${status}"]`).last();
  await bubble.waitFor();
  return {
    text: await bubble.evaluate((li) => li.markdown),
    shown: await bubble.locator(".text").textContent(),
    runId: await bubble.getAttribute("data-run-id"),
    bubble,
  };
}

// The conversation the page shows.
async function conversationId(page) {
  return page.evaluate(() => document.body.dataset.conversation);
}

async function storedMessages(base, conversation, key) {
  const { data } = await getJson(base, `/v1/conversations/${conversation}/messages`, key);
  return data;
}

// Picks the agent of a new conversation; on a narrow screen the choice is
// in the drawer, opened first and closed after.
async function pickAgent(page, label) {
  const toggle = page.locator("#drawer-toggle");
  const drawer = await toggle.isVisible();
  if (drawer) await toggle.click();
  await page.getByLabel(label, { exact: true }).check();
  if (drawer) {
    await page.keyboard.press("Escape");
    await page.locator("body:not(.drawer-open)").waitFor();
  }
}

async function chatMode(page) {
  await pickAgent(page, "Chat");
  await page.locator("body.chat-mode").waitFor();
}

// The conversation's item in the list.
function listItem(page, conversation) {
  return page.locator(`li.conversation[data-id="${conversation}"]`);
}

// Presses Tab (or Shift+Tab) until `predicate` holds in the page for the
// focused element; fails after `max` presses.
async function tabTo(page, predicate, { back = false, max = 40 } = {}) {
  for (let i = 0; i < max; i++) {
    await page.keyboard.press(back ? "Shift+Tab" : "Tab");
    if (await page.evaluate(predicate)) return;
  }
  const focused = await page.evaluate(() => document.activeElement?.outerHTML.slice(0, 120));
  throw new Error(`${max} presses of Tab did not reach it; focus is on ${focused}`);
}

// No script error and no console error, but for the answers a test
// expects (`allow`; a 401 is how a server with keys asks for one).
function noPageErrors(page, allow = /status of 401/) {
  assert(page.errors.length === 0, "errors in the page: " + page.errors.join("; "));
  const unexpected = page.consoleErrors.filter((text) => !allow.test(text));
  assert(unexpected.length === 0, "console errors: " + unexpected.join("; "));
}

// ---- the tests ----

// A run in one of these statuses is still going.
const OPEN_STATUSES = ["queued", "running", "requires_action"];

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

test("an onboarding answer streams in, with its tool chip and the profile update", async ({ browser, server }) => {
  const { context, page } = await newPage(browser, server.base);
  await page.goto("/");
  await page.getByRole("heading", { name: "Your profile" }).waitFor();
  await page.getByText("Nothing saved yet.").waitFor();
  await page.getByText("built-in scripted demo model").waitFor();

  await send(page, "Ada Lovelace");
  await page.locator("li.msg.user", { hasText: "Ada Lovelace" }).waitFor();
  const chip = page.locator('li.chip[data-tool="update_profile"]');
  await chip.waitFor();
  const partial = await partialText(page, 3);
  const final = await lastAssistant(page, "complete");
  const expected = 'Thanks! I saved your name as "Ada Lovelace". What is your role?';
  assertEqual(final.text, expected, "the final reply");
  assertEqual(final.shown, expected, "the reply as drawn");
  assert(partial.text.length < final.text.length, `saw only the final text, not a partial one: ${partial.text}`);
  assert(final.text.startsWith(partial.text), `the partial text ${JSON.stringify(partial.text)} is not a prefix of the reply`);

  await page.locator('li.chip[data-tool="update_profile"][data-done="true"]').waitFor();
  const chipText = await chip.textContent();
  assert(chipText.includes("name") && chipText.includes("Ada Lovelace") && chipText.includes("✓"), `chip: ${chipText}`);
  await page.locator('#profile-fields dd[data-field="name"]', { hasText: "Ada Lovelace" }).waitFor();

  const conversation = await conversationId(page);
  const stored = (await storedMessages(server.base, conversation)).filter((m) => m.role === "assistant" && m.content);
  assertEqual(stored.at(-1).content, final.text, "the stored reply");

  // A second answer, so the screenshot shows the profile filling in.
  await send(page, "Mathematician");
  await page.locator('#profile-fields dd[data-field="role"]', { hasText: "Mathematician" }).waitFor();
  await page.locator('li.msg.assistant[data-status="complete"]', { hasText: "What are your goals?" }).waitFor();
  await page.locator("#send:not([disabled])").waitFor();
  await page.screenshot({ path: path.join(screenshots, "onboarding.png") });

  // A new onboarding conversation's hint says what the profile holds; Reset
  // profile, confirmed, empties it.
  await page.getByRole("button", { name: "New conversation" }).click();
  await page.locator("#empty-hint", { hasText: "some answers are already in your profile" }).waitFor();
  await page.getByRole("button", { name: "Reset profile" }).click();
  await page.locator("#profile-panel .confirm").getByRole("button", { name: "Reset" }).click();
  await page.getByText("Nothing saved yet.").waitFor();
  await page.locator("#empty-hint", { hasText: "Start with your name." }).waitFor();
  assertEqual(Object.keys((await getJson(server.base, "/v1/profile")).fields).length, 0, "fields after the reset");
  assert(await page.getByRole("button", { name: "Reset profile" }).isHidden(), "Reset profile shows for an empty profile");
  noPageErrors(page);
  await context.close();
});

test("a tool call's chip appears as its arguments stream in, then settles", async ({ browser, server }) => {
  const { context, page } = await newPage(browser, server.base);
  await page.goto("/");
  await page.getByText("built-in scripted demo model").waitFor();
  // Every text a forming chip shows, as the page draws it.
  await page.evaluate(() => {
    window.formingTexts = [];
    new MutationObserver(() => {
      const args = document.querySelector("li.chip[data-forming] .args")?.textContent;
      if (args && window.formingTexts.at(-1) !== args) window.formingTexts.push(args);
    }).observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
  });

  await send(page, "Grace Hopper");
  // Not waited on: the forming chip may settle before a wait could see it;
  // the observer above has recorded every text it showed.
  const chip = page.locator('li.chip[data-tool="update_profile"][data-done="true"]');
  await chip.waitFor();
  const seen = await page.evaluate(() => window.formingTexts);
  const whole = '{"field":"name","value":"Grace Hopper"}';
  assert(
    seen.every((text) => whole.startsWith(text)),
    `forming texts that are not the arguments so far: ${JSON.stringify(seen)}`,
  );
  assert(seen.some((text) => text.length < whole.length), `no partial arguments shown: ${JSON.stringify(seen)}`);
  assertEqual(await page.locator("li.chip[data-forming]").count(), 0, "forming chips left");
  assertEqual(await page.locator('li.chip[data-tool="update_profile"]').count(), 1, "chips for the call");
  assertEqual(await chip.locator(".args").textContent(), "field: name, value: Grace Hopper", "the settled chip");
  noPageErrors(page);
  await context.close();
});

test("the model's reasoning shows collapsed, apart from its reply", async ({ browser, server }) => {
  const { context, page } = await newPage(browser, server.base);
  await page.goto("/");
  await chatMode(page);
  await send(page, "Please think about it");
  const reply = page.locator('li.msg.assistant[data-status="complete"]', { hasText: "You said" });
  await reply.waitFor();
  const reasoning = page.locator("li.msg.reasoning");
  assertEqual(await reasoning.count(), 1, "reasoning blocks");
  const details = reasoning.locator("details");
  assertEqual(await details.evaluate((d) => d.open), false, "the reasoning is collapsed");
  const thought = "The user asks me to think. I am a script, so I follow my script; " +
    "a real model would reason about the question here.";
  assertEqual(await reasoning.locator(".reasoning-text").textContent(), thought, "the reasoning");
  assert(!(await reply.textContent()).includes("a real model would reason"), "the reply has the reasoning");
  // It comes before the reply, and opens by keyboard.
  const order = await page.evaluate(() =>
    [...document.querySelectorAll("li.msg.reasoning, li.msg.assistant")].map((li) => li.className));
  assert(order.at(-2).includes("reasoning") && order.at(-1).includes("assistant"), `order: ${order}`);
  await reasoning.locator("summary").focus();
  await page.keyboard.press("Enter");
  assertEqual(await details.evaluate((d) => d.open), true, "opened by keyboard");
  noPageErrors(page);
  await context.close();
});

test("a reload in the middle of a reply resumes it without duplicated text (phone width)", async ({ browser, server }) => {
  const { context, page } = await newPage(browser, server.base, { width: 375, height: 740 });
  await page.goto("/");
  await chatMode(page);
  await send(page, LONG_MESSAGE);
  const before = await partialText(page, 5);
  await page.reload();

  // The page picked the run up again, mid-reply, from its event log.
  await page.waitForFunction((id) => document.body.dataset.resumedRun === id, before.runId);
  const resumed = await partialText(page, 1);
  assertEqual(resumed.runId, before.runId, "the resumed run");
  const final = await lastAssistant(page, "complete");
  assertEqual(final.runId, before.runId, "the finished run");

  const conversation = await conversationId(page);
  const stored = await storedMessages(server.base, conversation);
  const reply = stored.filter((m) => m.role === "assistant" && m.run_id === before.runId);
  assertEqual(reply.length, 1, "stored replies");
  assertEqual(final.text, reply[0].content, "the page's reply against the stored one");
  assert(final.text.startsWith(before.text), "the reply does not continue the text seen before the reload");
  assertEqual(await page.locator("li.msg.assistant").count(), 1, "assistant bubbles");
  assertEqual(await page.locator("li.msg.user").count(), 1, "user bubbles");
  assertEqual(await page.locator("li.msg.user .text").textContent(), LONG_MESSAGE, "the user message");
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert(width <= 375, `the page scrolls sideways at 375 px (${width} px wide)`);

  await page.screenshot({ path: path.join(screenshots, "resume.png") });
  noPageErrors(page);
  await context.close();
});

test("stop cancels the run; the partial reply stays, marked stopped", async ({ browser, server }) => {
  const { context, page } = await newPage(browser, server.base);
  await page.goto("/");
  await chatMode(page);
  await send(page, LONG_MESSAGE);
  const partial = await partialText(page, 4);
  await page.getByRole("button", { name: "Stop" }).click();

  const stopped = await lastAssistant(page, "cancelled");
  await stopped.bubble.locator(".marker", { hasText: "Stopped" }).waitFor();
  assertEqual(stopped.runId, partial.runId, "the stopped run");
  assert(stopped.text.startsWith(partial.text), "the partial reply was not kept");
  const run = await getJson(server.base, `/v1/runs/${partial.runId}`);
  assertEqual(run.status, "cancelled", "the run's status");
  const conversation = await conversationId(page);
  const reply = (await storedMessages(server.base, conversation)).find(
    (m) => m.role === "assistant" && m.run_id === partial.runId,
  );
  assertEqual(reply.status, "cancelled", "the stored reply's status");
  assertEqual(reply.content, stopped.text, "the stored partial reply");
  await page.getByRole("button", { name: "Send" }).waitFor();
  assert(await page.getByRole("button", { name: "Stop" }).isHidden(), "the stop button is still shown");

  await page.screenshot({ path: path.join(screenshots, "stop.png") });
  noPageErrors(page);
  await context.close();
});

test("a lost connection shows in the status line and the stream resumes by itself", async ({ browser, server }) => {
  const proxy = await startProxy(server.base);
  try {
    const { context, page } = await newPage(browser, proxy.base);
    await page.goto("/");
    await chatMode(page);
    await send(page, LONG_MESSAGE);
    const partial = await partialText(page, 4);
    proxy.cut();
    await page.waitForFunction(
      () => {
        const status = document.getElementById("status");
        return status.classList.contains("trouble") && status.textContent.includes("Reconnecting");
      },
      null,
      { polling: "raf" },
    );
    const final = await lastAssistant(page, "complete");
    assertEqual(final.runId, partial.runId, "the finished run");
    const conversation = await conversationId(page);
    const reply = (await storedMessages(server.base, conversation)).find(
      (m) => m.role === "assistant" && m.run_id === partial.runId,
    );
    assertEqual(final.text, reply.content, "the page's reply against the stored one");
    assertEqual(await page.locator("li.msg.assistant").count(), 1, "assistant bubbles");
    // The cut stream is a failed load in the console, as it should be.
    noPageErrors(page, /ERR_INCOMPLETE_CHUNKED_ENCODING|ERR_CONNECTION|ERR_EMPTY_RESPONSE/);
    await context.close();
  } finally {
    await proxy.close();
  }
});

test("with API keys on, the page asks for a key once and keeps it for the tab", async ({ browser, binary }) => {
  let key;
  const server = await startServer(binary, {
    name: "keys",
    before: ({ database, env }) => {
      key = execFileSync(binary, ["keys", "create", "--user", "ada", "--database-url", database], {
        env,
        encoding: "utf8",
        stdio: ["ignore", "pipe", "ignore"],
      }).trim();
      return {};
    },
  });
  try {
    assert(key && !/\s/.test(key), `no key printed: ${JSON.stringify(key)}`);
    const { context, page } = await newPage(browser, server.base);
    const urls = [];
    page.on("request", (request) => urls.push(request.url()));
    await page.goto("/");
    await page.getByLabel("This server needs an API key").waitFor();
    await page.getByLabel("This server needs an API key").fill(key);
    await page.getByRole("button", { name: "Use key" }).click();
    await page.getByText("Nothing saved yet.").waitFor();
    await send(page, "Grace");
    await lastAssistant(page, "complete");
    await page.locator('#profile-fields dd[data-field="name"]', { hasText: "Grace" }).waitFor();
    assert(await page.locator("#key-form").isHidden(), "the key form is still shown");

    // A reload keeps the key: no second prompt.
    await page.reload();
    await page.locator("li.msg.user", { hasText: "Grace" }).waitFor();
    assert(await page.locator("#key-form").isHidden(), "asked for the key again after a reload");
    assert(!urls.some((url) => url.includes(key)), "the key appeared in a URL");
    const profile = await getJson(server.base, "/v1/profile", key);
    assertEqual(profile.fields.name, "Grace", "the profile of the key's user");
    noPageErrors(page);
    await context.close();
  } finally {
    server.exitCode = await server.stop();
    checkLog(server);
  }
});

test("an agent from the configuration is a choice on the page, and its tool calls show", async ({ browser, binary }) => {
  const server = await startServer(binary, {
    name: "agents",
    config: [
      "[agents.helpdesk]",
      'description = "Tells you who you are signed in as."',
      'tools = ["whoami"]',
      "",
      "[tools.whoami]",
      'kind = "sql"',
      'description = "The signed-in user\'s name."',
      "read_only = true",
      'result = "one"',
      'sql = "SELECT name FROM users WHERE id = :caller.user_id"',
      "",
    ],
  });
  try {
    const { context, page } = await newPage(browser, server.base);
    await page.goto("/");
    await pickAgent(page, "Helpdesk");
    await page.locator("body.chat-mode").waitFor();
    await page.getByText("Tells you who you are signed in as.").waitFor();
    await send(page, "whoami please");
    await page.locator('li.chip[data-tool="whoami"][data-done="true"]').waitFor();
    const final = await lastAssistant(page, "complete");
    assertEqual(final.text, 'whoami answered: {"name":"local"}', "the reply");
    const conversation = await conversationId(page);
    const stored = await getJson(server.base, `/v1/conversations/${conversation}`);
    assertEqual(stored.agent, "helpdesk", "the conversation's agent");
    await page.screenshot({ path: path.join(screenshots, "custom-agent.png") });
    noPageErrors(page);
    await context.close();
  } finally {
    server.exitCode = await server.stop();
    checkLog(server);
  }
});

test("an MCP server's tool is called from the page", async ({ browser, binary }) => {
  // Installed by scripts/mcp-servers.sh (scripts/test.sh sources it).
  const entry = process.env.AGENTSTREAM_TEST_MCP_EVERYTHING;
  assert(entry, "AGENTSTREAM_TEST_MCP_EVERYTHING is not set: run scripts/mcp-servers.sh first");
  const server = await startServer(binary, {
    name: "mcp",
    config: [
      "[mcp.everything]",
      'command = "node"',
      `args = [${JSON.stringify(entry)}, "stdio"]`,
      "",
      "[agents.mcp_demo]",
      'description = "Calls the everything server\'s tools."',
      'tools = ["everything__*"]',
      "",
    ],
  });
  try {
    const { context, page } = await newPage(browser, server.base);
    await page.goto("/");
    await pickAgent(page, "Mcp demo");
    await send(page, "everything echo message=hello");
    await page.locator('li.chip[data-tool="everything__echo"][data-done="true"]').waitFor();
    const final = await lastAssistant(page, "complete");
    assert(final.text.includes("Echo: hello"), `the reply: ${final.text}`);
    noPageErrors(page);
    await context.close();
  } finally {
    server.exitCode = await server.stop();
    checkLog(server);
  }
});

test("a tool call that needs approval: approve once, deny once, and a reload while it waits", async ({ browser, binary }) => {
  const server = await startServer(binary, {
    name: "approvals",
    config: [
      "[agents.careful]",
      'description = "Remembers notes, once you approve."',
      'tools = ["remember"]',
      "",
      "[tools.remember]",
      'kind = "sql"',
      'description = "Remember a note in the caller\'s profile."',
      'approval = "always"',
      'sql = """',
      "INSERT INTO profiles (user_id, field, value, updated_at)",
      "VALUES (:caller.user_id, 'note', :body, '2026-11-30T00:00:00Z')",
      "ON CONFLICT (user_id, field) DO UPDATE SET value = excluded.value",
      '"""',
      "",
      "[tools.remember.parameters.body]",
      'type = "string"',
      "",
    ],
  });
  try {
    const { context, page } = await newPage(browser, server.base);
    await page.goto("/");
    await pickAgent(page, "Careful");
    await page.locator("body.chat-mode").waitFor();
    const asking = 'li.chip[data-tool="remember"][data-approval="requested"]';

    // Approve: the note is written and the reply says so.
    await send(page, "remember body=milk");
    await page.locator(`${asking} button.approve:enabled`).waitFor();
    await page.getByText("approve or deny it above").waitFor();
    await page.screenshot({ path: path.join(screenshots, "approval.png") });
    await page.locator(`${asking} button.approve`).click();
    let final = await lastAssistant(page, "complete");
    assert(final.text.startsWith("remember answered:"), `the reply: ${final.text}`);
    assertEqual((await getJson(server.base, "/v1/profile")).fields.note, "milk", "the note");

    // Deny, with a reason: nothing is written, and the model reads why.
    await send(page, "remember body=car");
    await page.locator(`${asking} button.deny:enabled`).waitFor();
    await page.locator(`${asking} input.reason`).fill("not today");
    await page.locator(`${asking} button.deny`).click();
    const transcript = page.locator("#transcript");
    await transcript.getByText("remember failed: the user declined this call: not today").waitFor();
    assertEqual((await getJson(server.base, "/v1/profile")).fields.note, "milk", "the note after the denial");
    const denied = page.locator('li.chip[data-tool="remember"][data-approval="denied"]');
    assertEqual(await denied.count(), 1, "chips marked denied");

    // A reload while a call waits: the buttons come back, and work.
    await send(page, "remember body=tea");
    await page.locator(`${asking} button.approve:enabled`).waitFor();
    await page.reload();
    await page.locator(`${asking} button.approve:enabled`).waitFor();
    await page.locator(`${asking} button.approve`).click();
    await transcript.getByText('remember answered: {"rows_affected":1}').last().waitFor();
    await page.waitForFunction(() => !document.getElementById("send").disabled);
    assertEqual((await getJson(server.base, "/v1/profile")).fields.note, "tea", "the note after the reload");

    // The transcript holds each call with its result.
    const conversation = await conversationId(page);
    const stored = await storedMessages(server.base, conversation);
    const results = stored.filter((m) => m.role === "tool").map((m) => JSON.parse(m.content));
    assertEqual(results.length, 3, "tool results stored");
    assertEqual(results[1].error, "the user declined this call: not today", "the denied call's result");
    noPageErrors(page);
    await context.close();
  } finally {
    server.exitCode = await server.stop();
    checkLog(server);
  }
});

// A reply long enough (about four seconds) to switch away and back in the middle.
const LONGER_MESSAGE =
  "Keep talking while I look elsewhere: " +
  Array.from({ length: 60 }, (_, i) => `item${i + 1}`).join(" ");

test("switching conversations mid-reply leaves the run going; coming back resumes it, no text twice", async ({ browser, server }) => {
  const { context, page } = await newPage(browser, server.base);
  await page.goto("/");
  await chatMode(page);
  await send(page, "the first conversation");
  await lastAssistant(page, "complete");
  const first = await conversationId(page);
  await listItem(page, first).waitFor();

  await page.getByRole("button", { name: "New conversation" }).click();
  await send(page, LONGER_MESSAGE);
  const before = await partialText(page, 4);
  const second = await conversationId(page);
  assert(second && second !== first, "the second message did not start a new conversation");

  // Away: the first conversation is shown, and the second's run goes on.
  await listItem(page, first).locator("button.open").click();
  await page.waitForFunction((id) => document.body.dataset.conversation === id, first);
  await page.locator("#transcript li.msg.user", { hasText: "the first conversation" }).waitFor();
  assertEqual(await page.locator("#transcript li.msg.user").count(), 1, "user bubbles in the first conversation");
  assertEqual(await page.locator(`li.msg[data-run-id="${before.runId}"]`).count(), 0, "the other run's bubbles");
  assert(!(await page.locator("#send").isDisabled()), "Send waits for another conversation's run");
  const meanwhile = await getJson(server.base, `/v1/runs/${before.runId}`);
  assert(OPEN_STATUSES.includes(meanwhile.status), `the run did not go on: ${meanwhile.status}`);

  // Back: the reply picks up from the run's log.
  await listItem(page, second).locator("button.open").click();
  await page.waitForFunction((id) => document.body.dataset.resumedRun === id, before.runId);
  const final = await lastAssistant(page, "complete");
  assertEqual(final.runId, before.runId, "the finished run");
  const stored = await storedMessages(server.base, second);
  const reply = stored.filter((m) => m.role === "assistant" && m.run_id === before.runId);
  assertEqual(reply.length, 1, "stored replies");
  assertEqual(final.text, reply[0].content, "the page's reply against the stored one");
  assertEqual(final.shown, reply[0].content, "the reply as drawn");
  assert(final.text.startsWith(before.text), "the reply does not continue the text seen before the switch");
  assertEqual(await page.locator("li.msg.assistant").count(), 1, "assistant bubbles");
  assertEqual(await page.locator("li.msg.user").count(), 1, "user bubbles");
  assertEqual((await getJson(server.base, `/v1/runs/${before.runId}`)).status, "completed", "the run's status");
  noPageErrors(page);
  await context.close();
});

test("retry a failed reply: the upstream fails once, the retry answers", async ({ browser, binary }) => {
  const mock = await startMock();
  const server = await startServer(binary, {
    name: "retry",
    config: [
      "[providers.mock]",
      'kind = "openai"',
      `base_url = "${mock.base}"`,
      "max_retries = 0",
      "",
      "[agents.flaky]",
      'description = "A model server that fails the first request."',
      'provider = "mock"',
      // mock-llm counts fail_first per model string: this one's first request fails.
      'model = "mock;tools=never;fail_first=1"',
      "",
    ],
  });
  try {
    const { context, page } = await newPage(browser, server.base);
    await page.goto("/");
    await pickAgent(page, "Flaky");
    await send(page, "hello flaky model");
    const failed = await lastAssistant(page, "failed");
    await failed.bubble.locator(".marker", { hasText: "Failed" }).waitFor();
    await page.locator("li.msg.error-note").first().waitFor();
    assertEqual((await getJson(server.base, `/v1/runs/${failed.runId}`)).status, "failed", "the first run");

    await failed.bubble.getByRole("button", { name: "Retry" }).click();
    const final = await lastAssistant(page, "complete");
    assert(final.runId && final.runId !== failed.runId, "the retry is a new run");
    assert(final.text.length > 0, "an empty reply");
    assertEqual(await page.locator("li.msg.assistant").count(), 1, "assistant bubbles");
    assertEqual(await page.locator("li.msg.error-note").count(), 0, "notes of the failed run left");
    assertEqual(await page.locator("li.msg.user").count(), 1, "user bubbles");
    const conversation = await conversationId(page);
    const stored = await storedMessages(server.base, conversation);
    const current = stored.filter((m) => !m.superseded);
    assertEqual(current.map((m) => m.role).join(","), "user,assistant", "the transcript that counts");
    assertEqual(current[1].content, final.text, "the retried reply against the stored one");
    assertEqual(current[1].run_id, final.runId, "the stored reply's run");
    assert(
      stored.filter((m) => m.run_id === failed.runId && m.role !== "user").every((m) => m.superseded),
      "the failed reply is not marked superseded",
    );

    // After a reload the replaced reply stays hidden.
    await page.reload();
    await lastAssistant(page, "complete");
    assertEqual(await page.locator("li.msg.assistant").count(), 1, "assistant bubbles after a reload");
    assertEqual(await page.locator('li.msg.assistant[data-status="failed"]').count(), 0, "failed bubbles after a reload");
    noPageErrors(page);
    await context.close();
  } finally {
    server.exitCode = await server.stop();
    await mock.stop();
    // The injected failure is logged once, as a warning; nothing else is.
    const expected = (line) => / WARN .*run failed.*upstream_error.*injected server error/.test(line);
    assertEqual(server.log.filter(expected).length, 1, "warnings of the failed run");
    server.log = server.log.filter((line) => !expected(line));
    checkLog(server);
  }
});

test("retry the last reply, then edit and resend the last question", async ({ browser, server }) => {
  const { context, page } = await newPage(browser, server.base);
  await page.goto("/");
  await chatMode(page);
  await send(page, "first question");
  const first = await lastAssistant(page, "complete");
  assert(first.text.startsWith('You said: "first question"'), `the reply: ${first.text}`);

  // Retry: the same question, answered by a new run in the same place.
  await first.bubble.getByRole("button", { name: "Retry" }).click();
  await page.waitForFunction(
    (id) => {
      const bubble = document.querySelector('li.msg.assistant[data-status="complete"]');
      return bubble && bubble.dataset.runId !== id;
    },
    first.runId,
  );
  const retried = await lastAssistant(page, "complete");
  assertEqual(retried.text, first.text, "the retried reply");
  assertEqual(await page.locator("li.msg.assistant").count(), 1, "assistant bubbles after the retry");

  // Edit: the question is replaced, and so is its answer.
  const question = page.locator("li.msg.user").last();
  await question.getByRole("button", { name: "Edit" }).click();
  const area = page.getByLabel("Edit your message");
  assertEqual(await area.inputValue(), "first question", "the text being edited");
  await area.fill("the edited question");
  await area.press("Enter");
  await page.locator('li.msg.assistant[data-status="complete"]', { hasText: 'You said: "the edited question"' }).waitFor();
  assertEqual(await page.locator("li.msg.user").count(), 1, "user bubbles after the edit");
  assertEqual(await page.locator("li.msg.user .text").textContent(), "the edited question", "the question shown");
  assertEqual(await page.locator("li.msg.assistant").count(), 1, "assistant bubbles after the edit");

  const conversation = await conversationId(page);
  const stored = await storedMessages(server.base, conversation);
  const current = stored.filter((m) => !m.superseded);
  assertEqual(current.map((m) => `${m.role}:${m.content.slice(0, 30)}`).join(" | "),
    'user:the edited question | assistant:You said: "the edited question', "the transcript that counts");
  assertEqual(stored.filter((m) => m.superseded).length, 3, "superseded messages (a question and two replies)");

  // A reload shows the same, without the replaced messages.
  await page.reload();
  await page.locator('li.msg.assistant[data-status="complete"]').waitFor();
  assertEqual(await page.locator("li.msg.user").count(), 1, "user bubbles after a reload");
  assertEqual(await page.locator("li.msg.assistant").count(), 1, "assistant bubbles after a reload");
  await page.locator("li.msg.user").getByRole("button", { name: "Edit" }).waitFor();
  noPageErrors(page);
  await context.close();
});

test("rename and delete a conversation from the list; a conversation with a reply going is not deleted", async ({ browser, server }) => {
  const { context, page } = await newPage(browser, server.base);
  await page.goto("/");
  await chatMode(page);
  await send(page, "a conversation to rename");
  await lastAssistant(page, "complete");
  const conversation = await conversationId(page);
  const item = listItem(page, conversation);
  const made = await getJson(server.base, `/v1/conversations/${conversation}`);
  assert(made.title, "no title was made from the first message");
  await item.locator(".title", { hasText: made.title }).waitFor();
  assert((await item.locator(".meta").textContent()).includes("Chat"), "the item does not name its agent");
  assert((await item.locator(".preview").textContent()).length > 0, "the item has no preview");

  // Rename.
  await item.getByRole("button", { name: /^Rename or delete/ }).click();
  await item.getByRole("button", { name: "Rename", exact: true }).click();
  await item.getByLabel("Title of the conversation").fill("Renamed by hand");
  await item.getByLabel("Title of the conversation").press("Enter");
  await item.locator(".title", { hasText: "Renamed by hand" }).waitFor();
  await page.locator("#current-title", { hasText: "Renamed by hand" }).waitFor();
  assertEqual((await getJson(server.base, `/v1/conversations/${conversation}`)).title, "Renamed by hand", "the stored title");
  await page.getByLabel("Search conversation titles").fill("renamed BY hand");
  await page.waitForFunction(
    (id) => [...document.querySelectorAll("li.conversation")].map((li) => li.dataset.id).join() === id,
    conversation,
  );
  await page.getByLabel("Search conversation titles").fill("");
  await page.waitForFunction(() => document.querySelectorAll("li.conversation").length > 1);

  // An empty title clears it.
  await item.getByRole("button", { name: /^Rename or delete/ }).click();
  await item.getByRole("button", { name: "Rename", exact: true }).click();
  await item.getByLabel("Title of the conversation").fill("");
  await item.getByRole("button", { name: "Save" }).click();
  await item.locator(".title", { hasText: "New conversation" }).waitFor();
  assertEqual((await getJson(server.base, `/v1/conversations/${conversation}`)).title, null, "the cleared title");

  // Delete, confirmed: the conversation is gone and a new one is shown.
  await item.getByRole("button", { name: /^Rename or delete/ }).click();
  await item.getByRole("button", { name: "Delete", exact: true }).click();
  await item.locator(".confirm").getByRole("button", { name: "Delete" }).click();
  await item.waitFor({ state: "detached" });
  const gone = await fetch(`${server.base}/v1/conversations/${conversation}`);
  assertEqual(gone.status, 404, "the deleted conversation's status");
  assertEqual(await conversationId(page), "", "the conversation shown after the delete");
  assertEqual(await page.locator("#transcript li").count(), 0, "bubbles after the delete");

  // While a reply streams, the server refuses (409) and the page says why.
  await send(page, LONGER_MESSAGE);
  const partial = await partialText(page, 2);
  const busy = listItem(page, await conversationId(page));
  await busy.getByRole("button", { name: /^Rename or delete/ }).click();
  await busy.getByRole("button", { name: "Delete", exact: true }).click();
  await busy.locator(".confirm").getByRole("button", { name: "Delete" }).click();
  await page.locator("#status", { hasText: "reply in progress" }).waitFor();
  await busy.waitFor();
  await lastAssistant(page, "complete");
  assertEqual((await getJson(server.base, `/v1/runs/${partial.runId}`)).status, "completed", "the run after the refused delete");
  noPageErrors(page, /status of (401|409)/);
  await context.close();
});

test("a reply in Markdown: code kept exactly, the model's HTML and javascript: links inert", async ({ browser, server }) => {
  const { context, page } = await newPage(browser, server.base, { width: 1100, height: 760 });
  await context.grantPermissions(["clipboard-read", "clipboard-write"]);
  await page.goto("/");
  await chatMode(page);
  const code = [
    "fn main() {",
    '    let html = "<script>alert(1)</script> & <b>bold</b>";',
    '    println!("{html}   *not emphasis*  _nor this_");',
    "}",
  ].join("\n");
  const message = [
    '<img src=x onerror="window.__pwned=1"> **strong** and [a link](javascript:window.__pwned=2)',
    "see <https://example.com/docs>",
    "```rust",
    code,
    "```",
    "that is all",
  ].join("\n");
  await send(page, message);
  const reply = await lastAssistant(page, "complete");
  const bubble = reply.bubble;

  assertEqual(await bubble.locator("img").count(), 0, "img elements in the reply");
  assertEqual(await bubble.locator("script").count(), 0, "script elements in the reply");
  assert((await bubble.locator(".text").textContent()).includes('<img src=x onerror="window.__pwned=1">'),
    "the model's HTML is not shown as text");
  assertEqual(await bubble.locator("strong").textContent(), "strong", "the bold text");
  assertEqual(await bubble.locator("pre code").textContent(), code + "\n", "the code block's text");
  const links = await bubble.locator("a").evaluateAll((as) =>
    as.map((a) => ({ text: a.textContent, href: a.getAttribute("href"), rel: a.rel, target: a.target })));
  assert(links.every((l) => !l.href || /^(https?|mailto):/i.test(l.href)), `live links: ${JSON.stringify(links)}`);
  const docs = links.find((l) => l.href === "https://example.com/docs");
  assert(docs && docs.rel.includes("noopener") && docs.target === "_blank", `the docs link: ${JSON.stringify(links)}`);
  await bubble.locator("a", { hasText: "a link" }).click();
  assertEqual(await page.evaluate(() => window.__pwned), undefined, "window.__pwned");

  // The question stays plain text.
  const question = page.locator("li.msg.user .text").last();
  assertEqual(await question.textContent(), message, "the question as shown");
  assertEqual(await question.evaluate((el) => el.childElementCount), 0, "elements in the question");

  // Copy gives the reply as written, Markdown and all.
  await bubble.getByRole("button", { name: "Copy" }).click();
  await bubble.getByRole("button", { name: "Copied" }).waitFor();
  assertEqual(await page.evaluate(() => navigator.clipboard.readText()), reply.text, "the copied text");
  const stored = (await storedMessages(server.base, await conversationId(page))).at(-1);
  assertEqual(reply.text, stored.content, "the reply against the stored one");


  // For the README: the list beside a reply with a list and a code block.
  await page.getByRole("button", { name: "New conversation" }).click();
  await send(page, "Plan for **Friday**:\n\n1. Merge the `page` branch\n2. Check the page at 375 px\n\n```sh\nscripts/browser-tests.sh\n```\nThat is all.");
  await page.locator('li.msg.assistant[data-status="complete"] ol li', { hasText: "Merge the page branch" }).waitFor();
  await page.mouse.move(0, 0);
  await page.screenshot({ path: path.join(screenshots, "conversations.png") });
  noPageErrors(page);
  await context.close();
});

test("at 375 px the list is a drawer, opened from the bar and closed with Escape", async ({ browser, server }) => {
  const { context, page } = await newPage(browser, server.base, { width: 375, height: 740 });
  await page.goto("/");
  await chatMode(page);
  await send(page, "hello from a phone\n```\nshort code\n```");
  await lastAssistant(page, "complete");
  const conversation = await conversationId(page);
  const toggle = page.getByRole("button", { name: "Conversations" });
  assertEqual(await toggle.getAttribute("aria-expanded"), "false", "the toggle, closed");
  assert(await page.locator("#sidebar").isHidden(), "the list shows while the drawer is closed");
  const wide = async (what) => {
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert(width <= 375, `the page scrolls sideways at 375 px ${what} (${width} px wide)`);
  };
  await wide("with the drawer closed");

  await toggle.click();
  assertEqual(await toggle.getAttribute("aria-expanded"), "true", "the toggle, open");
  await page.waitForFunction(() => document.getElementById("sidebar").getAnimations().length === 0);
  const current = listItem(page, conversation).locator("button.open");
  await current.waitFor();
  assertEqual(await current.getAttribute("aria-current"), "true", "the shown conversation is marked");
  assert(await current.evaluate((el) => el === document.activeElement), "focus did not move into the drawer");
  await wide("with the drawer open");
  await page.screenshot({ path: path.join(screenshots, "phone.png") });

  await page.keyboard.press("Escape");
  await page.locator("body:not(.drawer-open)").waitFor();
  assert(await toggle.evaluate((el) => el === document.activeElement), "focus did not go back to the toggle");

  // From the drawer: a new conversation, then back to the first.
  await toggle.click();
  await page.getByRole("button", { name: "New conversation" }).click();
  await page.locator("body:not(.drawer-open)").waitFor();
  assertEqual(await conversationId(page), "", "a new conversation is shown");
  await toggle.click();
  await current.click();
  await page.locator("body:not(.drawer-open)").waitFor();
  await page.locator("li.msg.user", { hasText: "hello from a phone" }).waitFor();
  await wide("with a reply shown");
  noPageErrors(page);
  await context.close();
});

test("the main flow by keyboard alone: pick an agent, send, rename, edit, with focus visible", async ({ browser, server }) => {
  const { context, page } = await newPage(browser, server.base);
  await page.goto("/");
  await page.getByText("built-in scripted demo model").waitFor();

  // The agent: Tab to the choice, an arrow key picks Chat.
  await tabTo(page, () => document.activeElement?.name === "agent");
  await page.keyboard.press("ArrowDown");
  await page.locator("body.chat-mode").waitFor();
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement.parentElement).outlineStyle);
  assert(outline !== "none", "the focused agent choice shows no outline");

  // The message: Tab to the box, type, Enter sends.
  await tabTo(page, () => document.activeElement?.id === "input", { max: 150 });
  await page.keyboard.type("typed with keys only");
  await page.keyboard.press("Enter");
  const reply = await lastAssistant(page, "complete");
  assert(reply.text.startsWith('You said: "typed with keys only"'), `the reply: ${reply.text}`);
  const conversation = await conversationId(page);
  await listItem(page, conversation).waitFor();

  // Rename from the list: back to the item's menu, Enter opens it, Enter on Rename.
  await tabTo(page, () => document.activeElement?.classList.contains("menu-button") &&
    document.activeElement.closest("li").querySelector("[aria-current]") !== null, { back: true, max: 150 });
  const focusRing = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  assert(focusRing !== "none", "the focused menu button shows no outline");
  await page.keyboard.press("Enter");
  assert(await page.evaluate(() => document.activeElement?.textContent === "Rename"), "focus is not on Rename");
  await page.keyboard.press("Enter");
  await page.keyboard.type("Keyboard title");
  await page.keyboard.press("Enter");
  await listItem(page, conversation).locator(".title", { hasText: "Keyboard title" }).waitFor();
  assert(await page.evaluate(() => document.activeElement?.classList.contains("open")), "focus did not go back to the item");

  // Escape closes the menu and the delete question without deleting.
  await page.keyboard.press("Tab");
  await page.keyboard.press("Enter");
  await page.keyboard.press("Tab");
  assert(await page.evaluate(() => document.activeElement?.textContent === "Delete"), "focus is not on Delete");
  await page.keyboard.press("Enter");
  assert(await page.evaluate(() => document.activeElement?.textContent === "Cancel"), "the delete question does not focus Cancel");
  await page.keyboard.press("Escape");
  await listItem(page, conversation).waitFor();
  assertEqual((await getJson(server.base, `/v1/conversations/${conversation}`)).title, "Keyboard title", "the title after Escape");

  // Edit and resend: Tab to Edit, Enter, change the text, Enter sends; Escape would have put it back.
  await tabTo(page, () => document.activeElement?.classList.contains("edit"), { max: 150 });
  await page.keyboard.press("Enter");
  assert(await page.evaluate(() => document.activeElement?.getAttribute("aria-label") === "Edit your message"),
    "the edit box is not focused");
  await page.keyboard.press("Escape");
  assert(await page.evaluate(() => document.activeElement?.classList.contains("edit")), "Escape did not go back to Edit");
  await page.keyboard.press("Enter");
  await page.keyboard.press("Control+A");
  await page.keyboard.type("edited with keys");
  await page.keyboard.press("Enter");
  await page.locator('li.msg.assistant[data-status="complete"]', { hasText: 'You said: "edited with keys"' }).waitFor();
  assert(await page.evaluate(() => document.activeElement?.id === "input"), "focus did not go back to the message box");
  noPageErrors(page);
  await context.close();
});

test("the page's icon and libraries load from the server, with no failed request", async ({ browser, server }) => {
  const { context, page } = await newPage(browser, server.base);
  const failed = [];
  page.on("response", (response) => {
    if (response.status() >= 400) failed.push(`${response.status()} ${response.url()}`);
  });
  await page.goto("/");
  await page.getByText("built-in scripted demo model").waitFor();
  assert(await page.evaluate(() => typeof window.marked?.Marked === "function" && window.DOMPurify?.isSupported),
    "marked or DOMPurify did not load");
  for (const route of ["/favicon.svg", "/favicon.ico"]) {
    const response = await fetch(server.base + route);
    assertEqual(response.status, 200, `${route}'s status`);
    assertEqual(response.headers.get("content-type"), "image/svg+xml", `${route}'s type`);
  }
  assertEqual(await page.locator('link[rel="icon"]').getAttribute("href"), "/favicon.svg", "the icon link");
  assertEqual(failed.length, 0, `failed requests: ${failed.join(", ")}`);
  noPageErrors(page);
  await context.close();
});

function checkLog(server) {
  const bad = server.log.filter((line) => / (WARN|ERROR) /.test(line));
  assert(bad.length === 0, `the ${server.name} server logged WARN/ERROR:\n${bad.join("\n")}`);
  assertEqual(server.exitCode, 0, `the ${server.name} server's exit code`);
}

// ---- the runner ----

async function main() {
  fs.mkdirSync(screenshots, { recursive: true });
  const binary = serverBinary();
  const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
  // launch() gives Chromium a fresh temporary --user-data-dir of its own
  // (Playwright refuses the flag in `args`) and removes it on close.
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const server = await startServer(binary, { name: "main" });
  let passed = 0;
  let failed = 0;
  try {
    for (const { name, fn } of tests) {
      const started = Date.now();
      try {
        await fn({ browser, server, binary });
        passed += 1;
        console.log(`ok - ${name} (${Date.now() - started} ms)`);
      } catch (error) {
        failed += 1;
        console.log(`FAIL - ${name}\n  ${String(error.stack || error).replaceAll("\n", "\n  ")}`);
      }
    }
  } finally {
    await browser.close();
    server.exitCode = await server.stop();
  }
  try {
    checkLog(server);
    passed += 1;
    console.log("ok - the server logged no WARN or ERROR and exited 0");
  } catch (error) {
    failed += 1;
    console.log(`FAIL - ${error.message}`);
  }
  console.log(`${passed} passed, ${failed} failed (${POSTGRES ? "PostgreSQL" : "SQLite"})`);
  process.exitCode = failed === 0 ? 0 : 1;
}

main().catch((error) => {
  console.log(`FAIL - the test run could not start: ${error.stack || error}`);
  console.log("0 passed, 1 failed");
  process.exitCode = 1;
});
