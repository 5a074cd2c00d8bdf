//! Every answer's shape, decoded from the agent's JSON (and encoded back to
//! the same bytes).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::*;
use crate::value::{Statement, Value};

/// Decodes `json`, and checks that encoding gives the same bytes back.
fn round_trip<T: Serialize + DeserializeOwned + std::fmt::Debug>(json: &str) -> T {
    let v: T = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(serde_json::to_string(&v).unwrap(), json, "{v:?}");
    v
}

const ACTOR: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn transaction_result() {
    let t: TransactionResult = round_trip(&format!(
        r#"{{"results":[{{"rows_affected":1}},{{"rows_affected":0}}],"time":0.0021,"token":"{ACTOR}:7","version":7}}"#
    ));
    assert_eq!(t.ack, None);
    let acked: TransactionResult = round_trip(&format!(
        r#"{{"results":[{{"rows_affected":1}}],"time":0.003,"token":"{ACTOR}:8","version":8,"ack":{{"level":"regions","reached":false,"confirmed":[{{"name":"n2","region":"us"}}],"missing":["region ap"],"waited_ms":500.0}}}}"#
    ));
    let ack = acked.ack.unwrap();
    assert!(!ack.reached);
    assert_eq!(ack.confirmed[0].region.as_deref(), Some("us"));
    assert_eq!(t.results[0].rows_affected, 1);
    assert_eq!(t.version, 7);
    assert_eq!(t.token.as_str(), format!("{ACTOR}:7"));
    // Nothing replicated changed: an empty token.
    let t: TransactionResult =
        serde_json::from_str(r#"{"results":[{"rows_affected":0}],"version":3,"token":""}"#)
            .unwrap();
    assert!(t.token.is_empty());
}

#[test]
fn members() {
    let json = format!(
        r#"[{{"name":"n1","addr":"10.0.0.1:7400","region":"eu","state":"alive","incarnation":2,"rtt_ms":0.4,"actor":"{ACTOR}","api":"10.0.0.1:8787"}},{{"name":"n2","addr":"[::1]:7401","region":null,"state":"suspect","incarnation":0,"rtt_ms":null,"actor":null,"api":null}}]"#
    );
    let m: Vec<Member> = round_trip(&json);
    assert_eq!(m[0].state, MemberState::Alive);
    assert_eq!(m[0].actor.as_ref().map(ActorId::as_str), Some(ACTOR));
    assert_eq!(m[1].addr.to_string(), "[::1]:7401");
    assert_eq!(m[1].state, MemberState::Suspect);
    // A state added later, and a field added later.
    let m: Vec<Member> = serde_json::from_str(
        r#"[{"name":"n3","addr":"10.0.0.3:7400","region":null,"state":"draining","incarnation":1,"rtt_ms":null,"zone":"b"}]"#,
    )
    .unwrap();
    assert_eq!(m[0].state, MemberState::Other("draining".into()));
    assert_eq!(m[0].state.to_string(), "draining");
    assert_eq!(m[0].actor, None);
}

#[test]
fn status() {
    let json = format!(
        concat!(
            r#"{{"name":"n1","actor":"{a}","db_version":12,"version_vector":{{"{a}":12}},"complete_through":{{"{a}":11}},"#,
            r#""peers":[{{"addr":"10.0.0.2:7400","name":"n2","state":"alive","behind_versions":0,"last_sync_secs_ago":1.5,"sync_age_secs":1.5,"rtt_ms":0.3,"region":"eu"}},"#,
            r#"{{"addr":"10.0.0.3:7400","name":null,"state":"unreachable","behind_versions":4,"last_sync_secs_ago":null,"sync_age_secs":30.0,"rtt_ms":null,"region":null}}],"#,
            r#""writers":[{{"actor":"{a}","name":"n1","addr":null,"reachable":true,"lag_secs":0.0,"head":12,"missing_versions":1,"region":"us"}}],"#,
            r#""max_lag_secs":0.0,"quarantined":[{{"actor":"{a}","version":3,"rows":2,"error":"no such column: z","since_secs":4.25,"attempts":3}}],"#,
            r#""members_reachable":2,"members_known":3,"broadcast_queue":0,"broadcast_dropped":0,"changes_applied":40,"#,
            r#""transactions_committed":7,"commit_groups":3,"apply_transactions":30,"broadcasts_known":2,"#,
            r#""broadcasts_withheld":1,"placement_rows_refused":0,"rows_not_carried":0,"tombstones_collected":0,"collection_held_back":null,"needs_snapshot":null,"snapshot_catch_up":null,"placement_mismatch":[],"placement":{{"eu_users":["eu"]}},"#,
            r#""syncs_completed":9,"syncs_failed":1,"apply_failures":0,"serve_failures":0,"write_error":null,"partial_versions":0,"#,
            r#""region":"us","regions":[{{"region":"eu","members":1,"reachable":1,"max_lag_secs":0.5,"reachable_max_lag_secs":0.5,"nearest_rtt_ms":0.3,"bytes_sent":5120}},"#,
            r#"{{"region":"us","members":1,"reachable":1,"max_lag_secs":0.0,"reachable_max_lag_secs":0.0,"nearest_rtt_ms":null,"bytes_sent":0}}]}}"#
        ),
        a = ACTOR
    );
    let s: Status = round_trip(&json);
    assert_eq!(s.regions[0].region.as_deref(), Some("eu"));
    assert_eq!(s.peers[0].region.as_deref(), Some("eu"));
    // An agent from before regions: the fields default.
    let old = json
        .replace(r#","region":"eu""#, "")
        .replace(r#","region":null"#, "")
        .replace(r#","region":"us""#, "");
    let old = &old[..old.find(r#","regions""#).unwrap()];
    let o: Status = serde_json::from_str(&format!("{old}}}")).unwrap();
    assert!(o.regions.is_empty() && o.region.is_none() && o.peers[0].region.is_none());
    assert_eq!(s.complete_through.get(ACTOR), Some(&11));
    assert_eq!(s.peers[1].state, MemberState::Unreachable);
    assert!(s.writers[0].reachable);
    assert_eq!(s.quarantined[0].rows, 2);
    assert_eq!(s.write_error, None);
    assert_eq!((s.transactions_committed, s.commit_groups), (7, 3));
    // Fields added later are ignored.
    let more = json.replacen('{', r#"{"uptime_secs":5,"#, 1);
    assert_eq!(serde_json::from_str::<Status>(&more).unwrap(), s);
    // An agent older than the group-commit counters: they read as 0.
    let older = json.replace(
        r#""transactions_committed":7,"commit_groups":3,"apply_transactions":30,"broadcasts_known":2,"#,
        "",
    );
    let o: Status = serde_json::from_str(&older).unwrap();
    assert_eq!((o.transactions_committed, o.commit_groups), (0, 0));
    assert_eq!(s.placement["eu_users"], ["eu"]);
    // An agent from before table placement: no pinned tables.
    let o: Status = serde_json::from_str(&json.replace(
        r#""broadcasts_withheld":1,"placement_rows_refused":0,"rows_not_carried":0,"tombstones_collected":0,"collection_held_back":null,"needs_snapshot":null,"snapshot_catch_up":null,"placement_mismatch":[],"placement":{"eu_users":["eu"]},"#,
        "",
    ))
    .unwrap();
    assert!(o.placement.is_empty() && o.broadcasts_withheld == 0);
}

#[test]
fn health() {
    let ok: Health = round_trip(r#"{"db_version":12,"name":"n1","status":"ok"}"#);
    assert!(ok.is_healthy() && ok.issues.is_empty());
    let bad: Health = round_trip(
        r#"{"error":"cut off: reaches 1 of the 3 members; 2 version(s) quarantined","issues":[{"kind":"cut_off","message":"cut off: reaches 1 of the 3 members"},{"kind":"quarantined","message":"2 version(s) quarantined"}],"name":"n1","status":"unhealthy"}"#,
    );
    assert!(!bad.is_healthy());
    assert_eq!(bad.status, HealthStatus::Unhealthy);
    let kinds: Vec<&HealthIssueKind> = bad.issues.iter().map(|i| &i.kind).collect();
    assert_eq!(
        kinds,
        [&HealthIssueKind::CutOff, &HealthIssueKind::Quarantined]
    );
    // Kinds and verdicts added later.
    let later: Health = serde_json::from_str(
        r#"{"status":"degraded","name":"n1","issues":[{"kind":"disk_low","message":"5% free"}]}"#,
    )
    .unwrap();
    assert_eq!(later.status, HealthStatus::Other("degraded".into()));
    assert_eq!(
        later.issues[0].kind,
        HealthIssueKind::Other("disk_low".into())
    );
    assert!(!later.is_healthy());
    // Every kind the agent knows.
    for k in [
        "lagging",
        "behind",
        "cut_off",
        "quarantined",
        "apply_failing",
        "serve_failing",
        "cannot_write",
        "file_gone",
        "shutting_down",
    ] {
        let kind = HealthIssueKind::from(k);
        assert!(!matches!(kind, HealthIssueKind::Other(_)), "{k}");
        assert_eq!(kind.as_str(), k);
    }
}

#[test]
fn retry_and_errors() {
    let r: RetryResult = round_trip(r#"{"applied":2,"still_failing":1}"#);
    assert_eq!((r.applied, r.still_failing), (2, 1));
    let e: ErrorBody = round_trip(r#"{"error":"no such table: nope"}"#);
    assert_eq!(e.error, "no such table: nope");
}

#[test]
fn query_events() {
    let cols: QueryEvent = round_trip(r#"{"columns":["id","qty"]}"#);
    assert_eq!(cols, QueryEvent::Columns(vec!["id".into(), "qty".into()]));
    let row: QueryEvent = round_trip(r#"{"row":[3,["x",2,1.5,null,{"blob":"AQI="}]]}"#);
    assert_eq!(
        row,
        QueryEvent::Row(
            3,
            vec![
                Value::Text("x".into()),
                Value::Integer(2),
                Value::Real(1.5),
                Value::Null,
                Value::Blob(vec![1, 2]),
            ]
        )
    );
    let end: QueryEvent = round_trip(r#"{"eoq":{"time":0.003}}"#);
    assert_eq!(
        end,
        QueryEvent::Eoq(EndOfQuery {
            time: 0.003,
            served_by: None
        })
    );
    let err: QueryEvent = round_trip(r#"{"error":"interrupted: more than 10 rows"}"#);
    assert_eq!(
        err,
        QueryEvent::Error("interrupted: more than 10 rows".into())
    );
    let unknown: QueryEvent = serde_json::from_str(r#"{"progress":1}"#).unwrap();
    assert_eq!(unknown, QueryEvent::Unknown);
}

#[test]
fn values() {
    for (v, json) in [
        (Value::Null, "null"),
        (Value::Integer(-7), "-7"),
        (Value::Integer(i64::MAX), "9223372036854775807"),
        (Value::Real(1.0), "1.0"),
        (Value::Real(1e20), "1e+20"),
        (Value::Text("é\"\n".into()), r#""é\"\n""#),
        (Value::Blob(vec![0, 1, 255]), r#"{"blob":"AAH/"}"#),
    ] {
        assert_eq!(serde_json::to_string(&v).unwrap(), json);
        assert_eq!(serde_json::from_str::<Value>(json).unwrap(), v, "{json}");
        assert_eq!(serde_json::Value::from(&v).to_string(), json);
    }
    assert_eq!(
        serde_json::to_string(&Value::Real(f64::NAN)).unwrap(),
        "null"
    );
    assert_eq!(
        serde_json::from_str::<Value>("true").unwrap(),
        Value::Integer(1)
    );
    for bad in [
        "18446744073709551615",
        r#"{"blob":"!!"}"#,
        r#"{"blob":"AA==","x":1}"#,
        r#"{"text":"a"}"#,
        "[1]",
    ] {
        assert!(serde_json::from_str::<Value>(bad).is_err(), "{bad}");
    }
    assert_eq!(Value::Integer(3).as_u64(), Some(3));
    assert_eq!(Value::Integer(-3).as_u64(), None);
    assert_eq!(Value::Real(3.0).as_u64(), None);
    assert_eq!(Value::from(Some("a")), Value::Text("a".into()));
    assert_eq!(Value::from(None::<i64>), Value::Null);
}

#[test]
fn statements() {
    let s = [
        Statement::new("SELECT 1"),
        Statement::new("INSERT INTO t VALUES (?, ?, ?)")
            .bind("a")
            .bind(1)
            .bind(vec![9u8]),
    ];
    assert_eq!(
        serde_json::to_string(&s).unwrap(),
        r#"["SELECT 1",["INSERT INTO t VALUES (?, ?, ?)",["a",1,{"blob":"CQ=="}]]]"#
    );
}
