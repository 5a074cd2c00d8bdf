//! Client commands: `exec`, `query`, `members`, `status` over the HTTP API.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use litemesh_client::{Client, HealthStatus, QueryOptions, Statement, Token, Value};
use serde_json::Value as Json;

use crate::CliResult;

/// The agent to talk to.
#[derive(Args, Debug)]
pub struct ApiArgs {
    /// The agent's HTTP API address. Repeatable (or comma-separated): the
    /// first is used, the others, nearest first, when it cannot be reached
    /// or cannot serve a query at its read level.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:8787",
        value_delimiter = ','
    )]
    pub api: Vec<String>,
}

/// `litemesh exec`
#[derive(Args, Debug)]
pub struct ExecArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Print the agent's JSON answer as it is.
    #[arg(long)]
    json: bool,
    /// Acknowledgement level: local (default), N (other nodes that applied
    /// it), region (another node of this region), regions (a node in every
    /// other region).
    #[arg(long, value_name = "LEVEL")]
    ack: Option<String>,
    /// How long to wait for the acknowledgement level, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    ack_timeout_ms: u64,
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
    /// How long to wait for the token (or the staleness bound), in
    /// milliseconds.
    #[arg(long, value_name = "MS")]
    wait_ms: Option<u64>,
    /// Bounded staleness: serve only from a copy known complete at most
    /// this many milliseconds ago.
    #[arg(long, value_name = "MS")]
    max_lag_ms: Option<u64>,
    /// `nearest`: when the agent cannot satisfy the level in time, it runs
    /// the query on its nearest peer that can.
    #[arg(long, value_name = "WHERE")]
    fallback: Option<FallbackArg>,
    /// A read-only statement.
    #[arg(value_name = "SQL")]
    sql: String,
}

/// Where a query may go when the agent cannot serve it.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum FallbackArg {
    /// Nowhere: fail.
    None,
    /// The agent's nearest peer that can.
    Nearest,
}

fn client(api: &ApiArgs) -> Client {
    let addrs: Vec<&str> = api.api.iter().map(String::as_str).collect();
    Client::builder().build_many(&addrs)
}

/// An error of the client as the command's message.
fn err(e: litemesh_client::Error) -> String {
    e.to_string()
}

/// `litemesh exec SQL…`
pub fn exec(a: ExecArgs) -> CliResult {
    let statements: Vec<Statement> = a.sql.into_iter().map(Statement::from).collect();
    let c = client(&a.api);
    let ack_timeout = Duration::from_millis(a.ack_timeout_ms);
    if a.json {
        let j: Json = match &a.ack {
            None => c.execute_as(&statements).map_err(err)?,
            Some(level) => serde_json::to_value(
                c.execute_acked(&statements, level, ack_timeout)
                    .map_err(err)?,
            )
            .map_err(|e| e.to_string())?,
        };
        println!("{j}");
        return Ok(ExitCode::SUCCESS);
    }
    let done = match &a.ack {
        None => c.execute(&statements).map_err(err)?,
        Some(level) => c
            .execute_acked(&statements, level, ack_timeout)
            .map_err(err)?,
    };
    for (i, res) in done.results.iter().enumerate() {
        println!("statement {}: {} row(s) affected", i + 1, res.rows_affected);
    }
    println!("version: {}", done.version);
    println!(
        "token: {}",
        if done.token.is_empty() {
            "(none: nothing replicated changed)"
        } else {
            done.token.as_str()
        }
    );
    if let Some(ack) = &done.ack {
        let who: Vec<String> = ack
            .confirmed
            .iter()
            .map(|n| match &n.region {
                Some(r) => format!("{} ({r})", n.name),
                None => n.name.clone(),
            })
            .collect();
        println!(
            "ack {}: {} in {:.1} ms; confirmed by: {}",
            ack.level,
            if ack.reached {
                "reached"
            } else {
                "NOT reached"
            },
            ack.waited_ms,
            if who.is_empty() {
                "-".to_string()
            } else {
                who.join(", ")
            }
        );
        if !ack.reached {
            eprintln!(
                "litemesh: the transaction is committed, but not acknowledged as asked \
                 (missing: {})",
                ack.missing.join(", ")
            );
            return Ok(ExitCode::from(3));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A value for the table and CSV formats.
fn plain(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Text(s) => s.clone(),
        Value::Blob(bytes) => {
            let hex: String = bytes.iter().map(|x| format!("{x:02x}")).collect();
            format!("x'{hex}'")
        }
        // Numbers as in JSON.
        number => Json::from(number).to_string(),
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
    let options = QueryOptions {
        min_token: a.min_token.map(Token::from),
        wait: a.wait_ms.map(Duration::from_millis),
        max_lag: a.max_lag_ms.map(Duration::from_millis),
        fallback_nearest: matches!(a.fallback, Some(FallbackArg::Nearest)),
    };
    let c = client(&a.api);
    let mut answer = c.query(&Statement::from(a.sql), &options).map_err(err)?;
    let columns = answer.columns().to_vec();
    let rows: Vec<Vec<Value>> = answer.by_ref().collect::<Result<_, _>>().map_err(err)?;
    // Say so when the rows did not come from the agent asked first.
    if let Some(node) = answer.served_by() {
        eprintln!("litemesh: served by {node} (the agent's nearest peer at the read level)");
    }
    if !answer.url().starts_with(&format!("{}/", c.base_url())) {
        eprintln!("litemesh: answered by the agent at {}", answer.url());
    }
    match a.format {
        Format::Json => {
            let objs: Vec<Json> = rows
                .iter()
                .map(|r| {
                    Json::Object(
                        columns
                            .iter()
                            .cloned()
                            .zip(r.iter().map(Json::from))
                            .collect(),
                    )
                })
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
                        Value::Null => String::new(),
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

/// A float as the status and members tables show it.
fn secs(f: f64) -> String {
    format!("{f:.1}")
}

/// An optional field: `-` when absent.
fn opt<T>(v: Option<T>, show: impl FnOnce(T) -> String) -> String {
    v.map_or_else(|| "-".to_string(), show)
}

/// `litemesh members`
pub fn members(a: ApiArgs) -> CliResult {
    let members = client(&a).members().map_err(err)?;
    let cols = [
        "NAME",
        "ADDR",
        "REGION",
        "STATE",
        "INCARNATION",
        "RTT_MS",
        "API",
    ];
    let rows: Vec<Vec<String>> = members
        .into_iter()
        .map(|m| {
            vec![
                m.name,
                m.addr.to_string(),
                opt(m.region, |r| r),
                m.state.to_string(),
                m.incarnation.to_string(),
                opt(m.rtt_ms, secs),
                opt(m.api, |a| a),
            ]
        })
        .collect();
    print_table(&cols.map(String::from), &rows);
    Ok(ExitCode::SUCCESS)
}

/// `litemesh retention`
pub fn retention(a: ApiArgs) -> CliResult {
    let r = client(&a).retention().map_err(err)?;
    let dur = |s: Option<f64>, none: &str| match s {
        Some(s) => format!("{s:.0} s"),
        None => none.to_string(),
    };
    println!(
        "policy:          {}",
        match r.policy_secs {
            Some(s) => format!("collect tombstones {s:.0} s after every node holds them"),
            None => "keep every tombstone (no --retention)".into(),
        }
    );
    let c = &r.collection;
    if r.policy_secs.is_some() {
        println!(
            "collection:      {} tombstones collected since start; {} versions collected, {} stable",
            c.tombstones_collected, c.collected_versions, c.stable_versions
        );
        println!(
            "log sweep:       {} overwritten change-log entries removed since start",
            c.log_entries_swept
        );
        match &c.held_back {
            Some(why) => println!(
                "held back:       {why} (for {})",
                dur(c.held_back_secs, "a moment")
            ),
            None => println!("held back:       no"),
        }
        if let (Some(m), Some(n)) = (&c.slowest_member, c.slowest_member_lacks) {
            println!("slowest member:  {m} (its last report lacks {n} versions held here)");
        }
        if let Some(e) = &c.error {
            println!("last pass:       failed: {e}");
        }
    }
    if !c.floors.is_empty() {
        let f: Vec<String> = c.floors.iter().map(|(t, cl)| format!("{t}={cl}")).collect();
        println!("floors:          {}", f.join(", "));
    }
    println!(
        "offline limit:   {}",
        match r.offline_limit_secs {
            Some(s) =>
                format!("{s:.0} s: a node away longer (forgotten) is refused and must be replaced"),
            None => "none: a node away for any time catches up incrementally".into(),
        }
    );
    match &r.longest_absence {
        Some(a) => println!(
            "longest absence: {} for {:.1} s (since this node started)",
            a.member, a.secs
        ),
        None => println!("longest absence: none seen since this node started"),
    }
    let m = &r.metadata;
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    println!(
        "file:            {} ({} free); change log {} rows, {} of entries",
        mb(m.file_bytes),
        mb(m.free_bytes),
        m.log_rows,
        mb(m.log_bytes)
    );
    let rows: Vec<Vec<String>> = m
        .tables
        .iter()
        .map(|t| {
            vec![
                t.table.clone(),
                t.rows.to_string(),
                t.tombstones.to_string(),
            ]
        })
        .collect();
    print_table(&["table", "rows", "tombstones"].map(String::from), &rows);
    let rows: Vec<Vec<String>> = r
        .writers
        .iter()
        .map(|w| {
            vec![
                w.name.clone().unwrap_or_else(|| "-".into()),
                w.actor.to_string(),
                w.head.to_string(),
                w.oldest_servable.to_string(),
                w.collected_through.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "writer",
            "actor",
            "head",
            "oldest servable",
            "collected through",
        ]
        .map(String::from),
        &rows,
    );
    let rows: Vec<Vec<String>> = r
        .members
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.state.to_string(),
                dur(m.unreachable_secs, "-"),
                if m.incremental {
                    "incrementally".into()
                } else {
                    "by snapshot".into()
                },
            ]
        })
        .collect();
    print_table(
        &["member", "state", "unreachable for", "catches up"].map(String::from),
        &rows,
    );
    for w in &r.warnings {
        println!("warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `litemesh status`
pub fn status(a: ApiArgs) -> CliResult {
    let c = client(&a);
    let s = c.status().map_err(err)?;
    let health = c.health().ok();
    println!("name:              {}", s.name);
    println!("actor:             {}", s.actor);
    println!("db_version:        {}", s.db_version);
    match health {
        Some(h) if h.status == HealthStatus::Ok => println!("health:            ok"),
        Some(h) => println!("health:            {}: {}", h.status, opt(h.error, |e| e)),
        None => println!("health:            -"),
    }
    println!(
        "members:           {} reachable of {} known (this node included)",
        s.members_reachable, s.members_known
    );
    println!("max lag:           {} s", secs(s.max_lag_secs));
    println!(
        "region:            {}",
        s.region.as_deref().unwrap_or("(none)")
    );
    println!("changes_applied:   {}", s.changes_applied);
    println!(
        "commits:           {} transactions in {} commits; peers' changes in {} transactions ({} known broadcasts skipped)",
        s.transactions_committed, s.commit_groups, s.apply_transactions, s.broadcasts_known
    );
    println!(
        "syncs:             {} completed, {} failed",
        s.syncs_completed, s.syncs_failed
    );
    println!(
        "failures:          apply {}, serve {} in a row; write: {}",
        s.apply_failures,
        s.serve_failures,
        s.write_error.as_deref().unwrap_or("ok")
    );
    println!(
        "broadcast:         {} queued, {} dropped",
        s.broadcast_queue, s.broadcast_dropped
    );
    println!("partial_versions:  {}", s.partial_versions);
    if !s.placement.is_empty() {
        let pinned: Vec<String> = s
            .placement
            .iter()
            .map(|(t, r)| format!("{t} → {}", r.join(", ")))
            .collect();
        println!("placement:         {}", pinned.join("; "));
        println!(
            "                   {} rows refused from peers, {} broadcasts withheld",
            s.placement_rows_refused, s.broadcasts_withheld
        );
    }
    if !s.placement_mismatch.is_empty() {
        println!(
            "placement differs: {} (their schema pins tables differently)",
            s.placement_mismatch.join(", ")
        );
    }
    if s.rows_not_carried > 0 {
        println!("rows not carried:  {}", s.rows_not_carried);
    }
    println!("version vector:");
    for (actor, v) in &s.version_vector {
        println!("  {actor}  {v}");
    }
    if s.regions.iter().any(|r| r.region.is_some()) {
        println!("regions:");
        let rows: Vec<Vec<String>> = s
            .regions
            .iter()
            .map(|r| {
                vec![
                    r.region.clone().unwrap_or_else(|| "(none)".into()),
                    format!("{}/{}", r.reachable, r.members),
                    secs(r.reachable_max_lag_secs),
                    secs(r.max_lag_secs),
                    opt(r.nearest_rtt_ms, secs),
                ]
            })
            .collect();
        print_table(
            &[
                "REGION",
                "REACHABLE",
                "LAG_S",
                "LAG_ALL_S",
                "NEAREST_RTT_MS",
            ]
            .map(String::from),
            &rows,
        );
    }
    println!("writers (replication lag):");
    let rows: Vec<Vec<String>> = s
        .writers
        .iter()
        .map(|w| {
            vec![
                opt(w.name.clone(), |n| n),
                w.actor.to_string(),
                w.reachable.to_string(),
                secs(w.lag_secs),
                w.head.to_string(),
                w.missing_versions.to_string(),
                opt(w.region.clone(), |r| r),
            ]
        })
        .collect();
    print_table(
        &[
            "WRITER",
            "ACTOR",
            "REACHABLE",
            "LAG_S",
            "HEAD",
            "MISSING",
            "REGION",
        ]
        .map(String::from),
        &rows,
    );
    println!("peers:");
    let rows: Vec<Vec<String>> = s
        .peers
        .iter()
        .map(|p| {
            vec![
                opt(p.name.clone(), |n| n),
                p.addr.to_string(),
                p.state.to_string(),
                p.behind_versions.to_string(),
                secs(p.sync_age_secs),
                opt(p.rtt_ms, secs),
            ]
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
    if !s.quarantined.is_empty() {
        println!(
            "quarantined changes (cannot be applied here; POST /v1/quarantine/retry after fixing):"
        );
        let rows: Vec<Vec<String>> = s
            .quarantined
            .iter()
            .map(|x| {
                vec![
                    x.actor.to_string(),
                    x.version.to_string(),
                    x.attempts.to_string(),
                    secs(x.since_secs),
                    x.error.clone(),
                ]
            })
            .collect();
        print_table(
            &["ACTOR", "VERSION", "ATTEMPTS", "SINCE_S", "ERROR"].map(String::from),
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}
