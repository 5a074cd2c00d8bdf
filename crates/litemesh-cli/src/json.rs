//! JSON forms of statements and values (the HTTP API's wire format).
//!
//! A statement is `"SQL"`, `["SQL", [params…]]` or
//! `{"query": "SQL", "params": [params…]}`. A value is JSON null, an integer,
//! a float, a string, or `{"blob": "<base64>"}` (booleans are accepted as
//! parameters and bound as 0/1).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use litemesh::{Statement, Value};
use serde_json::{Map, Value as Json, json};

/// A JSON value as a SQLite value.
pub fn to_value(j: &Json) -> Result<Value, String> {
    Ok(match j {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Integer(i64::from(*b)),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Integer(i)
            } else if n.is_u64() {
                return Err(format!(
                    "integer {n} is out of range for SQLite (64-bit signed)"
                ));
            } else {
                Value::Real(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::Text(s.clone()),
        Json::Object(o) => match (o.len(), o.get("blob")) {
            (1, Some(Json::String(b))) => Value::Blob(
                B64.decode(b)
                    .map_err(|e| format!("blob parameter is not valid base64: {e}"))?,
            ),
            _ => {
                return Err(
                    "an object parameter must be {\"blob\": \"<base64>\"}; other objects are not values"
                        .into(),
                );
            }
        },
        Json::Array(_) => return Err("an array is not a parameter value".into()),
    })
}

/// A SQLite value as JSON.
pub fn from_value(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Integer(i) => json!(i),
        // NaN and infinities have no JSON form: null.
        Value::Real(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Text(s) => Json::String(s.clone()),
        Value::Blob(b) => json!({ "blob": B64.encode(b) }),
    }
}

fn params(j: Option<&Json>) -> Result<Vec<Value>, String> {
    match j {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, p)| to_value(p).map_err(|e| format!("parameter {}: {e}", i + 1)))
            .collect(),
        Some(_) => Err("params must be an array".into()),
    }
}

/// One statement in any of its three JSON forms.
pub fn to_statement(j: &Json) -> Result<Statement, String> {
    match j {
        Json::String(s) => Ok(Statement::from(s.as_str())),
        Json::Array(a) => match a.as_slice() {
            [Json::String(sql)] => Ok(Statement::from(sql.as_str())),
            [Json::String(sql), p] => Ok(Statement::with_params(sql.clone(), params(Some(p))?)),
            _ => Err("a statement array must be [\"SQL\", [params…]]".into()),
        },
        Json::Object(o) => statement_object(o),
        _ => Err(
            "a statement must be \"SQL\", [\"SQL\", [params…]] or {\"query\": \"SQL\", \"params\": […]}"
                .into(),
        ),
    }
}

fn statement_object(o: &Map<String, Json>) -> Result<Statement, String> {
    if let Some(k) = o.keys().find(|k| *k != "query" && *k != "params") {
        return Err(format!(
            "unknown key {k:?} in a statement object (expected \"query\" and \"params\")"
        ));
    }
    match o.get("query") {
        Some(Json::String(sql)) => Ok(Statement::with_params(
            sql.clone(),
            params(o.get("params"))?,
        )),
        _ => Err("a statement object needs \"query\": \"SQL\"".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_in_three_forms() {
        let want = Statement::with_params("SELECT ?", vec![Value::Integer(1)]);
        for j in [
            json!(["SELECT ?", [1]]),
            json!({"query": "SELECT ?", "params": [1]}),
        ] {
            assert_eq!(to_statement(&j).unwrap(), want);
        }
        assert_eq!(to_statement(&json!("SELECT 1")).unwrap(), "SELECT 1".into());
        for bad in [
            json!(1),
            json!([1]),
            json!({"sql": "x"}),
            json!(["x", 1]),
            json!(["x", [[1]]]),
        ] {
            assert!(to_statement(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_round_trip() {
        for v in [
            Value::Null,
            Value::Integer(-7),
            Value::Real(1.5),
            Value::Text("é".into()),
            Value::Blob(vec![0, 1, 255]),
        ] {
            assert_eq!(to_value(&from_value(&v)).unwrap(), v);
        }
        assert!(to_value(&json!(u64::MAX)).is_err());
        assert!(to_value(&json!({"blob": "!!"})).is_err());
    }
}
