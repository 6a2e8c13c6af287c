//! The model providers by name: the built-in `scripted` one, and one for each
//! `[providers.<name>]` table of the config file, built by its `kind`. A new kind is a file
//! of its own (the provider and its table) plus its line in [`ProviderConfig`] and in
//! `ProviderConfig::build`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::Provider;
use super::openai::OpenAiConfig;
use super::scripted::ScriptedConfig;

/// One `[providers.<name>]` table of the config file, by its `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ProviderConfig {
    /// Any OpenAI-compatible Chat Completions server.
    Openai(OpenAiConfig),
    /// The built-in demo model.
    Scripted(ScriptedConfig),
}

/// What providers take from the command line rather than from their table.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// The scripted model's pause before each word (`--scripted-delay-ms`).
    pub scripted_delay: Duration,
    /// The onboarding fields the scripted model asks for, in order.
    pub onboarding_fields: Vec<String>,
}

/// A model provider as start-up reports and checks it.
#[derive(Debug, Clone)]
pub struct NamedProvider {
    /// Its name in the config file (`scripted` for the built-in one).
    pub name: String,
    /// Its `kind`: `openai` or `scripted`.
    pub kind: &'static str,
    /// Where it answers; none for the built-in demo model.
    pub url: Option<String>,
    /// The provider itself.
    pub provider: Arc<dyn Provider>,
    /// Its models' context window, when its table sets one; none for the
    /// demo model, which has no limit.
    pub context_tokens: Option<u32>,
}

impl ProviderConfig {
    /// The provider the table describes, named `name`. The error does not name it.
    fn build(&self, name: &str, defaults: &Defaults) -> Result<NamedProvider, String> {
        let named = |kind, url: Option<&String>, provider: Arc<dyn Provider>| NamedProvider {
            name: name.to_owned(),
            kind,
            url: url.cloned(),
            provider,
            context_tokens: None,
        };
        Ok(match self {
            ProviderConfig::Openai(table) => NamedProvider {
                context_tokens: table.context_tokens,
                ..named("openai", Some(&table.base_url), Arc::new(table.build()?))
            },
            ProviderConfig::Scripted(table) => named(
                "scripted",
                None,
                Arc::new(table.build(defaults.scripted_delay, &defaults.onboarding_fields)),
            ),
        })
    }
}

/// The providers by name: `scripted`, built in, then one for each of `tables` (which may
/// redefine `scripted`). Fails at the first table that cannot be built, naming it.
pub fn build(
    tables: &BTreeMap<String, ProviderConfig>,
    defaults: &Defaults,
) -> Result<BTreeMap<String, NamedProvider>, String> {
    let builtin = ProviderConfig::Scripted(ScriptedConfig::default());
    let mut providers = BTreeMap::new();
    providers.insert("scripted".to_owned(), builtin.build("scripted", defaults)?);
    for (name, table) in tables {
        let provider = table
            .build(name, defaults)
            .map_err(|e| format!("provider {name:?}: {e}"))?;
        providers.insert(name.clone(), provider);
    }
    Ok(providers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            scripted_delay: Duration::from_millis(7),
            onboarding_fields: vec!["name".to_owned()],
        }
    }

    fn tables(toml: &str) -> BTreeMap<String, ProviderConfig> {
        #[derive(Deserialize)]
        struct File {
            providers: BTreeMap<String, ProviderConfig>,
        }
        toml::from_str::<File>(toml).unwrap().providers
    }

    #[test]
    fn scripted_is_built_in_and_each_table_is_built_by_its_kind() {
        let providers = build(
            &tables(
                r#"
                [providers.local]
                kind = "openai"
                base_url = "http://127.0.0.1:11434/v1"

                [providers.slow]
                kind = "scripted"
                delay_ms = 500
                "#,
            ),
            &defaults(),
        )
        .unwrap();
        let shown: Vec<_> = providers
            .iter()
            .map(|(key, p)| (key.as_str(), p.name.as_str(), p.kind, p.url.as_deref()))
            .collect();
        assert_eq!(
            shown,
            [
                (
                    "local",
                    "local",
                    "openai",
                    Some("http://127.0.0.1:11434/v1")
                ),
                ("scripted", "scripted", "scripted", None),
                ("slow", "slow", "scripted", None),
            ]
        );
    }

    #[test]
    fn a_table_may_redefine_scripted() {
        let providers = build(
            &tables("[providers.scripted]\nkind = \"openai\"\nbase_url = \"http://h/v1\"\n"),
            &defaults(),
        )
        .unwrap();
        assert_eq!(providers.len(), 1);
        assert_eq!(providers["scripted"].kind, "openai");
    }

    #[test]
    fn an_error_names_the_table() {
        let error = build(
            &tables(
                "[providers.keyed]\nkind = \"openai\"\nbase_url = \"http://h/v1\"\n\
                 api_key_env = \"AGENTSTREAM_TEST_SURELY_UNSET_KEY\"\n",
            ),
            &defaults(),
        )
        .unwrap_err();
        assert_eq!(
            error,
            "provider \"keyed\": the environment variable AGENTSTREAM_TEST_SURELY_UNSET_KEY \
             is not set"
        );
        let error = build(
            &tables("[providers.ftp]\nkind = \"openai\"\nbase_url = \"ftp://h/v1\"\n"),
            &defaults(),
        )
        .unwrap_err();
        assert!(
            error.starts_with("provider \"ftp\": invalid base URL \"ftp://h/v1\""),
            "{error}"
        );
    }
}
