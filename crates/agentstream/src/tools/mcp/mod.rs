//! MCP servers as tool sources (`[mcp.NAME]`): each server is started and
//! initialised at start-up, its tools imported into the tool registry under
//! `PREFIX` + the tool's name, and its session kept up (reconnected with
//! backoff) until shutdown closes it and reaps its process.
//!
//! The protocol is the official Rust SDK's ([`rmcp`]), client side only.
//! [`server`] owns one server's connection and lifecycle, [`call`] one call
//! of an imported tool. A call's effects are [`super::Effects::Outside`]:
//! recorded `started` before the request and `finished` after, never sent
//! again by a later process (at most once).

mod call;
mod server;
mod streamable;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use call::McpTool;
use server::{Connected, Launch, Server};
pub use streamable::{CallerField, CallerValue, McpHeader};

use super::{AgentTool, Registry, http::HeaderSource, registry::DEFAULT_MAX_OUTPUT_BYTES};

/// Default time one call may take, in milliseconds.
const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Default time to start a server and list its tools, in milliseconds:
/// `npx -y` may download the package first.
const DEFAULT_STARTUP_TIMEOUT_MS: u64 = 60_000;
/// Longest imported tool name: OpenAI's limit for a function's name.
const MAX_NAME: usize = 64;

/// One `[mcp.NAME]` table: how to reach the server and what to import.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerConfig {
    /// The program of a stdio server (found on `PATH`, or a path).
    pub command: Option<String>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Variables set for it, besides the few it inherits (`HOME`, `PATH`,
    /// …): text, or `{ env = "VAR" }` read from agentstream's environment
    /// at start-up.
    #[serde(default)]
    pub env: BTreeMap<String, HeaderSource>,
    /// The endpoint of a streamable HTTP server (instead of `command`).
    pub url: Option<String>,
    /// Headers sent to an HTTP server: text or `{ env = "VAR" }` with
    /// every request, `{ caller = "subject" }` (or `user_id`,
    /// `conversation_id`, `run_id`, `call_id`) with each tool call.
    #[serde(default)]
    pub headers: BTreeMap<String, McpHeader>,
    /// The server's tools to import, by the server's names; `["*"]` (the
    /// default) for all.
    #[serde(default = "all_tools")]
    pub tools: Vec<String>,
    /// What imported names start with (default `NAME__`).
    pub prefix: Option<String>,
    /// Time one call may take, in milliseconds (default 30000).
    pub timeout_ms: Option<u64>,
    /// Time to start the server and list its tools, in milliseconds
    /// (default 60000).
    pub startup_timeout_ms: Option<u64>,
    /// Start without it when it cannot be started (its tools get a tool
    /// error until it can); by default start-up is refused.
    #[serde(default)]
    pub optional: bool,
    /// Largest output the model is sent per call, in bytes (default 16 KiB).
    pub max_output_bytes: Option<usize>,
    /// `always`: every call to the server's tools waits for the user's
    /// approval (default `never`).
    #[serde(default)]
    pub approval: crate::tools::Approval,
    /// The server's tools (by the server's names) whose calls wait for the
    /// user's approval, whatever `approval` says.
    #[serde(default)]
    pub approval_tools: Vec<String>,
}

fn all_tools() -> Vec<String> {
    vec!["*".to_owned()]
}

/// One server's state, as `/readyz` reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServerStatus {
    /// `starting`, `up`, `down` or `closed`.
    pub state: &'static str,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether start-up went on without it.
    pub optional: bool,
    /// The tools imported from it.
    pub tools: usize,
    /// The process of a stdio server that is up (not shown by `/readyz`).
    #[serde(skip)]
    pub pid: Option<u32>,
}

/// The configured MCP servers. Cloned freely; the last clone dropped
/// without [`McpServers::close`] stops the servers in the background.
#[derive(Debug, Clone, Default)]
pub struct McpServers {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// By name.
    servers: BTreeMap<String, Arc<Server>>,
    /// The optional servers that could not be started at start-up.
    unavailable: Vec<Arc<Server>>,
    /// What the servers import: imported name → tool.
    tools: BTreeMap<String, Arc<McpTool>>,
    /// Each server's supervisor and its process's stderr reader; closed
    /// and waited for by `close`.
    tracker: TaskTracker,
    /// Tells the supervisors to close their sessions.
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl McpServers {
    /// Starts every server at once, initialises it and lists its tools. A
    /// server that cannot be started stops start-up (the others are closed
    /// first), with a message naming it, unless it is `optional`: then a
    /// warning says so, and it is retried in the background. Fails too on
    /// a wrong table, or on two imported tools of the same name.
    pub async fn start(configs: &BTreeMap<String, McpServerConfig>) -> Result<McpServers, String> {
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let mut servers = Vec::new();
        for (name, config) in configs {
            let server = Server::new(name, config, tracker.clone(), stop.clone())
                .map_err(|e| format!("MCP server {name:?}: {e}"))?;
            servers.push(Arc::new(server));
        }
        let first = futures_util::future::join_all(servers.iter().map(|s| s.connect())).await;
        let mut refusals = Vec::new();
        let mut unavailable = Vec::new();
        let mut sessions = Vec::new();
        for (server, result) in servers.iter().zip(first) {
            match result {
                Ok(connected) => {
                    server.set_up(&connected);
                    sessions.push((server.clone(), Some(connected)));
                }
                Err(reason) if server.optional => {
                    tracing::warn!(
                        server = %server.name,
                        %reason,
                        "the MCP server cannot be started; starting without it (optional): \
                         its tools get a tool error until it connects, retried in the background"
                    );
                    server.set_down(reason);
                    unavailable.push(server.clone());
                    sessions.push((server.clone(), None));
                }
                Err(reason) => refusals.push(format!("MCP server {:?}: {reason}", server.name)),
            }
        }
        let imported = if refusals.is_empty() {
            import(&sessions)
        } else {
            Err(refusals.join("; "))
        };
        for (server, connected) in sessions {
            tracker.spawn(server.supervise(connected));
        }
        let (tools, error) = match imported {
            Ok(tools) => (tools, None),
            Err(error) => (BTreeMap::new(), Some(error)),
        };
        let started = McpServers {
            inner: Arc::new(Inner {
                servers: servers.into_iter().map(|s| (s.name.clone(), s)).collect(),
                unavailable,
                tools,
                tracker,
                stop,
            }),
        };
        if let Some(error) = error {
            started.close().await;
            return Err(error);
        }
        for (name, status) in started.status() {
            if status.state == "up" {
                tracing::info!(server = %name, tools = status.tools, "MCP server up");
            }
        }
        Ok(started)
    }

    /// Adds the imported tools to `registry`, and for a server that was
    /// down at start-up, a stand-in for each name in `wanted` (the agents'
    /// tool lists) that starts with its prefix: its calls go to the server
    /// once it is up. Fails on a name the registry has already.
    pub fn register<'a>(
        &self,
        registry: &mut Registry,
        wanted: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), String> {
        let mut tools: Vec<Arc<McpTool>> = self.inner.tools.values().cloned().collect();
        let down = &self.inner.unavailable;
        let mut stand_ins = BTreeSet::new();
        for name in wanted {
            if registry.get(name).is_some() || self.inner.tools.contains_key(name) {
                continue;
            }
            if let Some(server) = down
                .iter()
                .find(|s| name.starts_with(&s.prefix) && valid_imported(name))
                && stand_ins.insert(name.to_owned())
            {
                tools.push(Arc::new(McpTool::stand_in(server, name)));
            }
        }
        for tool in tools {
            let name = tool.name().to_owned();
            if registry.get(&name).is_some() {
                return Err(format!(
                    "the tool {name:?} of MCP server {:?} has the name of a tool of \
                     [tools]; give the server another `prefix`",
                    tool.server_name()
                ));
            }
            let max_output_bytes = tool.max_output_bytes();
            let server = tool.server_name().to_owned();
            let approval = tool.approval();
            let tool = AgentTool::new(tool, max_output_bytes)
                .map_err(|e| {
                    format!(
                        "MCP server {server:?}: {e}; leave the tool out of the server's `tools`"
                    )
                })?
                .with_approval(approval);
            registry.add(tool);
        }
        Ok(())
    }

    /// Each server's state, by name.
    pub fn status(&self) -> BTreeMap<String, ServerStatus> {
        self.inner
            .servers
            .iter()
            .map(|(name, server)| (name.clone(), server.status(self.imported_from(name))))
            .collect()
    }

    /// Waits until the server `name`'s state satisfies `until`, and
    /// returns it; `None` for a server that does not exist.
    pub async fn wait_for(
        &self,
        name: &str,
        until: impl Fn(&ServerStatus) -> bool,
    ) -> Option<ServerStatus> {
        let server = self.inner.servers.get(name)?;
        server.wait_for(self.imported_from(name), until).await
    }

    /// How many tools were imported from the server `name`.
    fn imported_from(&self, name: &str) -> usize {
        self.inner
            .tools
            .values()
            .filter(|t| t.server_name() == name)
            .count()
    }

    /// Closes every session and reaps every server's process; waits for
    /// their supervisors to end.
    pub async fn close(&self) {
        self.inner.stop.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

/// The imported tools of every server that is up, by imported name. Fails
/// on two tools of the same name (after the names are made valid), on an
/// allow-listed tool a server does not have, or on a schema that does not
/// compile.
fn import(
    sessions: &[(Arc<Server>, Option<Connected>)],
) -> Result<BTreeMap<String, Arc<McpTool>>, String> {
    let mut tools: BTreeMap<String, Arc<McpTool>> = BTreeMap::new();
    for (server, connected) in sessions {
        let Some(listed) = connected.as_ref().map(Connected::tools) else {
            continue;
        };
        let all = server.allowed.iter().any(|t| t == "*");
        if !all
            && let Some(missing) = server
                .allowed
                .iter()
                .find(|t| !listed.iter().any(|l| l.name == **t))
        {
            return Err(format!(
                "MCP server {:?} has no tool {missing:?} (its `tools` list); it has {}",
                server.name,
                listed
                    .iter()
                    .map(|t| t.name.as_ref())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for remote in listed
            .iter()
            .filter(|t| all || server.allowed.iter().any(|a| *a == t.name))
        {
            let tool = McpTool::imported(server, remote);
            if let Some(other) = tools.get(tool.name()) {
                return Err(format!(
                    "two MCP tools are imported as {:?}: {:?} of server {:?} and {:?} of \
                     server {:?}; give a server another `prefix`, or leave one tool out of \
                     its `tools`",
                    tool.name(),
                    other.remote_name().unwrap_or_default(),
                    other.server_name(),
                    remote.name,
                    server.name
                ));
            }
            tools.insert(tool.name().to_owned(), Arc::new(tool));
        }
    }
    Ok(tools)
}

/// The name a server's tool is imported under: the prefix and the tool's
/// name, each character outside `[a-zA-Z0-9_-]` made `_` (what every model
/// provider accepts), cut at 64 characters.
pub fn imported_name(prefix: &str, tool: &str) -> String {
    prefix
        .chars()
        .chain(tool.chars())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_NAME)
        .collect()
}

/// Whether `name` is a valid imported name: 1 to 64 of `[a-zA-Z0-9_-]`.
fn valid_imported(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A server's settings, checked: the launch, the prefix, the limits.
fn settings(name: &str, config: &McpServerConfig) -> Result<Settings, String> {
    if !valid_imported(name) || name.len() > 32 {
        return Err(
            "a server's name is 1 to 32 letters, digits, _ and - (it starts its tools' names)"
                .to_owned(),
        );
    }
    let launch = Launch::from_config(config)?;
    let prefix = config.prefix.clone().unwrap_or_else(|| format!("{name}__"));
    if !prefix.is_empty() && !valid_imported(&prefix) || prefix.len() >= MAX_NAME {
        return Err(format!(
            "`prefix` {prefix:?}: letters, digits, _ and -, shorter than {MAX_NAME} characters"
        ));
    }
    if config.tools.is_empty() {
        return Err("`tools` is empty: list the tools to import, or [\"*\"] for all".to_owned());
    }
    let timeout_ms = config.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if timeout_ms == 0 {
        return Err("`timeout_ms` must be at least 1".to_owned());
    }
    Ok(Settings {
        launch,
        prefix,
        allowed: config.tools.clone(),
        timeout: Duration::from_millis(timeout_ms),
        startup_timeout: Duration::from_millis(
            config
                .startup_timeout_ms
                .unwrap_or(DEFAULT_STARTUP_TIMEOUT_MS)
                .max(1),
        ),
        optional: config.optional,
        max_output_bytes: config.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES),
        approval: config.approval,
        approval_tools: config.approval_tools.clone(),
    })
}

/// A server's checked settings.
#[derive(Debug)]
struct Settings {
    launch: Launch,
    prefix: String,
    allowed: Vec<String>,
    timeout: Duration,
    startup_timeout: Duration,
    optional: bool,
    max_output_bytes: usize,
    approval: crate::tools::Approval,
    approval_tools: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> McpServerConfig {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn imported_names_are_what_providers_accept() {
        assert_eq!(
            imported_name("time__", "get_current_time"),
            "time__get_current_time"
        );
        assert_eq!(
            imported_name("fs__", "read.file/v2 é"),
            "fs__read_file_v2__"
        );
        assert_eq!(
            imported_name("x__", "trigger-long-op"),
            "x__trigger-long-op"
        );
        let long = imported_name("p__", &"a".repeat(100));
        assert_eq!(long.len(), MAX_NAME);
        assert!(valid_imported(&long) && !valid_imported("a.b") && !valid_imported(""));
    }

    #[test]
    fn a_table_is_checked() {
        let ok = settings("time", &config("command = \"mcp-server-time\"")).unwrap();
        assert_eq!(ok.prefix, "time__");
        assert_eq!(ok.allowed, ["*"]);
        assert_eq!(ok.timeout, Duration::from_millis(DEFAULT_TIMEOUT_MS));
        let cases = [
            ("bad.name", "command = \"x\"", "a server's name"),
            ("s", "args = [\"x\"]", "give `command`"),
            ("s", "command = \"x\"\nurl = \"http://x\"", "not both"),
            ("s", "command = \"x\"\nprefix = \"a.b\"", "`prefix`"),
            ("s", "command = \"x\"\ntools = []", "`tools` is empty"),
            ("s", "command = \"x\"\ntimeout_ms = 0", "at least 1"),
            (
                "s",
                "command = \"x\"\nenv.TOKEN = { env = \"AGENTSTREAM_TEST_SURELY_UNSET\" }",
                "AGENTSTREAM_TEST_SURELY_UNSET (env.TOKEN) is not set",
            ),
        ];
        for (name, toml, expected) in cases {
            let error = settings(name, &config(toml)).unwrap_err();
            assert!(error.contains(expected), "{toml}\n→ {error}");
        }
        assert!(toml::from_str::<McpServerConfig>("command = \"x\"\nnope = 1").is_err());
    }
}
