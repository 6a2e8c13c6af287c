//! The agent registry: builds the agents of the configuration's
//! `[agents.NAME]` tables (the built-in `onboarding` and `chat` among them,
//! from the defaults shipped in the binary) over the providers and tools
//! that exist.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    Agent, Agents,
    context::{Counter, DEFAULT_CONTEXT_TOKENS, DEFAULT_REPLY_TOKENS, Window},
};
use crate::{
    llm::{ToolChoice, registry::NamedProvider},
    tools::{Registry, params::valid_name},
};

/// The system prompt of an agent that gives none.
const DEFAULT_PROMPT: &str = "You are a helpful assistant.";

/// One agent, as an `[agents.NAME]` table of the TOML file. Every key is
/// optional; a table under a built-in agent's name is merged with it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// What it is for, in one line (shown by `GET /v1/agents`).
    pub description: Option<String>,
    /// The provider's name (default: `scripted`, the demo model).
    pub provider: Option<String>,
    /// The model's name at the provider (default: `demo`).
    pub model: Option<String>,
    /// The system prompt.
    pub system_prompt: Option<String>,
    /// The tools it may call, by name (default: none); `PREFIX*` names
    /// every tool whose name starts with `PREFIX` (`NAME__*`: an MCP
    /// server's).
    pub tools: Option<Vec<String>>,
    /// Most model calls in one run (default: `--max-steps`).
    pub max_steps: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Most tokens in one reply (`max_tokens`; default: the server's). Also
    /// the room the context budget keeps for the reply (default 1024).
    pub max_tokens: Option<u32>,
    /// The model's context window, in tokens: prompt and reply together.
    /// Each model call sends the system prompt, the current turn and as many
    /// of the most recent earlier messages as fit in it less the reply's
    /// room (default: the provider's `context_tokens`, else the window of
    /// an OpenAI model known by name, else 8192; none for the demo model).
    pub context_tokens: Option<u32>,
    /// Seconds a run waits for the user's decision on a tool call that needs
    /// approval before it ends `expired` (default:
    /// `--approval-timeout-secs`).
    pub approval_timeout_secs: Option<u64>,
    /// `tool_choice` for the model calls of a run until it has called a
    /// tool: `auto`, `none`, `required` or a tool's name. Then `auto`, so a
    /// forced call does not repeat forever (default: not sent).
    pub tool_choice: Option<ToolChoice>,
}

/// What an agent's table may leave to the server's settings.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// Most model calls in one run.
    pub max_steps: u32,
    /// How long a paused run waits for the user's decisions.
    pub approval_timeout: std::time::Duration,
}

/// The agents `tables` define, and the providers they use, each once. Logs
/// one line per agent. Fails, with a message naming what is wrong, at an
/// agent that names no known provider or tool.
pub fn build(
    tables: &BTreeMap<String, AgentConfig>,
    providers: &BTreeMap<String, NamedProvider>,
    tools: &Registry,
    defaults: Defaults,
) -> Result<(Agents, Vec<NamedProvider>), String> {
    let mut agents = Agents::default();
    let mut used: Vec<NamedProvider> = Vec::new();
    for (name, defined) in tables {
        if !valid_name(name) {
            return Err(format!(
                "agent {name:?}: a name is letters, digits and _, starting with a letter"
            ));
        }
        let provider_name = defined.provider.as_deref().unwrap_or("scripted");
        let named = providers.get(provider_name).ok_or_else(|| {
            format!(
                "agent {name:?} names the unknown provider {provider_name:?}; the providers are {}",
                providers.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        if !used.iter().any(|u| u.name == named.name) {
            used.push(named.clone());
        }
        let provider = named.provider.clone();
        let mut agent_tools: Vec<std::sync::Arc<crate::tools::AgentTool>> = Vec::new();
        for tool in defined.tools.iter().flatten() {
            if let Some(prefix) = tool.strip_suffix('*') {
                // `PREFIX*`: every tool whose name starts so (an MCP
                // server's, `NAME__*`), as they are at start-up.
                let before = agent_tools.len();
                agent_tools.extend(
                    tools
                        .starting_with(prefix)
                        .filter(|t| !agent_tools.iter().any(|a| a.spec().name == t.spec().name))
                        .collect::<Vec<_>>(),
                );
                if agent_tools.len() == before {
                    tracing::warn!(
                        agent = name.as_str(),
                        pattern = tool.as_str(),
                        "the pattern matches no tool now (an MCP server that is down?); \
                         the agent starts without it"
                    );
                }
                continue;
            }
            agent_tools.push(tools.get(tool).ok_or_else(|| {
                format!(
                    "agent {name:?} names the unknown tool {tool:?}; the tools are {}",
                    tools.names().collect::<Vec<_>>().join(", ")
                )
            })?);
        }
        let max_steps = defined.max_steps.unwrap_or(defaults.max_steps);
        if max_steps == 0 {
            return Err(format!("agent {name:?}: max_steps must be at least 1"));
        }
        let model = defined.model.clone().unwrap_or_else(|| "demo".to_owned());
        let context = window(name, defined, named, &model)?;
        tracing::info!(
            agent = name.as_str(),
            provider = named.name.as_str(),
            kind = named.kind,
            // The scripted provider's label says it is the demo model.
            model = provider.label(&model).as_str(),
            tools = agent_tools.len(),
            "agent configured"
        );
        agents.add(Agent {
            name: name.clone(),
            description: defined.description.clone().unwrap_or_default(),
            provider,
            model,
            system_prompt: defined
                .system_prompt
                .clone()
                .unwrap_or_else(|| DEFAULT_PROMPT.to_owned()),
            tools: agent_tools,
            max_steps,
            temperature: defined.temperature,
            max_tokens: defined.max_tokens,
            tool_choice: defined.tool_choice.clone(),
            context,
            approval_timeout: defined
                .approval_timeout_secs
                .map_or(defaults.approval_timeout, std::time::Duration::from_secs),
        });
    }
    Ok((agents, used))
}

/// The context window of agent `name`, on `named` with `model`: none for the
/// demo model, unless the table sets one.
fn window(
    name: &str,
    defined: &AgentConfig,
    named: &NamedProvider,
    model: &str,
) -> Result<Option<Window>, String> {
    let known =
        || tiktoken_rs::model::get_context_size(model).and_then(|size| u32::try_from(size).ok());
    let tokens = match (defined.context_tokens, named.context_tokens) {
        (Some(tokens), _) | (None, Some(tokens)) => tokens,
        (None, None) if named.kind == "scripted" => return Ok(None),
        (None, None) => known().unwrap_or(DEFAULT_CONTEXT_TOKENS),
    };
    let reply_tokens = defined.max_tokens.unwrap_or(DEFAULT_REPLY_TOKENS);
    if reply_tokens >= tokens {
        return Err(format!(
            "agent {name:?}: its context window ({tokens} tokens) must be larger than the room \
             kept for the reply ({reply_tokens}: its max_tokens, or 1024 when it sets none)"
        ));
    }
    Ok(Some(Window {
        tokens,
        reply_tokens,
        counter: Counter::for_model(model),
    }))
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::llm::scripted::Scripted;

    fn provider(kind: &'static str, context_tokens: Option<u32>) -> NamedProvider {
        NamedProvider {
            name: "p".to_owned(),
            kind,
            url: None,
            provider: Arc::new(Scripted::new(Duration::ZERO, Vec::new())),
            context_tokens,
        }
    }

    fn agent(context_tokens: Option<u32>, max_tokens: Option<u32>) -> AgentConfig {
        AgentConfig {
            context_tokens,
            max_tokens,
            ..AgentConfig::default()
        }
    }

    fn tokens(config: &AgentConfig, named: &NamedProvider, model: &str) -> Option<u32> {
        window("a", config, named, model)
            .unwrap()
            .map(|window| window.tokens)
    }

    #[test]
    fn the_window_comes_from_the_agent_the_provider_the_model_or_the_default() {
        let openai = provider("openai", None);
        assert_eq!(tokens(&agent(Some(4096), None), &openai, "m"), Some(4096));
        assert_eq!(
            tokens(&agent(None, None), &provider("openai", Some(32_000)), "m"),
            Some(32_000)
        );
        assert_eq!(tokens(&agent(None, None), &openai, "gpt-4o"), Some(128_000));
        assert_eq!(
            tokens(&agent(None, None), &openai, "llama3"),
            Some(DEFAULT_CONTEXT_TOKENS)
        );
        assert_eq!(
            tokens(&agent(None, None), &provider("scripted", None), "demo"),
            None
        );
        let fitted = window("a", &agent(Some(2000), Some(500)), &openai, "gpt-4o")
            .unwrap()
            .unwrap();
        assert_eq!(fitted.budget(), 1500);
        assert!(matches!(fitted.counter, Counter::Bpe(_)));
        let error = window("a", &agent(Some(1000), Some(1000)), &openai, "m").unwrap_err();
        assert!(error.contains("must be larger"), "{error}");
    }
}
