//! Client commands: `exec`, `query`, `members`, `status` over the HTTP API.

use std::io::{BufRead, BufReader};
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Args, ValueEnum};
use serde_json::{Value as Json, json};

use crate::CliResult;

/// The agent to talk to.
#[derive(Args, Debug)]
pub struct ApiArgs {
    /// The agent's HTTP API address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
    pub api: String,
}

/// `litemesh exec`
#[derive(Args, Debug)]
pub struct ExecArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Print the agent's JSON answer as it is.
    #[arg(long)]
    json: bool,
    /// SQL statements, run as one transaction.
    #[arg(required = true, value_name = "SQL")]
    sql: Vec<String>,
}

/// Output formats of `litemesh query`.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// Comma-separated values with a header line.
    Csv,
    /// A JSON array of objects (column name → value).
    Json,
}

/// `litemesh query`
#[derive(Args, Debug)]
pub struct QueryArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Read no older than this version token (from `exec`).
    #[arg(long, value_name = "TOKEN")]
    min_token: Option<String>,
    /// How long to wait for the token, in milliseconds.
    #[arg(long, value_name = "MS")]
    wait_ms: Option<u64>,
    /// A read-only statement.
    #[arg(value_name = "SQL")]
    sql: String,
}

fn base_url(api: &str) -> String {
    let api = api.trim_end_matches('/');
    if api.starts_with("http://") || api.starts_with("https://") {
        api.to_string()
    } else {
        format!("http://{api}")
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

type Resp = ureq::http::Response<ureq::Body>;

fn failed(url: &str, e: ureq::Error) -> String {
    format!("cannot reach the agent at {url}: {e}")
}

/// A non-2xx answer as an error message (the API's `error` field if any).
fn check(mut r: Resp) -> Result<Resp, String> {
    if r.status().is_success() {
        return Ok(r);
    }
    let status = r.status();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    let msg = serde_json::from_str::<Json>(&text)
        .ok()
        .and_then(|j| j.get("error").and_then(Json::as_str).map(str::to_string))
        .unwrap_or(text);
    Err(format!("{status}: {msg}"))
}

fn get_json(api: &str, path: &str) -> Result<Json, String> {
    let url = format!("{}{path}", base_url(api));
    let r = agent().get(&url).call().map_err(|e| failed(&url, e))?;
    let mut r = check(r)?;
    let text = r
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_string()
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("bad answer from {url}: {e}"))
}

fn post(api: &str, path: &str, body: &Json) -> Result<Resp, String> {
    let url = format!("{}{path}", base_url(api));
    let r = agent()
        .post(&url)
        .header("content-type", "application/json")
        .send(body.to_string())
        .map_err(|e| failed(&url, e))?;
    check(r)
}

/// `litemesh exec SQL…`
pub fn exec(a: ExecArgs) -> CliResult {
    let mut r = post(&a.api.api, "/v1/transactions", &json!(a.sql))?;
    let text = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
    let j: Json = serde_json::from_str(&text).map_err(|e| format!("bad answer: {e}"))?;
    if a.json {
        println!("{j}");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(results) = j["results"].as_array() {
        for (i, res) in results.iter().enumerate() {
            println!(
                "statement {}: {} row(s) affected",
                i + 1,
                res["rows_affected"]
            );
        }
    }
    println!("version: {}", j["version"]);
    let token = j["token"].as_str().unwrap_or("");
    println!(
        "token: {}",
        if token.is_empty() {
            "(none: nothing replicated changed)"
        } else {
            token
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// A value for the table and CSV formats.
fn plain(v: &Json) -> String {
    match v {
        Json::Null => "NULL".into(),
        Json::String(s) => s.clone(),
        Json::Object(o) => match o.get("blob").and_then(Json::as_str) {
            Some(b) => match B64.decode(b) {
                Ok(bytes) => {
                    let hex: String = bytes.iter().map(|x| format!("{x:02x}")).collect();
                    format!("x'{hex}'")
                }
                Err(_) => v.to_string(),
            },
            None => v.to_string(),
        },
        other => other.to_string(),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Prints rows as aligned columns.
pub fn print_table(columns: &[String], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for r in rows {
        for (w, v) in widths.iter_mut().zip(r) {
            *w = (*w).max(v.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(columns);
    line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
    for r in rows {
        line(r);
    }
}

/// `litemesh query SQL`
pub fn query(a: QueryArgs) -> CliResult {
    let mut path = "/v1/queries".to_string();
    let mut sep = '?';
    if let Some(t) = &a.min_token {
        path.push_str(&format!("{sep}min_token={}", urlencode(t)));
        sep = '&';
    }
    if let Some(w) = a.wait_ms {
        path.push_str(&format!("{sep}wait_ms={w}"));
    }
    let r = post(&a.api.api, &path, &json!(a.sql))?;
    let mut columns: Vec<String> = Vec::new();
    let mut rows: Vec<Vec<Json>> = Vec::new();
    let reader = BufReader::new(r.into_body().into_reader());
    let mut ended = false;
    for line in reader.lines() {
        let line = line.map_err(|e| format!("reading the answer: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let ev: Json = serde_json::from_str(&line).map_err(|e| format!("bad event: {e}"))?;
        if let Some(c) = ev.get("columns").and_then(Json::as_array) {
            columns = c
                .iter()
                .map(|c| c.as_str().unwrap_or_default().to_string())
                .collect();
        } else if let Some(row) = ev.get("row") {
            rows.push(row[1].as_array().cloned().unwrap_or_default());
        } else if let Some(e) = ev.get("error") {
            return Err(format!(
                "after {} row(s): {}",
                rows.len(),
                e.as_str().unwrap_or_default()
            ));
        } else if ev.get("eoq").is_some() {
            ended = true;
        }
    }
    if !ended {
        return Err(format!(
            "the answer ended after {} row(s) without its end marker (connection cut)",
            rows.len()
        ));
    }
    match a.format {
        Format::Json => {
            let objs: Vec<Json> = rows
                .iter()
                .map(|r| Json::Object(columns.iter().cloned().zip(r.iter().cloned()).collect()))
                .collect();
            println!("{}", Json::Array(objs));
        }
        Format::Csv => {
            let head: Vec<String> = columns.iter().map(|c| csv_field(c)).collect();
            println!("{}", head.join(","));
            for r in &rows {
                let cells: Vec<String> = r
                    .iter()
                    .map(|v| match v {
                        Json::Null => String::new(),
                        v => csv_field(&plain(v)),
                    })
                    .collect();
                println!("{}", cells.join(","));
            }
        }
        Format::Table => {
            let cells: Vec<Vec<String>> =
                rows.iter().map(|r| r.iter().map(plain).collect()).collect();
            print_table(&columns, &cells);
            println!(
                "({} row{})",
                rows.len(),
                if rows.len() == 1 { "" } else { "s" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn opt(v: &Json) -> String {
    match v {
        Json::Null => "-".into(),
        Json::Number(n) => match n.as_f64() {
            Some(f) if !n.is_i64() && !n.is_u64() => format!("{f:.1}"),
            _ => n.to_string(),
        },
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `litemesh members`
pub fn members(a: ApiArgs) -> CliResult {
    let j = get_json(&a.api, "/v1/members")?;
    let cols = [
        "NAME",
        "ADDR",
        "REGION",
        "STATE",
        "INCARNATION",
        "RTT_MS",
        "API",
    ];
    let rows: Vec<Vec<String>> = j
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|m| {
            [
                "name",
                "addr",
                "region",
                "state",
                "incarnation",
                "rtt_ms",
                "api",
            ]
            .iter()
            .map(|k| opt(&m[*k]))
            .collect()
        })
        .collect();
    print_table(&cols.map(String::from), &rows);
    Ok(ExitCode::SUCCESS)
}

/// `litemesh status`
pub fn status(a: ApiArgs) -> CliResult {
    let j = get_json(&a.api, "/v1/status")?;
    let health_url = format!("{}/v1/health", base_url(&a.api));
    let health = agent()
        .get(&health_url)
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .and_then(|t| serde_json::from_str::<Json>(&t).ok())
        .unwrap_or(Json::Null);
    println!("name:              {}", opt(&j["name"]));
    println!("actor:             {}", opt(&j["actor"]));
    println!("db_version:        {}", opt(&j["db_version"]));
    match health["status"].as_str() {
        Some("ok") => println!("health:            ok"),
        Some(other) => println!("health:            {other}: {}", opt(&health["error"])),
        None => println!("health:            -"),
    }
    println!(
        "members:           {} reachable of {} known (this node included)",
        opt(&j["members_reachable"]),
        opt(&j["members_known"])
    );
    println!("max lag:           {} s", opt(&j["max_lag_secs"]));
    println!("changes_applied:   {}", opt(&j["changes_applied"]));
    println!(
        "syncs:             {} completed, {} failed",
        opt(&j["syncs_completed"]),
        opt(&j["syncs_failed"])
    );
    println!(
        "failures:          apply {}, serve {} in a row; write: {}",
        opt(&j["apply_failures"]),
        opt(&j["serve_failures"]),
        match &j["write_error"] {
            Json::Null => "ok".to_string(),
            e => opt(e),
        }
    );
    println!(
        "broadcast:         {} queued, {} dropped",
        opt(&j["broadcast_queue"]),
        opt(&j["broadcast_dropped"])
    );
    println!("partial_versions:  {}", opt(&j["partial_versions"]));
    println!("version vector:");
    if let Some(vv) = j["version_vector"].as_object() {
        for (actor, v) in vv {
            println!("  {actor}  {v}");
        }
    }
    let list = |k: &str| j[k].as_array().cloned().unwrap_or_default();
    println!("writers (replication lag):");
    let rows: Vec<Vec<String>> = list("writers")
        .iter()
        .map(|w| {
            [
                "name",
                "actor",
                "reachable",
                "lag_secs",
                "head",
                "missing_versions",
            ]
            .iter()
            .map(|k| opt(&w[*k]))
            .collect()
        })
        .collect();
    print_table(
        &["WRITER", "ACTOR", "REACHABLE", "LAG_S", "HEAD", "MISSING"].map(String::from),
        &rows,
    );
    println!("peers:");
    let rows: Vec<Vec<String>> = list("peers")
        .iter()
        .map(|p| {
            [
                "name",
                "addr",
                "state",
                "behind_versions",
                "sync_age_secs",
                "rtt_ms",
            ]
            .iter()
            .map(|k| opt(&p[*k]))
            .collect()
        })
        .collect();
    print_table(
        &[
            "PEER",
            "ADDR",
            "STATE",
            "BEHIND_VERSIONS",
            "SYNC_AGE_S",
            "RTT_MS",
        ]
        .map(String::from),
        &rows,
    );
    let q = list("quarantined");
    if !q.is_empty() {
        println!(
            "quarantined changes (cannot be applied here; POST /v1/quarantine/retry after fixing):"
        );
        let rows: Vec<Vec<String>> = q
            .iter()
            .map(|x| {
                ["actor", "version", "attempts", "since_secs", "error"]
                    .iter()
                    .map(|k| opt(&x[*k]))
                    .collect()
            })
            .collect();
        print_table(
            &["ACTOR", "VERSION", "ATTEMPTS", "SINCE_S", "ERROR"].map(String::from),
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}
