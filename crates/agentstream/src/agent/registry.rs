//! The agent registry: builds the agents from the configuration's
//! `[agents.*]` tables over the providers and tools that exist. The built-in
//! `onboarding` and `chat` agents are the entries of [`BUILTIN`]; one the
//! configuration leaves out runs on the scripted demo model.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Agent, Agents};
use crate::{
    llm::{ToolChoice, registry::NamedProvider},
    tools::Registry,
};

/// The system prompt of the onboarding agent.
const ONBOARDING_PROMPT: &str = "You onboard a new user. Ask for each profile field in turn, \
    save each answer with update_profile, and call complete_onboarding when every field is \
    filled. Keep replies short and friendly.";
/// The system prompt of the chat agent.
const CHAT_PROMPT: &str = "You are a helpful assistant. Call get_profile when the user asks \
    about their profile.";

/// The built-in agents: name, system prompt and tools, used where the
/// configuration does not say otherwise.
pub const BUILTIN: [(&str, &str, &[&str]); 2] = [
    (
        "onboarding",
        ONBOARDING_PROMPT,
        &["get_profile", "update_profile", "complete_onboarding"],
    ),
    ("chat", CHAT_PROMPT, &["get_profile"]),
];

/// One agent, as an `[agents.NAME]` table of the TOML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The provider's name.
    pub provider: String,
    /// The model's name at the provider.
    pub model: String,
    /// The system prompt (default: the built-in one).
    pub system_prompt: Option<String>,
    /// The tools it may call (default: the built-in set for the agent).
    pub tools: Option<Vec<String>>,
    /// Most model calls in one run (default: `--max-steps`).
    pub max_steps: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Most tokens in one reply (`max_tokens`; default: the server's).
    pub max_tokens: Option<u32>,
    /// `tool_choice` for the model calls of a run until it has called a
    /// tool: `auto`, `none`, `required` or a tool's name. Then `auto`, so a
    /// forced call does not repeat forever (default: not sent).
    pub tool_choice: Option<ToolChoice>,
}

/// The agents `tables` define over the built-in ones, and the providers
/// they use, each once. Logs one line per agent. Fails, with a message
/// naming what is wrong, at an agent that names no known provider or tool.
pub fn build(
    tables: &BTreeMap<String, AgentConfig>,
    providers: &BTreeMap<String, NamedProvider>,
    tools: &Registry,
    max_steps: u32,
) -> Result<(Agents, Vec<NamedProvider>), String> {
    if let Some(unknown) = tables
        .keys()
        .find(|k| !BUILTIN.iter().any(|(n, ..)| n == k))
    {
        return Err(format!(
            "unknown agent {unknown:?}: the agents are onboarding and chat"
        ));
    }
    let mut agents = Agents::default();
    let mut used: Vec<NamedProvider> = Vec::new();
    for (name, prompt, default_tools) in BUILTIN {
        let defined = tables.get(name);
        let provider_name = defined.map_or("scripted", |a| a.provider.as_str());
        let named = providers.get(provider_name).ok_or_else(|| {
            format!("agent {name:?} names the unknown provider {provider_name:?}")
        })?;
        if !used.iter().any(|u| u.name == named.name) {
            used.push(named.clone());
        }
        let provider = named.provider.clone();
        let tool_names: Vec<&str> = match defined.and_then(|a| a.tools.as_ref()) {
            Some(names) => names.iter().map(String::as_str).collect(),
            None => default_tools.to_vec(),
        };
        let mut agent_tools = Vec::new();
        for tool in tool_names {
            agent_tools.push(tools.get(tool).ok_or_else(|| {
                format!(
                    "agent {name:?} names the unknown tool {tool:?}; the tools are {}",
                    tools.names().collect::<Vec<_>>().join(", ")
                )
            })?);
        }
        let max_steps = defined.and_then(|a| a.max_steps).unwrap_or(max_steps);
        if max_steps == 0 {
            return Err(format!("agent {name:?}: max_steps must be at least 1"));
        }
        let model = defined.map_or_else(|| "demo".to_owned(), |a| a.model.clone());
        tracing::info!(
            agent = name,
            provider = named.name.as_str(),
            kind = named.kind,
            // The scripted provider's label says it is the demo model.
            model = provider.label(&model).as_str(),
            "agent configured"
        );
        agents.add(Agent {
            name: name.to_owned(),
            provider,
            model,
            system_prompt: defined
                .and_then(|a| a.system_prompt.clone())
                .unwrap_or_else(|| prompt.to_owned()),
            tools: agent_tools,
            max_steps,
            temperature: defined.and_then(|a| a.temperature),
            max_tokens: defined.and_then(|a| a.max_tokens),
            tool_choice: defined.and_then(|a| a.tool_choice.clone()),
        });
    }
    Ok((agents, used))
}
