//! Three replicas of one SQLite schema, written while apart, then reconciled.
//!
//! `cargo run --release -p litemesh-storage --example three_replicas`
//!
//! Shows the storage engine on its own (no network): each node writes the same
//! rows concurrently, change batches are exchanged in an arbitrary order, and
//! all three end with identical tables.

use litemesh_storage::{ChangeBatch, Store};

const SCHEMA: &str = "CREATE TABLE items (id TEXT PRIMARY KEY, qty INTEGER, note TEXT)";

fn batches_for(from: &Store, to: &Store) -> Vec<ChangeBatch> {
    let theirs = to.knowledge().expect("knowledge");
    let mut out = Vec::new();
    from.changes_since(&theirs, 16 * 1024, |b| {
        out.push(b);
        Ok(true)
    })
    .expect("extract");
    out
}

fn show(name: &str, s: &Store) {
    let mut stmt = s
        .connection()
        .prepare("SELECT id, qty, coalesce(note, '') FROM items ORDER BY id")
        .expect("query");
    let rows: Vec<String> = stmt
        .query_map([], |r| {
            Ok(format!(
                "{}={}/{}",
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?
            ))
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows");
    println!(
        "  {name}: v{} [{}]",
        s.db_version().unwrap(),
        rows.join(", ")
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let mut s = Store::open(dir.path().join(format!("{name}.db")))?;
        s.apply_schema(SCHEMA)?;
        nodes.push(s);
    }
    println!("three replicas in {}", dir.path().display());

    nodes[0].execute_batch("INSERT INTO items VALUES ('apple', 5, 'from a'), ('pear', 1, NULL)")?;
    let seed = batches_for(&nodes[0], &nodes[1]);
    nodes[1].apply_all(&seed)?;
    nodes[2].apply_all(&seed)?;
    println!("after the first sync:");
    for (n, s) in ["a", "b", "c"].iter().zip(&nodes) {
        show(n, s);
    }

    // Partitioned: everyone writes the same rows.
    nodes[0].execute_batch("UPDATE items SET qty = 6 WHERE id = 'apple'")?;
    nodes[1].execute_batch("UPDATE items SET note = 'b was here' WHERE id = 'apple'; DELETE FROM items WHERE id = 'pear'")?;
    nodes[2].execute_batch("UPDATE items SET qty = 9, note = 'c' WHERE id = 'pear'; INSERT INTO items VALUES ('fig', 3, 'c')")?;
    println!("while apart:");
    for (n, s) in ["a", "b", "c"].iter().zip(&nodes) {
        show(n, s);
    }

    // Heal: exchange in an arbitrary order, with a duplicate delivery.
    let c_to_a = batches_for(&nodes[2], &nodes[0]);
    let b_to_c = batches_for(&nodes[1], &nodes[2]);
    nodes[0].apply_all(&c_to_a)?;
    nodes[2].apply_all(&b_to_c)?;
    nodes[2].apply_all(&b_to_c)?;
    for (from, to) in [(0, 1), (1, 0), (0, 2), (2, 1)] {
        let bs = batches_for(&nodes[from], &nodes[to]);
        nodes[to].apply_all(&bs)?;
    }
    println!("after healing:");
    for (n, s) in ["a", "b", "c"].iter().zip(&nodes) {
        show(n, s);
    }
    let dump = |s: &Store| -> Vec<(String, i64, Option<String>)> {
        let mut st = s
            .connection()
            .prepare("SELECT * FROM items ORDER BY id")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let same = dump(&nodes[0]) == dump(&nodes[1]) && dump(&nodes[1]) == dump(&nodes[2]);
    println!("identical on all three: {same}");
    if !same {
        std::process::exit(1);
    }
    Ok(())
}
