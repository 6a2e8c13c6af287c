//! The configured tools: `[tools.NAME]` tables built into tools by kind,
//! each checked at start-up, and the argument checks every call goes through.

use std::{collections::BTreeMap, sync::Arc};

use serde::Deserialize;

use super::{Tool, ToolError, http, sql};
use crate::{llm::ToolSpec, store::StoreError};

/// Largest tool output the model is sent by default, in bytes of JSON text.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 16 * 1024;

/// One `[tools.NAME]` table, by its `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ToolConfig {
    /// One parameterised SQL statement (see [`sql::SqlToolConfig`]).
    Sql(sql::SqlToolConfig),
    /// A signed JSON POST to a backend (see [`http::HttpToolConfig`]).
    Http(http::HttpToolConfig),
}

/// What building the tools needs besides their tables.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The `[databases.NAME]` pools, opened.
    pub databases: sql::Databases,
    /// Whether callers can carry token claims (JWT sign-in is configured):
    /// without it, a tool naming `:caller.claims.NAME` is refused.
    pub claims: bool,
}

/// A configured tool with what every call to it goes through: the compiled
/// schema of its arguments and the cap on its output.
#[derive(Debug)]
pub struct AgentTool {
    pub(super) tool: Arc<dyn Tool>,
    validator: jsonschema::Validator,
    max_output_bytes: usize,
    approval: super::Approval,
}

impl AgentTool {
    /// Wraps a tool: compiles its argument schema. Fails when the schema
    /// does not compile.
    pub fn new(tool: Arc<dyn Tool>, max_output_bytes: usize) -> Result<AgentTool, String> {
        let validator = jsonschema::validator_for(&tool.spec().parameters)
            .map_err(|e| format!("tool {:?}: its parameters: {e}", tool.spec().name))?;
        Ok(AgentTool {
            tool,
            validator,
            max_output_bytes,
            approval: super::Approval::Never,
        })
    }

    /// The tool with this approval policy.
    #[must_use]
    pub fn with_approval(mut self, approval: super::Approval) -> AgentTool {
        self.approval = approval;
        self
    }

    /// Whether its calls wait for the user's approval.
    pub fn approval(&self) -> super::Approval {
        self.approval
    }

    /// The function as the model sees it.
    pub fn spec(&self) -> &ToolSpec {
        self.tool.spec()
    }

    /// The call's arguments, checked against the schema, with the declared
    /// defaults filled in; or the refusal the model reads.
    pub(super) fn check(
        &self,
        mut arguments: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        if let Some(object) = arguments.as_object() {
            let bound = self.tool.caller_bound();
            let declared = self.spec().parameters["properties"].as_object();
            // A name the tool declares is the model's to give, whatever a
            // caller-bound value is called.
            if let Some(key) = object.keys().find(|key| {
                !declared.is_some_and(|d| d.contains_key(*key))
                    && (key.starts_with("caller")
                        || bound.iter().any(|b| b.rsplit('.').next() == Some(key)))
            }) {
                return Err(format!(
                    "`{key}` is set by the server for the signed-in user; it cannot be an argument"
                ));
            }
        }
        let errors: Vec<String> = self
            .validator
            .iter_errors(&arguments)
            .map(|e| {
                let path = e.instance_path().to_string();
                if path.is_empty() {
                    e.to_string()
                } else {
                    format!("{path}: {e}")
                }
            })
            .collect();
        if !errors.is_empty() {
            return Err(format!(
                "the arguments do not match the tool's parameters: {}",
                errors.join("; ")
            ));
        }
        if let (Some(object), Some(properties)) = (
            arguments.as_object_mut(),
            self.spec().parameters["properties"].as_object(),
        ) {
            for (name, schema) in properties {
                if let Some(default) = schema.get("default") {
                    object.entry(name).or_insert_with(|| default.clone());
                }
            }
        }
        Ok(arguments)
    }

    /// A call's result as recorded: the output and whether it is an error.
    /// An output over the cap is cut, with a note. Fails when agentstream's
    /// own database failed (not when it refused the tool's write: that is a
    /// tool error).
    pub(super) fn outcome(
        &self,
        result: Result<serde_json::Value, ToolError>,
    ) -> Result<(serde_json::Value, bool), StoreError> {
        match result {
            Ok(output) => Ok((self.cap(output), false)),
            Err(ToolError::Invalid(message)) => Ok((serde_json::json!({ "error": message }), true)),
            Err(ToolError::Store(e)) if e.is_refusal() => {
                tracing::info!(error = %e, "the database refused a tool's write");
                Ok((
                    serde_json::json!({ "error": format!("the database refused the write: {e}") }),
                    true,
                ))
            }
            Err(ToolError::Store(e)) => Err(e),
        }
    }

    fn cap(&self, output: serde_json::Value) -> serde_json::Value {
        let text = output.to_string();
        if text.len() <= self.max_output_bytes {
            return output;
        }
        let mut end = self.max_output_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        serde_json::json!({
            "truncated": true,
            "note": format!(
                "the output was {} bytes of JSON; only the first {end} are shown",
                text.len()
            ),
            "output_prefix": &text[..end],
        })
    }
}

/// The tools an agent may be given, by name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    tools: BTreeMap<String, Arc<AgentTool>>,
}

impl Registry {
    /// Builds every configured tool and checks it against what it acts on
    /// (a SQL tool's statement is prepared on its database; an HTTP tool's
    /// URL, secret and headers are read). Fails with a
    /// message naming the first tool that is wrong.
    pub async fn build(
        configs: &BTreeMap<String, ToolConfig>,
        context: &BuildContext,
    ) -> Result<Registry, String> {
        let mut registry = Registry::default();
        for (name, config) in configs {
            if !super::params::valid_name(name) || name.len() > 64 {
                return Err(format!(
                    "tool {name:?}: a tool's name is 1 to 64 letters, digits and _, \
                     starting with a letter (what every provider accepts)"
                ));
            }
            let (tool, max_output_bytes, approval): (Arc<dyn Tool>, _, _) = match config {
                ToolConfig::Sql(config) => (
                    Arc::new(
                        sql::SqlTool::build(name, config, context)
                            .await
                            .map_err(|e| format!("tool {name:?}: {e}"))?,
                    ),
                    config.max_output_bytes,
                    config.approval,
                ),
                ToolConfig::Http(config) => (
                    Arc::new(
                        http::HttpTool::build(name, config)
                            .map_err(|e| format!("tool {name:?}: {e}"))?,
                    ),
                    config.max_output_bytes,
                    config.approval,
                ),
            };
            let tool = AgentTool::new(tool, max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES))?
                .with_approval(approval);
            registry.add(tool);
        }
        Ok(registry)
    }

    /// Adds a tool under its name.
    pub fn add(&mut self, tool: AgentTool) {
        self.tools.insert(tool.spec().name.clone(), Arc::new(tool));
    }

    /// The tool with this name.
    pub fn get(&self, name: &str) -> Option<Arc<AgentTool>> {
        self.tools.get(name).cloned()
    }

    /// The tools whose names start with `prefix`, by name.
    pub fn starting_with<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = Arc<AgentTool>> + 'a {
        self.tools
            .range(prefix.to_owned()..)
            .take_while(move |(name, _)| name.starts_with(prefix))
            .map(|(_, tool)| tool.clone())
    }

    /// Every tool's name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.keys().map(String::as_str)
    }
}
