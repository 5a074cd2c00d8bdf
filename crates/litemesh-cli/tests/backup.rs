//! `litemesh backup` and `litemesh restore` with real agent processes: a
//! node restored from an online backup while the rest of the mesh keeps
//! writing.

mod common;

use common::*;
use serde_json::{Value as Json, json};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn status(api: &str) -> Json {
    let (_, body) = get(api, "/v1/status");
    serde_json::from_str(&body).unwrap_or(Json::Null)
}

fn count(api: &str) -> i64 {
    scalar(api, "SELECT count(*) FROM items")
}

fn write(api: &str, id: &str) {
    exec(
        api,
        json!([[format!("INSERT INTO items (id, qty) VALUES ('{id}', 1)")]]),
    );
}

#[test]
fn a_node_restored_from_an_online_backup_rejoins_as_a_new_node_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sc = schema(d);
    let start = |n: &str, seed: Option<&str>| {
        let extra: Vec<&str> = seed.map(|s| vec!["--seed", s]).unwrap_or_default();
        named_insecure_agent(d, n, &sc, &extra)
    };
    // A crashed run of n1 left the temporary copy of a backup beside its
    // file: removed at start (another node's is left alone).
    let stale = d.join(".litemesh-backup-n1.db-crash");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("backup.db"), b"a whole copy").unwrap();
    let others = d.join(".litemesh-backup-other.db-x");
    std::fs::create_dir(&others).unwrap();
    let n1 = start("n1", None);
    assert!(!stale.exists(), "a stale backup copy left at start");
    assert!(others.exists());
    let mut n2 = start("n2", Some(&n1.listen));
    let n3 = start("n3", Some(&n1.listen));
    for i in 0..20 {
        for (a, n) in [(&n1, "n1"), (&n2, "n2"), (&n3, "n3")] {
            write(&a.api, &format!("{n}-before-{i}"));
        }
    }
    eventually(20, "60 rows everywhere", || {
        [&n1, &n2, &n3].iter().all(|a| count(&a.api) == 60)
    });

    // An online backup of n2, through its agent.
    let backup = d.join("n2-backup.db");
    let o = run(&["backup", "--api", &n2.api, "--out", &s(&backup)]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("backup of"), "{}", text(&o.stdout));
    // Refused over an existing file; a wrong address fails cleanly.
    let o = run(&["backup", "--api", &n2.api, "--out", &s(&backup)]);
    assert!(!o.status.success());
    let o = run(&[
        "backup",
        "--api",
        "127.0.0.1:1",
        "--out",
        &s(&d.join("x.db")),
    ]);
    assert!(!o.status.success());
    assert!(!d.join("x.db").exists() && !d.join("x.db.part").exists());

    // n2 writes on after the backup: those writes are in no backup, only
    // on n2 and its peers.
    for i in 0..10 {
        write(&n2.api, &format!("n2-after-{i}"));
    }
    let old_actor = status(&n2.api)["actor"].as_str().unwrap().to_string();
    eventually(20, "n2's late writes on n1", || count(&n1.api) == 70);
    // n2 is lost.
    n2.terminate();
    for ext in ["", "-wal", "-shm", "-clean"] {
        let _ = std::fs::remove_file(d.join(format!("n2.db{ext}")));
    }
    // The mesh writes on.
    for i in 0..10 {
        write(&n1.api, &format!("n1-during-{i}"));
        write(&n3.api, &format!("n3-during-{i}"));
    }

    // Restore: refused over an existing file, then made where n2 was.
    let o = run(&["restore", &s(&backup), "--db", &s(&d.join("n1.db"))]);
    assert!(!o.status.success(), "restored over a live node's file");
    let o = run(&["restore", &s(&backup), "--db", &s(&d.join("n2.db"))]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains(&old_actor), "{}", text(&o.stdout));
    let n2 = start("n2", Some(&n1.listen));
    let st = status(&n2.api);
    let new_actor = st["actor"].as_str().unwrap().to_string();
    assert_ne!(
        new_actor, old_actor,
        "a restored node writes as a new actor"
    );
    // It did not move to yet another actor at its first start (the restore
    // made a file that counts as cleanly stopped).
    let log = std::fs::read_to_string(&n2.stderr_path).unwrap_or_default();
    assert!(!log.contains("did not end with a clean shutdown"), "{log}");
    // The mesh keeps writing while it catches up; it writes too.
    for i in 0..10 {
        write(&n1.api, &format!("n1-after-{i}"));
        write(&n2.api, &format!("n2-new-{i}"));
        write(&n3.api, &format!("n3-after-{i}"));
    }
    // Everything, everywhere: the backup's rows, n2's writes made after
    // the backup (back from its peers), the mesh's writes meanwhile, and
    // the restored node's new writes.
    let total = 60 + 10 + 20 + 30;
    eventually(30, "every row on every node", || {
        [&n1, &n2, &n3].iter().all(|a| count(&a.api) == total)
    });
    for a in [&n1, &n2, &n3] {
        assert_eq!(
            scalar(
                &a.api,
                "SELECT count(*) FROM items WHERE id LIKE 'n2-after-%'"
            ),
            10
        );
    }
    // n1 knows both actors, and the old one's versions were never reused:
    // nobody is missing anything.
    eventually(20, "no versions missing anywhere", || {
        [&n1, &n2, &n3].iter().all(|a| {
            status(&a.api)["writers"]
                .as_array()
                .is_some_and(|w| w.iter().all(|w| w["missing_versions"] == 0))
        })
    });
    let vv = status(&n1.api)["version_vector"].clone();
    assert!(
        vv.get(&old_actor).is_some() && vv.get(&new_actor).is_some(),
        "{vv}"
    );
    // What the nodes keep: every row, and a tombstone per deleted row
    // (nothing is collected yet), every version servable.
    exec(
        &n1.api,
        json!([["DELETE FROM items WHERE id LIKE 'n1-before-1%'"]]),
    );
    eventually(20, "the tombstones on n3", || {
        let (_, body) = get(&n3.api, "/v1/retention");
        let r: Json = serde_json::from_str(&body).unwrap_or(Json::Null);
        r["metadata"]["tables"][0]["tombstones"] == 11
            && r["metadata"]["tables"][0]["rows"] == total - 11
    });
    let (_, body) = get(&n3.api, "/v1/retention");
    let r: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(r["policy_secs"], Json::Null, "{body}");
    assert!(
        r["writers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["oldest_servable"] == 1),
        "{body}"
    );
    assert!(r["metadata"]["file_bytes"].as_u64().unwrap() > 0, "{body}");
    let o = run(&["retention", "--api", &n3.api]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        out.contains("keep every tombstone") && out.contains("tombstones") && out.contains("items"),
        "{out}"
    );
    // A file that is not a litemesh node is refused.
    let junk = d.join("junk.db");
    std::fs::write(&junk, b"not a database").unwrap();
    let o = run(&["restore", &s(&junk), "--db", &s(&d.join("j.db"))]);
    assert!(!o.status.success());
    assert!(!d.join("j.db").exists());
}
