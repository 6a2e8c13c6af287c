//! Declared tool parameters: what the model sees of a tool's arguments, as
//! a JSON Schema object built from `[tools.NAME.parameters.PARAM]` tables.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A parameter's JSON type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// A JSON string.
    String,
    /// A whole number (bound as a 64-bit integer).
    Integer,
    /// Any JSON number (bound as a 64-bit float).
    Number,
    /// `true` or `false`.
    Boolean,
}

impl ParamType {
    fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
        }
    }
}

/// One declared parameter, as a `[tools.NAME.parameters.PARAM]` table. The
/// keys are JSON Schema's, in snake case (`max_length` or `maxLength`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamConfig {
    /// `string`, `integer`, `number` or `boolean`.
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// What it means, for the model.
    pub description: Option<String>,
    /// The only values allowed.
    #[serde(rename = "enum")]
    pub choices: Option<Vec<serde_json::Value>>,
    /// Smallest number allowed.
    pub minimum: Option<f64>,
    /// Largest number allowed.
    pub maximum: Option<f64>,
    /// Fewest characters in a string.
    #[serde(alias = "minLength")]
    pub min_length: Option<u64>,
    /// Most characters in a string.
    #[serde(alias = "maxLength")]
    pub max_length: Option<u64>,
    /// A regular expression a string must match.
    pub pattern: Option<String>,
    /// Whether the model must give it (default: true unless it has a default).
    pub required: Option<bool>,
    /// The value used when the model leaves it out.
    pub default: Option<serde_json::Value>,
}

/// The JSON Schema of a tool's arguments: an object of the declared
/// parameters, no others. Fails, naming the parameter, on a default or an
/// enum value the parameter's own schema refuses.
pub fn schema(params: &BTreeMap<String, ParamConfig>) -> Result<serde_json::Value, String> {
    let mut properties = serde_json::Map::new();
    let mut required = Vec::new();
    for (name, param) in params {
        if !valid_name(name) {
            return Err(format!(
                "parameter {name:?}: a name is letters, digits and _, starting with a letter"
            ));
        }
        let mut schema = serde_json::Map::new();
        schema.insert("type".into(), param.kind.as_str().into());
        let mut set = |key: &str, value: Option<serde_json::Value>| {
            if let Some(value) = value {
                schema.insert(key.into(), value);
            }
        };
        set("description", param.description.clone().map(Into::into));
        set("enum", param.choices.clone().map(Into::into));
        set("minimum", param.minimum.map(number));
        set("maximum", param.maximum.map(number));
        set("minLength", param.min_length.map(Into::into));
        set("maxLength", param.max_length.map(Into::into));
        set("pattern", param.pattern.clone().map(Into::into));
        let own = serde_json::Value::Object(schema.clone());
        let validator =
            jsonschema::validator_for(&own).map_err(|e| format!("parameter {name:?}: {e}"))?;
        for value in param.choices.iter().flatten().chain(&param.default) {
            if let Err(e) = validator.validate(value) {
                return Err(format!("parameter {name:?}: {value} is not allowed: {e}"));
            }
        }
        if let Some(default) = &param.default {
            schema.insert("default".into(), default.clone());
        }
        if param.required.unwrap_or(param.default.is_none()) {
            required.push(serde_json::Value::from(name.as_str()));
        }
        properties.insert(name.clone(), serde_json::Value::Object(schema));
    }
    Ok(serde_json::json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    }))
}

/// A whole number stays one in the schema (`1`, not `1.0`).
fn number(n: f64) -> serde_json::Value {
    if n.fract() == 0.0 && n.abs() < 9e15 {
        #[expect(clippy::cast_possible_truncation, reason = "whole and within i64")]
        serde_json::Value::from(n as i64)
    } else {
        serde_json::Value::from(n)
    }
}

/// A parameter or tool name: letters, digits and `_`, starting with a letter.
pub fn valid_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(toml: &str) -> BTreeMap<String, ParamConfig> {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn declared_parameters_make_a_closed_object() {
        let schema = schema(&params(
            r#"
            [status]
            type = "string"
            enum = ["open", "shipped"]
            description = "Which orders."
            [limit]
            type = "integer"
            minimum = 1
            maximum = 50
            default = 10
            "#,
        ))
        .unwrap();
        assert_eq!(
            schema,
            serde_json::json!({
                "type": "object",
                "properties": {
                    "limit": {"type": "integer", "minimum": 1, "maximum": 50, "default": 10},
                    "status": {"type": "string", "enum": ["open", "shipped"], "description": "Which orders."},
                },
                "required": ["status"],
                "additionalProperties": false,
            })
        );
    }

    #[test]
    fn a_default_the_parameter_refuses_is_an_error() {
        let e = schema(&params(
            "[limit]\ntype = \"integer\"\nmaximum = 5\ndefault = 9",
        ))
        .unwrap_err();
        assert!(e.contains("limit"), "{e}");
        let e = schema(&params("[s]\ntype = \"string\"\nenum = [1]")).unwrap_err();
        assert!(e.contains("\"s\""), "{e}");
        assert!(schema(&params("[bad-name]\ntype = \"string\"")).is_err());
    }
}
