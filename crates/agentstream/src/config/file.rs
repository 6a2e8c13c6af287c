//! The TOML configuration file (`--config`), composed over the built-in
//! defaults (`default.toml`, shipped in the binary).

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;

use crate::{
    agent::registry::AgentConfig,
    http::auth::AuthConfig,
    llm::registry::ProviderConfig,
    tools::{ToolConfig, mcp::McpServerConfig, sql::DatabaseConfig},
};

/// The built-in agents and tools (see the file's own comments).
const DEFAULT: &str = include_str!("default.toml");

/// The configuration: model providers, agents, tools and the databases
/// tools act on. Parsed from the built-in defaults with the user's file
/// composed over them (see [`FileConfig::load`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Providers by name; `scripted` (the demo model) is always defined.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Agents by name.
    #[serde(default)]
    pub agents: BTreeMap<String, AgentConfig>,
    /// Tools by name, each of a `kind`.
    #[serde(default)]
    pub tools: BTreeMap<String, ToolConfig>,
    /// Application databases SQL tools act on, by name.
    #[serde(default)]
    pub databases: BTreeMap<String, DatabaseConfig>,
    /// MCP servers whose tools agents may call, by name: `[mcp.NAME]`.
    #[serde(default)]
    pub mcp: BTreeMap<String, McpServerConfig>,
    /// How callers sign in besides API keys: `[auth.jwt]`.
    #[serde(default)]
    pub auth: AuthConfig,
}

impl FileConfig {
    /// The built-in defaults with the file at `path` (if any) composed over
    /// them: an agent the file defines under a built-in name is merged with
    /// it key by key, anything else it defines is added or replaces the
    /// built-in entry whole. `onboarding_fields` fills the onboarding tools'
    /// list of profile fields. Fails with a message naming the file and,
    /// where it can, the line.
    pub fn load(path: Option<&Path>, onboarding_fields: &[String]) -> Result<FileConfig, String> {
        let mut merged = defaults(onboarding_fields)?;
        if let Some(path) = path {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            // Parsed alone first, so a mistake is reported against the file.
            toml::from_str::<FileConfig>(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            let own: toml::Table =
                toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            compose(&mut merged, own);
        }
        toml::Value::Table(merged)
            .try_into()
            .map_err(|e| format!("the configuration with the built-in defaults: {e}"))
    }
}

/// The built-in defaults with the onboarding fields filled in.
fn defaults(onboarding_fields: &[String]) -> Result<toml::Table, String> {
    let sql_list = onboarding_fields
        .iter()
        .map(|f| format!("'{}'", f.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ");
    let text = DEFAULT.replace("ONBOARDING_FIELDS", &sql_list).replace(
        "ONBOARDING_FIELD_COUNT",
        &onboarding_fields.len().to_string(),
    );
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("the built-in configuration: {e}"))?;
    let field = table
        .get_mut("tools")
        .and_then(|t| t.get_mut("update_profile"))
        .and_then(|t| t.get_mut("parameters"))
        .and_then(|t| t.get_mut("field"))
        .and_then(toml::Value::as_table_mut)
        .ok_or("the built-in configuration has no update_profile.field")?;
    field.insert(
        "enum".to_owned(),
        toml::Value::Array(
            onboarding_fields
                .iter()
                .map(|f| toml::Value::String(f.clone()))
                .collect(),
        ),
    );
    Ok(table)
}

/// Composes the user's tables over the defaults: agents key by key, every
/// other entry whole.
fn compose(defaults: &mut toml::Table, own: toml::Table) {
    for (section, entries) in own {
        let toml::Value::Table(entries) = entries else {
            defaults.insert(section, entries);
            continue;
        };
        let target = defaults
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(target) = target.as_table_mut() else {
            continue;
        };
        for (name, entry) in entries {
            match (section.as_str(), target.get_mut(&name), entry) {
                ("agents", Some(toml::Value::Table(built_in)), toml::Value::Table(entry)) => {
                    built_in.extend(entry);
                }
                (_, _, entry) => {
                    target.insert(name, entry);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::openai::OpenAiConfig;

    fn fields() -> Vec<String> {
        ["name", "role", "goals"].map(str::to_owned).to_vec()
    }

    #[test]
    fn the_defaults_define_the_built_in_agents_and_tools() {
        let config = FileConfig::load(None, &fields()).unwrap();
        assert_eq!(
            config.agents.keys().collect::<Vec<_>>(),
            ["chat", "onboarding"]
        );
        assert_eq!(
            config.tools.keys().collect::<Vec<_>>(),
            ["complete_onboarding", "get_profile", "update_profile"]
        );
    }

    #[test]
    fn a_file_extends_and_overrides_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentstream.toml");
        std::fs::write(
            &path,
            r#"
            [providers.local]
            kind = "openai"
            base_url = "http://127.0.0.1:11434/v1"
            chunk_timeout_ms = 500

            [agents.chat]
            provider = "local"
            model = "llama3.1"
            temperature = 0.2

            [agents.orders]
            description = "Answers questions about orders."
            tools = []
            "#,
        )
        .unwrap();
        let config = FileConfig::load(Some(&path), &fields()).unwrap();
        assert!(matches!(
            &config.providers["local"],
            ProviderConfig::Openai(OpenAiConfig {
                chunk_timeout_ms: Some(500),
                api_key_env: None,
                ..
            })
        ));
        let chat = &config.agents["chat"];
        assert_eq!(chat.model.as_deref(), Some("llama3.1"));
        // Merged key by key: the built-in prompt and tools stay.
        assert_eq!(chat.tools.as_deref(), Some(&["get_profile".to_owned()][..]));
        assert!(
            chat.system_prompt
                .as_deref()
                .unwrap()
                .contains("get_profile")
        );
        assert!(config.agents.contains_key("orders"));
        assert!(config.agents.contains_key("onboarding"));
    }

    #[test]
    fn the_jwt_sign_in_parses() {
        let file: FileConfig = toml::from_str(
            r#"
            [auth.jwt]
            jwks_url = "https://id.example/.well-known/jwks.json"
            issuer = "https://id.example/"
            audience = ["agentstream", "api"]
            "#,
        )
        .unwrap();
        let jwt = file.auth.jwt.unwrap();
        assert_eq!(jwt.leeway_secs, 60);
        assert_eq!(jwt.subject_claim, "sub");
        assert!(
            matches!(jwt.audience, Some(crate::http::auth::OneOrMany::Many(ref a)) if a.len() == 2)
        );
        assert!(FileConfig::default().auth.jwt.is_none());
        assert!(toml::from_str::<FileConfig>("[auth.jwt]\nsecret = \"x\"").is_err());
    }

    #[test]
    fn mistakes_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[agents.chat]\nprovider = \"x\"\nmodle = 1\n").unwrap();
        let e = FileConfig::load(Some(&path), &fields()).unwrap_err();
        assert!(e.contains("bad.toml") && e.contains("modle"), "{e}");
    }
}
