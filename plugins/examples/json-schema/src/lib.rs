//! Validator: the value must be JSON and, if the setting `schema` is set,
//! match that schema.
//!
//! `schema` is a JSON string holding a subset of JSON Schema:
//! `type` (`object`, `array`, `string`, `integer`, `number`, `boolean`,
//! `null`, or a list of these), `required`, `properties`,
//! `additionalProperties: false`, `items`, `enum`, `minimum`, `maximum`,
//! `minLength`, `maxLength`. Other keywords are ignored.
//!
//! Errors name the JSON path of the offending value, e.g.
//! `$.max: must be <= 100`.

use serde_json::{Map, Value};

fn validate(key: &str, value: &[u8]) -> Result<(), String> {
    let doc: Value =
        serde_json::from_slice(value).map_err(|e| format!("value of {key} is not JSON: {e}"))?;
    let Some(schema) = edgeconf_plugin::setting("schema") else {
        return Ok(());
    };
    let schema: Value = serde_json::from_str(&schema)
        .map_err(|e| format!("json-schema: setting schema is not JSON: {e}"))?;
    check(&schema, &doc, "$")
}

fn check(schema: &Value, v: &Value, path: &str) -> Result<(), String> {
    let Some(schema) = schema.as_object() else {
        // `true` (or anything that is not an object) accepts everything;
        // `false` accepts nothing.
        return match schema {
            Value::Bool(false) => Err(format!("{path}: not allowed")),
            _ => Ok(()),
        };
    };

    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => return Err(format!("{path}: schema: `type` must be a string or a list")),
        };
        if !types.iter().any(|t| is_type(v, t)) {
            return Err(format!(
                "{path}: must be {}, not {}",
                types.join(" or "),
                type_name(v)
            ));
        }
    }

    if let Some(Value::Array(allowed)) = schema.get("enum") {
        if !allowed.iter().any(|a| json_eq(a, v)) {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            return Err(format!(
                "{path}: must be one of {}, not {v}",
                list.join(", ")
            ));
        }
    }

    if let Some(n) = v.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if n < min {
                return Err(format!("{path}: must be >= {}, not {v}", schema["minimum"]));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if n > max {
                return Err(format!("{path}: must be <= {}, not {v}", schema["maximum"]));
            }
        }
    }

    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
            if len < min {
                return Err(format!(
                    "{path}: must be at least {min} characters long, not {len}"
                ));
            }
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
            if len > max {
                return Err(format!(
                    "{path}: must be at most {max} characters long, not {len}"
                ));
            }
        }
    }

    if let Some(obj) = v.as_object() {
        check_object(schema, obj, path)?;
    }

    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            check(items, item, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

fn check_object(
    schema: &Map<String, Value>,
    obj: &Map<String, Value>,
    path: &str,
) -> Result<(), String> {
    if let Some(Value::Array(required)) = schema.get("required") {
        for name in required.iter().filter_map(Value::as_str) {
            if !obj.contains_key(name) {
                return Err(format!("{}: is required", member(path, name)));
            }
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    if let Some(properties) = properties {
        for (name, sub) in properties {
            if let Some(child) = obj.get(name) {
                check(sub, child, &member(path, name))?;
            }
        }
    }
    if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
        for name in obj.keys() {
            if !properties.is_some_and(|p| p.contains_key(name)) {
                return Err(format!(
                    "{}: is not allowed (additionalProperties is false)",
                    member(path, name)
                ));
            }
        }
    } else if let Some(extra @ Value::Object(_)) = schema.get("additionalProperties") {
        for (name, child) in obj {
            if !properties.is_some_and(|p| p.contains_key(name)) {
                check(extra, child, &member(path, name))?;
            }
        }
    }
    Ok(())
}

/// `$.name`, or `$["odd name"]` when the name is not a plain identifier.
fn member(path: &str, name: &str) -> String {
    let plain = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        format!("{path}.{name}")
    } else {
        format!("{path}[{}]", Value::String(name.to_string()))
    }
}

fn is_type(v: &Value, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// JSON equality, with 1 and 1.0 equal.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

edgeconf_plugin::validator!(validate);
