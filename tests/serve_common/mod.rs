//! Shared by the `serve_*` integration tests: a server on a free loopback
//! port, the toyworld demo records, and a small checker of JSON values
//! against the schemas of `openapi.json` (the subset that file uses: `$ref`,
//! `type`, `required`, `properties`, `additionalProperties: false`, `items`,
//! `oneOf`, `allOf`, `enum`, `const`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use padv::serve::client::{Client, Response};
use padv::serve::{ServeConfig, Server};
use serde_json::Value;

pub fn toyworld() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/toyworld")
}

/// A toyworld server on 127.0.0.1 with a free port, configured by `f`.
pub fn start(f: impl FnOnce(&mut ServeConfig)) -> Server {
    let mut config = ServeConfig::toyworld().unwrap();
    config.addr = "127.0.0.1:0".parse().unwrap();
    f(&mut config);
    Server::start(config).expect("the toyworld server starts")
}

pub fn client(server: &Server) -> Client {
    Client::new(server.addr()).with_timeout(Duration::from_secs(300))
}

/// The first `n` demo trajectories (as JSON objects), cycling past 256.
pub fn demo_records(n: usize) -> Vec<Value> {
    let text = std::fs::read_to_string(toyworld().join("demo_trained.jsonl")).unwrap();
    let all: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (0..n).map(|i| all[i % all.len()].clone()).collect()
}

/// The demo file's path, for running `padv score` on the same records.
pub fn demo_path() -> PathBuf {
    toyworld().join("demo_trained.jsonl")
}

pub fn openapi() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Poll `cond` every 5 ms for up to `limit`.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

/// The response's JSON after checking it against the OpenAPI response schema
/// of `method path` for its status.
pub fn checked(resp: &Response, method: &str, route: &str) -> Value {
    let doc = openapi();
    let op = &doc["paths"][route][method.to_ascii_lowercase()];
    assert!(op.is_object(), "openapi.json has no {method} {route}");
    let status = resp.status.to_string();
    let declared = &op["responses"][&status];
    assert!(
        declared.is_object(),
        "{method} {route} answered {status}, which openapi.json does not declare: {}",
        resp.text()
    );
    if resp.status == 204 {
        return Value::Null;
    }
    let body = resp.json().unwrap();
    if let Some(schema) = declared["content"]["application/json"].get("schema")
        && let Err(e) = conforms(&doc, schema, &body, "$")
    {
        panic!("{method} {route} {status}: {e}\n{body:#}");
    }
    body
}

/// Whether `v` conforms to `schema` (resolving `$ref` in `doc`).
pub fn conforms(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        let target = &doc["components"]["schemas"][name];
        assert!(target.is_object(), "dangling $ref {r}");
        return conforms(doc, target, v, at);
    }
    if let Some(types) = schema.get("type") {
        let ok = match types {
            Value::String(t) => type_is(t, v),
            Value::Array(ts) => ts.iter().any(|t| type_is(t.as_str().unwrap(), v)),
            _ => true,
        };
        if !ok {
            return Err(format!("{at}: {v} is not of type {types}"));
        }
    }
    if let Some(e) = schema["enum"].as_array()
        && !e.contains(v)
    {
        return Err(format!(
            "{at}: {v} is not one of {schema}",
            schema = schema["enum"]
        ));
    }
    if let Some(c) = schema.get("const")
        && c != v
    {
        return Err(format!("{at}: {v} is not {c}"));
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            conforms(doc, s, v, at)?;
        }
    }
    if let Some(one) = schema["oneOf"].as_array() {
        let errors: Vec<String> = one
            .iter()
            .filter_map(|s| conforms(doc, s, v, at).err())
            .collect();
        if errors.len() == one.len() {
            return Err(format!("{at}: matches no alternative: {errors:?}"));
        }
    }
    if let Value::Object(o) = v {
        for r in schema["required"].as_array().into_iter().flatten() {
            let r = r.as_str().unwrap();
            if !o.contains_key(r) {
                return Err(format!("{at}: missing required `{r}`"));
            }
        }
        let props = schema["properties"].as_object();
        for (k, x) in o {
            match props.and_then(|p| p.get(k)) {
                Some(s) => conforms(doc, s, x, &format!("{at}.{k}"))?,
                None if schema["additionalProperties"] == Value::Bool(false) => {
                    return Err(format!("{at}: unexpected field `{k}`"));
                }
                None => {}
            }
        }
    }
    if let (Value::Array(items), Some(s)) = (v, schema.get("items")) {
        for (i, x) in items.iter().enumerate() {
            conforms(doc, s, x, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

fn type_is(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_u64() || v.is_i64(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

/// Every number in `want` equals the one at the same place in `got` within
/// `tol`; everything else is equal.
pub fn assert_close(want: &Value, got: &Value, tol: f64, at: &str) {
    match (want, got) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!((a - b).abs() <= tol, "{at}: {b} differs from {a}");
        }
        (Value::Object(a), Value::Object(b)) => {
            let ka: Vec<_> = a.keys().collect();
            let kb: Vec<_> = b.keys().collect();
            assert_eq!(ka, kb, "{at}: fields differ");
            for (k, x) in a {
                assert_close(x, &b[k], tol, &format!("{at}.{k}"));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{at}: lengths differ");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_close(x, y, tol, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(want, got, "{at}"),
    }
}
