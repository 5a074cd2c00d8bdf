//! JSON forms of statements and values (the HTTP API's wire format).
//!
//! A statement is `"SQL"`, `["SQL", [params…]]` or
//! `{"query": "SQL", "params": [params…]}`. A value is JSON null, an integer,
//! a float, a string, or `{"blob": "<base64>"}` (booleans are accepted as
//! parameters and bound as 0/1).
//!
//! Requests are parsed here, strictly and with messages that say what is
//! wrong. Answers are the shapes of `litemesh_client::types` (defined once,
//! decoded by the client): the functions at the end of this file turn the
//! node's types into them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use litemesh::{Statement, Value};
use litemesh_client::types as wire;
use serde_json::{Map, Value as Json};

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

/// A SQLite value in its JSON form (NaN and infinities have none: null).
pub fn wire_value(v: Value) -> litemesh_client::Value {
    use litemesh_client::Value as W;
    match v {
        Value::Null => W::Null,
        Value::Integer(i) => W::Integer(i),
        Value::Real(f) => W::Real(f),
        Value::Text(s) => W::Text(s),
        Value::Blob(b) => W::Blob(b),
    }
}

fn millis(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A member (`GET /v1/members`).
pub fn wire_member(m: litemesh::MemberInfo) -> wire::Member {
    let litemesh::MemberInfo {
        name,
        addr,
        region,
        state,
        incarnation,
        rtt,
        actor,
        api,
    } = m;
    wire::Member {
        name,
        addr,
        region,
        state: litemesh::PeerState::from(state).as_str().into(),
        incarnation,
        rtt_ms: rtt.map(millis),
        actor: actor.map(|a| a.to_hex().into()),
        api,
    }
}

/// The node's status (`GET /v1/status`). Every field is named, so that a
/// field added to the node's status does not compile until the API says
/// what it shows of it.
pub fn wire_status(s: litemesh::Status) -> wire::Status {
    let litemesh::Status {
        name,
        actor,
        db_version,
        version_vector,
        complete_through,
        peers,
        writers,
        max_lag,
        quarantined,
        members_reachable,
        members_known,
        broadcast_queue,
        broadcast_dropped,
        changes_applied,
        transactions_committed,
        commit_groups,
        apply_transactions,
        broadcasts_known,
        broadcasts_withheld,
        placement_rows_refused,
        rows_not_carried,
        tombstones_collected,
        collection_held_back,
        needs_snapshot,
        snapshot_catch_up,
        placement_mismatch,
        placement,
        syncs_completed,
        syncs_failed,
        apply_failures,
        serve_failures,
        write_error,
        partial_versions,
        region,
        regions,
    } = s;
    let actors = |m: std::collections::BTreeMap<litemesh::ActorId, u64>| {
        m.into_iter().map(|(a, v)| (a.to_hex().into(), v)).collect()
    };
    wire::Status {
        name,
        actor: actor.to_hex().into(),
        db_version,
        version_vector: actors(version_vector),
        complete_through: actors(complete_through),
        peers: peers
            .into_iter()
            .map(|p| {
                let litemesh::PeerStatus {
                    addr,
                    name,
                    state,
                    behind_versions,
                    last_sync_ago,
                    sync_age,
                    rtt,
                    region,
                } = p;
                wire::PeerStatus {
                    addr,
                    name,
                    state: state.as_str().into(),
                    behind_versions,
                    last_sync_secs_ago: last_sync_ago.map(|d| d.as_secs_f64()),
                    sync_age_secs: sync_age.as_secs_f64(),
                    rtt_ms: rtt.map(millis),
                    region,
                }
            })
            .collect(),
        writers: writers
            .into_iter()
            .map(|w| {
                let litemesh::WriterStatus {
                    actor,
                    name,
                    addr,
                    reachable,
                    lag,
                    head,
                    missing_versions,
                    region,
                } = w;
                wire::WriterStatus {
                    actor: actor.to_hex().into(),
                    name,
                    addr,
                    reachable,
                    lag_secs: lag.as_secs_f64(),
                    head,
                    missing_versions,
                    region,
                }
            })
            .collect(),
        max_lag_secs: max_lag.as_secs_f64(),
        quarantined: quarantined
            .into_iter()
            .map(|q| {
                let litemesh::QuarantineStatus {
                    actor,
                    version,
                    rows,
                    error,
                    since,
                    attempts,
                } = q;
                wire::QuarantinedChange {
                    actor: actor.to_hex().into(),
                    version,
                    rows: rows as u64,
                    error,
                    since_secs: since.as_secs_f64(),
                    attempts,
                }
            })
            .collect(),
        members_reachable: members_reachable as u64,
        members_known: members_known as u64,
        broadcast_queue: broadcast_queue as u64,
        broadcast_dropped,
        changes_applied,
        transactions_committed,
        commit_groups,
        apply_transactions,
        broadcasts_known,
        broadcasts_withheld,
        placement_rows_refused,
        rows_not_carried,
        tombstones_collected,
        collection_held_back,
        needs_snapshot,
        snapshot_catch_up: snapshot_catch_up.map(|c| wire::SnapshotCatchUp {
            keys_checked: c.keys_checked,
            rows_dropped: c.rows_dropped,
            rows_rebased: c.rows_rebased,
            complete: c.complete,
        }),
        placement_mismatch,
        placement,
        syncs_completed,
        syncs_failed,
        apply_failures,
        serve_failures,
        write_error,
        partial_versions: partial_versions as u64,
        region,
        regions: regions
            .into_iter()
            .map(|r| wire::RegionStatus {
                region: r.region,
                members: r.members as u64,
                reachable: r.reachable as u64,
                max_lag_secs: r.max_lag.as_secs_f64(),
                reachable_max_lag_secs: r.reachable_max_lag.as_secs_f64(),
                nearest_rtt_ms: r.nearest_rtt.map(millis),
                bytes_sent: r.bytes_sent,
            })
            .collect(),
    }
}

/// What the node keeps (`GET /v1/retention`).
pub fn wire_retention(r: litemesh::RetentionReport) -> wire::Retention {
    let litemesh::RetentionReport {
        policy,
        collection: c,
        offline_limit,
        writers,
        members,
        longest_absence,
        metadata,
        warnings,
    } = r;
    wire::Retention {
        policy_secs: policy.map(|d| d.as_secs_f64()),
        collection: wire::Collection {
            stable_versions: c.stable_versions,
            collected_versions: c.collected_versions,
            tombstones_collected: c.tombstones_collected,
            log_entries_swept: c.log_entries_swept,
            held_back: c.held_back,
            held_back_secs: c.held_back_for.map(|d| d.as_secs_f64()),
            slowest_member_lacks: c.slowest_member.as_ref().map(|m| m.1),
            slowest_member: c.slowest_member.map(|m| m.0),
            floors: c.floors,
            error: c.error,
        },
        offline_limit_secs: offline_limit.map(|d| d.as_secs_f64()),
        writers: writers
            .into_iter()
            .map(|w| wire::RetainedWriter {
                actor: w.actor.to_hex().into(),
                name: w.name,
                head: w.head,
                oldest_servable: w.oldest_servable,
                collected_through: w.collected_through,
            })
            .collect(),
        members: members
            .into_iter()
            .map(|m| wire::MemberRetention {
                name: m.name,
                addr: m.addr,
                state: litemesh::PeerState::from(m.state).as_str().into(),
                unreachable_secs: m.unreachable_for.map(|d| d.as_secs_f64()),
                incremental: m.incremental,
            })
            .collect(),
        longest_absence: longest_absence.map(|(member, d)| wire::Absence {
            member,
            secs: d.as_secs_f64(),
        }),
        metadata: wire::Metadata {
            tables: metadata
                .tables
                .into_iter()
                .map(|(table, rows, tombstones)| wire::TableMetadata {
                    table,
                    rows,
                    tombstones,
                })
                .collect(),
            log_rows: metadata.log_rows,
            log_bytes: metadata.log_bytes,
            file_bytes: metadata.file_bytes,
            free_bytes: metadata.free_bytes,
        },
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
            let j = serde_json::to_value(wire_value(v.clone())).unwrap();
            assert_eq!(to_value(&j).unwrap(), v);
        }
        assert!(to_value(&json!(u64::MAX)).is_err());
        assert!(to_value(&json!({"blob": "!!"})).is_err());
    }

    /// What the client sends is what the server reads.
    #[test]
    fn client_statements_parse_here() {
        use litemesh_client::Statement as W;
        let sent = [
            W::new("SELECT 1"),
            W::new("INSERT INTO t VALUES (?, ?, ?, ?, ?)")
                .bind("é")
                .bind(-3)
                .bind(2.5)
                .bind(vec![0u8, 255])
                .bind(None::<i64>),
        ];
        let j = serde_json::to_value(&sent).unwrap();
        let got: Vec<Statement> = j
            .as_array()
            .unwrap()
            .iter()
            .map(|s| to_statement(s).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                Statement::from("SELECT 1"),
                Statement::with_params(
                    "INSERT INTO t VALUES (?, ?, ?, ?, ?)",
                    vec![
                        Value::Text("é".into()),
                        Value::Integer(-3),
                        Value::Real(2.5),
                        Value::Blob(vec![0, 255]),
                        Value::Null,
                    ]
                ),
            ]
        );
    }
}
