//! A small JSON Schema validator for the subset of draft-07 our hand-written schemas use.
//!
//! Why not the `jsonschema` crate: it pulls in an HTTP client, a regex engine of its own and
//! dozens of crates for features (remote `$ref`, formats, every draft) we do not use, on a
//! build machine shared by four engineers. Our schemas are hand-written and small, so this
//! module supports exactly the keywords they use and **refuses to compile a schema with any
//! other keyword**: a keyword added to a schema file can never be silently ignored.
//!
//! Supported: `type`, `const`, `enum`, `required`, `properties`, `additionalProperties`
//! (boolean or schema), `propertyNames`, `minProperties`, `maxProperties`, `items`,
//! `maxItems`, `minLength`, `maxLength`,
//! `pattern`, `oneOf`; `$schema`, `title`, `description` are annotations.

use regex::Regex;
use serde_json::Value;

/// A problem with the schema itself (a bug in a file we ship).
#[derive(Debug, thiserror::Error)]
#[error("schema at {path}: {message}")]
pub struct SchemaCompileError {
    pub path: String,
    pub message: String,
}

/// One reason a document does not match its schema.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct Violation {
    /// JSON pointer into the document, `/` for the root.
    pub path: String,
    pub message: String,
}

#[derive(Debug)]
pub struct Schema {
    types: Option<Vec<String>>,
    constant: Option<Value>,
    enumeration: Option<Vec<Value>>,
    required: Vec<String>,
    properties: Vec<(String, Schema)>,
    additional: Additional,
    property_names: Option<Box<Schema>>,
    min_properties: Option<usize>,
    max_properties: Option<usize>,
    items: Option<Box<Schema>>,
    max_items: Option<usize>,
    min_length: Option<usize>,
    max_length: Option<usize>,
    pattern: Option<Regex>,
    one_of: Vec<Schema>,
    /// OpenAPI `nullable: true`: `null` is accepted whatever the type.
    nullable: bool,
    /// `x-kubernetes-int-or-string: true`: an integer or a string.
    int_or_string: bool,
    minimum: Option<f64>,
    maximum: Option<f64>,
}

#[derive(Debug)]
enum Additional {
    Allowed,
    Forbidden,
    Schema(Box<Schema>),
}

const ANNOTATIONS: &[&str] = &[
    "$schema",
    "title",
    "description",
    // Kubernetes structural-schema keywords that say nothing about validity here.
    "format",
    "default",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
];

impl Schema {
    pub fn compile(schema: &Value) -> Result<Schema, SchemaCompileError> {
        compile_at(schema, "#")
    }

    /// Every violation of `value`, in document order; empty when it matches.
    pub fn validate(&self, value: &Value) -> Vec<Violation> {
        let mut out = Vec::new();
        self.check(value, "", &mut out);
        out
    }

    fn check(&self, value: &Value, path: &str, out: &mut Vec<Violation>) {
        let at = |message: String| Violation {
            path: if path.is_empty() {
                "/".into()
            } else {
                path.into()
            },
            message,
        };
        if self.nullable && value.is_null() {
            return;
        }
        if self.int_or_string && !(value.is_string() || has_type(value, "integer")) {
            out.push(at(format!(
                "expected integer or string, found {}",
                type_name(value)
            )));
            return;
        }
        if let Some(number) = value.as_f64() {
            if let Some(min) = self.minimum
                && number < min
            {
                out.push(at(format!("{value} is less than the minimum {min}")));
            }
            if let Some(max) = self.maximum
                && number > max
            {
                out.push(at(format!("{value} is more than the maximum {max}")));
            }
        }
        if let Some(types) = &self.types
            && !types.iter().any(|t| has_type(value, t))
        {
            out.push(at(format!(
                "expected {}, found {}",
                types.join(" or "),
                type_name(value)
            )));
            return;
        }
        if let Some(constant) = &self.constant
            && value != constant
        {
            out.push(at(format!("must be {constant}, found {value}")));
        }
        if let Some(values) = &self.enumeration
            && !values.contains(value)
        {
            let allowed: Vec<String> = values.iter().map(Value::to_string).collect();
            out.push(at(format!("{value} is not one of {}", allowed.join(", "))));
        }
        if let Value::String(text) = value {
            self.check_string(text, &at, out);
        }
        if let Value::Array(items) = value {
            if let Some(max) = self.max_items
                && items.len() > max
            {
                out.push(at(format!("has more than {max} items")));
            }
            if let Some(schema) = &self.items {
                for (index, item) in items.iter().enumerate() {
                    schema.check(item, &format!("{path}/{index}"), out);
                }
            }
        }
        if let Value::Object(map) = value {
            self.check_object(map, path, &at, out);
        }
        if !self.one_of.is_empty() {
            let matching = self
                .one_of
                .iter()
                .filter(|s| s.validate(value).is_empty())
                .count();
            if matching != 1 {
                let what = self
                    .one_of
                    .iter()
                    .flat_map(|s| s.required.iter().cloned())
                    .collect::<Vec<_>>();
                let hint = if what.is_empty() {
                    String::new()
                } else {
                    format!(" (exactly one of: {})", what.join(", "))
                };
                out.push(at(format!(
                    "must match exactly one alternative, matches {matching}{hint}"
                )));
            }
        }
    }

    fn check_string(&self, text: &str, at: &dyn Fn(String) -> Violation, out: &mut Vec<Violation>) {
        let length = text.chars().count();
        if let Some(min) = self.min_length
            && length < min
        {
            out.push(at(format!("{text:?} is shorter than {min} characters")));
        }
        if let Some(max) = self.max_length
            && length > max
        {
            out.push(at(format!("{text:?} is longer than {max} characters")));
        }
        if let Some(pattern) = &self.pattern
            && !pattern.is_match(text)
        {
            out.push(at(format!(
                "{text:?} does not match the pattern {}",
                pattern.as_str()
            )));
        }
    }

    fn check_object(
        &self,
        map: &serde_json::Map<String, Value>,
        path: &str,
        at: &dyn Fn(String) -> Violation,
        out: &mut Vec<Violation>,
    ) {
        for key in &self.required {
            if !map.contains_key(key) {
                out.push(at(format!("missing required field {key:?}")));
            }
        }
        if let Some(min) = self.min_properties
            && map.len() < min
        {
            out.push(at(format!("needs at least {min} entries")));
        }
        if let Some(max) = self.max_properties
            && map.len() > max
        {
            out.push(at(format!("has more than {max} entries")));
        }
        for (key, value) in map {
            let child = format!("{path}/{}", escape_pointer(key));
            if let Some(names) = &self.property_names {
                for violation in names.validate(&Value::String(key.clone())) {
                    out.push(Violation {
                        path: child.clone(),
                        message: format!("key {key:?}: {}", violation.message),
                    });
                }
            }
            match self.properties.iter().find(|(name, _)| name == key) {
                Some((_, schema)) => schema.check(value, &child, out),
                None => match &self.additional {
                    Additional::Allowed => {}
                    Additional::Forbidden => {
                        let known: Vec<&str> =
                            self.properties.iter().map(|(n, _)| n.as_str()).collect();
                        out.push(Violation {
                            path: child,
                            message: format!(
                                "unknown field {key:?} (allowed: {})",
                                known.join(", ")
                            ),
                        });
                    }
                    Additional::Schema(schema) => schema.check(value, &child, out),
                },
            }
        }
    }
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        _ => false,
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn compile_at(schema: &Value, path: &str) -> Result<Schema, SchemaCompileError> {
    let Value::Object(map) = schema else {
        return Err(SchemaCompileError {
            path: path.to_string(),
            message: "a schema must be an object".into(),
        });
    };
    let mut out = Schema::empty();
    for (keyword, value) in map {
        out.compile_keyword(keyword, value, path)?;
    }
    Ok(out)
}

impl Schema {
    /// A schema that accepts anything: the start of every compiled schema.
    fn empty() -> Schema {
        Schema {
            types: None,
            constant: None,
            enumeration: None,
            required: Vec::new(),
            properties: Vec::new(),
            additional: Additional::Allowed,
            property_names: None,
            min_properties: None,
            max_properties: None,
            items: None,
            max_items: None,
            min_length: None,
            max_length: None,
            pattern: None,
            one_of: Vec::new(),
            nullable: false,
            int_or_string: false,
            minimum: None,
            maximum: None,
        }
    }

    /// Compiles one keyword of the schema at `path` into `self`.
    fn compile_keyword(
        &mut self,
        keyword: &str,
        value: &Value,
        path: &str,
    ) -> Result<(), SchemaCompileError> {
        let fail = |message: String| SchemaCompileError {
            path: path.to_string(),
            message,
        };
        let here = format!("{path}/{keyword}");
        match keyword {
            k if ANNOTATIONS.contains(&k) => {}
            "type" => {
                self.types = Some(match value {
                    Value::String(t) => vec![t.clone()],
                    _ => strings(value).ok_or_else(|| fail("type must be a string".into()))?,
                })
            }
            "const" => self.constant = Some(value.clone()),
            "enum" => {
                self.enumeration = Some(
                    value
                        .as_array()
                        .cloned()
                        .ok_or_else(|| fail("enum must be an array".into()))?,
                )
            }
            "required" => {
                self.required =
                    strings(value).ok_or_else(|| fail("required must list strings".into()))?
            }
            "properties" => {
                let props = value
                    .as_object()
                    .ok_or_else(|| fail("properties must be an object".into()))?;
                for (name, sub) in props {
                    self.properties
                        .push((name.clone(), compile_at(sub, &format!("{here}/{name}"))?));
                }
            }
            "additionalProperties" => {
                self.additional = match value {
                    Value::Bool(true) => Additional::Allowed,
                    Value::Bool(false) => Additional::Forbidden,
                    other => Additional::Schema(Box::new(compile_at(other, &here)?)),
                }
            }
            "propertyNames" => self.property_names = Some(Box::new(compile_at(value, &here)?)),
            "items" => self.items = Some(Box::new(compile_at(value, &here)?)),
            "minProperties" => self.min_properties = Some(count(value, &here)?),
            "maxProperties" => self.max_properties = Some(count(value, &here)?),
            "maxItems" => self.max_items = Some(count(value, &here)?),
            "minLength" => self.min_length = Some(count(value, &here)?),
            "maxLength" => self.max_length = Some(count(value, &here)?),
            "pattern" => {
                let text = value
                    .as_str()
                    .ok_or_else(|| fail("pattern must be a string".into()))?;
                self.pattern =
                    Some(Regex::new(text).map_err(|e| fail(format!("invalid pattern: {e}")))?);
            }
            "nullable" => self.nullable = value.as_bool().unwrap_or(false),
            "x-kubernetes-int-or-string" => self.int_or_string = value.as_bool().unwrap_or(false),
            "minimum" | "maximum" => {
                let bound = value
                    .as_f64()
                    .ok_or_else(|| fail(format!("{keyword} must be a number")))?;
                if keyword == "minimum" {
                    self.minimum = Some(bound);
                } else {
                    self.maximum = Some(bound);
                }
            }
            "oneOf" => {
                let alternatives = value
                    .as_array()
                    .ok_or_else(|| fail("oneOf must be an array".into()))?;
                for (index, sub) in alternatives.iter().enumerate() {
                    self.one_of
                        .push(compile_at(sub, &format!("{here}/{index}"))?);
                }
            }
            other => {
                return Err(fail(format!(
                    "keyword {other:?} is not supported by this validator"
                )));
            }
        }
        Ok(())
    }
}

fn strings(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect()
}

fn count(value: &Value, path: &str) -> Result<usize, SchemaCompileError> {
    value
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| SchemaCompileError {
            path: path.to_string(),
            message: "must be a non-negative integer".into(),
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Schema {
        Schema::compile(&json!({
            "type": "object",
            "required": ["name"],
            "additionalProperties": false,
            "oneOf": [{"required": ["a"]}, {"required": ["b"]}],
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 5, "pattern": "^[a-z]+$"},
                "a": {"enum": ["x", "y"]},
                "b": {"const": 1},
                "map": {
                    "type": "object",
                    "minProperties": 1,
                    "propertyNames": {"pattern": "^k"},
                    "additionalProperties": {"type": "string"}
                },
                "list": {"type": "array", "items": {"type": "integer"}}
            }
        }))
        .expect("schema compiles")
    }

    #[test]
    fn table_of_documents() {
        let cases = [
            (json!({"name": "ok", "a": "x"}), vec![]),
            (json!({"name": "ok", "b": 1}), vec![]),
            (json!("text"), vec!["/: expected object, found string"]),
            (
                json!({"a": "x"}),
                vec!["/: missing required field \"name\""],
            ),
            (
                json!({"name": "toolong", "a": "x"}),
                vec!["/name: \"toolong\" is longer than 5 characters"],
            ),
            (
                json!({"name": "A", "a": "x"}),
                vec!["/name: \"A\" does not match the pattern ^[a-z]+$"],
            ),
            (
                json!({"name": "n", "a": "z"}),
                vec!["/a: \"z\" is not one of \"x\", \"y\""],
            ),
            (json!({"name": "n", "b": 2}), vec!["/b: must be 1, found 2"]),
            (
                json!({"name": "n", "a": "x", "b": 1}),
                vec!["/: must match exactly one alternative, matches 2 (exactly one of: a, b)"],
            ),
            (
                json!({"name": "n", "a": "x", "extra": 1}),
                vec!["/extra: unknown field \"extra\" (allowed: a, b, list, map, name)"],
            ),
            (
                json!({"name": "n", "a": "x", "map": {}}),
                vec!["/map: needs at least 1 entries"],
            ),
            (
                json!({"name": "n", "a": "x", "map": {"j/x": "v", "k": 1}}),
                vec![
                    "/map/j~1x: key \"j/x\": \"j/x\" does not match the pattern ^k",
                    "/map/k: expected string, found number",
                ],
            ),
            (
                json!({"name": "n", "a": "x", "list": [1, "2"]}),
                vec!["/list/1: expected integer, found string"],
            ),
        ];
        let schema = schema();
        for (document, expected) in cases {
            let found: Vec<String> = schema
                .validate(&document)
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(found, expected, "{document}");
        }
    }

    /// The Kubernetes keywords of the schemas generated from the CRDs (QuotaPolicy,
    /// NodeOperation): `nullable`, `x-kubernetes-int-or-string`, `minimum`, `maximum`.
    #[test]
    fn table_of_kubernetes_keywords() {
        let schema = Schema::compile(&json!({
            "type": "object",
            "properties": {
                "n": {"type": "integer", "nullable": true, "minimum": 0, "maximum": 10,
                      "format": "int64", "default": 1},
                "q": {"x-kubernetes-int-or-string": true, "nullable": true},
                "s": {"type": "string"},
                "m": {"type": "object", "maxProperties": 1},
                "l": {"type": "array", "maxItems": 1}
            }
        }))
        .expect("compiles");
        let cases = [
            (json!({"n": 3, "q": "500m"}), vec![]),
            (json!({"n": null, "q": null}), vec![]),
            (json!({"q": 2}), vec![]),
            (json!({"n": -1}), vec!["/n: -1 is less than the minimum 0"]),
            (json!({"n": 11}), vec!["/n: 11 is more than the maximum 10"]),
            (
                json!({"n": "3"}),
                vec!["/n: expected integer, found string"],
            ),
            (
                json!({"q": 0.5}),
                vec!["/q: expected integer or string, found number"],
            ),
            (
                json!({"q": true}),
                vec!["/q: expected integer or string, found boolean"],
            ),
            (json!({"s": null}), vec!["/s: expected string, found null"]),
            (json!({"m": {"a": 1}, "l": [1]}), vec![]),
            (
                json!({"m": {"a": 1, "b": 2}}),
                vec!["/m: has more than 1 entries"],
            ),
            (json!({"l": [1, 2]}), vec!["/l: has more than 1 items"]),
        ];
        for (document, expected) in cases {
            let found: Vec<String> = schema
                .validate(&document)
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(found, expected, "{document}");
        }
    }

    #[test]
    fn unknown_keywords_are_refused() {
        let error = Schema::compile(&json!({"type": "object", "exclusiveMaximum": 3}))
            .expect_err("exclusiveMaximum is not supported");
        assert!(
            error.to_string().contains("\"exclusiveMaximum\""),
            "{error}"
        );
        let nested = Schema::compile(&json!({"properties": {"a": {"uniqueItems": true}}}))
            .expect_err("uniqueItems is not supported");
        assert_eq!(nested.path, "#/properties/a");
    }

    #[test]
    fn the_shipped_schemas_compile() {
        let text = include_str!("../../manifests-schema/nodeconfig.schema.json");
        let value: Value = serde_json::from_str(text).expect("valid JSON");
        Schema::compile(&value).expect("nodeconfig schema compiles");
    }
}
