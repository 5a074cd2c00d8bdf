//! Storage benchmark: litemesh's replicated tables against plain SQLite, side by
//! side in one run, on 100,000 rows of `items(id TEXT PRIMARY KEY, a INTEGER,
//! b TEXT, c REAL)` with random ids, one transaction per phase, medians of
//! several runs.
//!
//! Both sides use the same pragmas (WAL, `synchronous = FULL`, 64 MiB page
//! cache), the defaults of a litemesh store.
//!
//! Run: `cargo bench -p litemesh-storage --bench storage` (add `-- --runs N
//! --rows N` to change the defaults). The last four lines are the figures.

use std::path::Path;
use std::time::{Duration, Instant};

use litemesh_storage::{ChangeBatch, Knowledge, Store};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SCHEMA: &str = "CREATE TABLE items (id TEXT PRIMARY KEY, a INTEGER, b TEXT, c REAL)";

struct Row {
    id: String,
    a: i64,
    b: String,
    c: f64,
}

fn rows(n: usize, seed: u64) -> Vec<Row> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| Row {
            id: format!("{:016x}", rng.random::<u64>()),
            a: rng.random_range(0..1_000_000),
            b: (0..16)
                .map(|_| rng.random_range(b'a'..=b'z') as char)
                .collect(),
            c: rng.random::<f64>() * 1000.0,
        })
        .collect()
}

fn insert_all(conn: &rusqlite::Connection, rows: &[Row]) -> rusqlite::Result<()> {
    let mut st = conn.prepare_cached("INSERT INTO items (id, a, b, c) VALUES (?1, ?2, ?3, ?4)")?;
    for r in rows {
        st.execute((&r.id, r.a, &r.b, r.c))?;
    }
    Ok(())
}

fn update_tenth(conn: &rusqlite::Connection, rows: &[Row]) -> rusqlite::Result<usize> {
    let mut st = conn.prepare_cached("UPDATE items SET a = a + 1 WHERE id = ?1")?;
    let mut n = 0;
    for r in rows.iter().step_by(10) {
        n += st.execute([&r.id])?;
    }
    Ok(n)
}

fn file_size(path: &Path) -> u64 {
    let wal = path.with_extension("db-wal");
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
}

fn checkpoint(conn: &rusqlite::Connection) {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
}

fn extract(from: &Store, theirs: &Knowledge) -> Vec<ChangeBatch> {
    let mut out = Vec::new();
    from.changes_since(theirs, 256 * 1024, |b| {
        out.push(b);
        Ok(true)
    })
    .unwrap();
    out
}

#[derive(Default)]
struct Samples {
    plain_insert: Vec<Duration>,
    repl_insert: Vec<Duration>,
    plain_size: Vec<u64>,
    repl_size: Vec<u64>,
    full_extract: Vec<Duration>,
    full_apply: Vec<Duration>,
    full_cells: Vec<usize>,
    plain_update: Vec<Duration>,
    repl_update: Vec<Duration>,
    delta_e2e: Vec<Duration>,
    delta_extract: Vec<Duration>,
    delta_cells: Vec<usize>,
}

fn median<T: Copy + PartialOrd>(v: &[T]) -> T {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[s.len() / 2]
}

fn run(n: usize, seed: u64, s: &mut Samples, insert_only: bool) {
    let dir = tempfile::tempdir().unwrap();
    let data = rows(n, seed);

    // Plain SQLite, same pragmas as a litemesh store.
    let plain_path = dir.path().join("plain.db");
    let plain = rusqlite::Connection::open(&plain_path).unwrap();
    plain
        .execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -65536;",
        )
        .unwrap();
    plain.execute_batch(SCHEMA).unwrap();
    let t = Instant::now();
    let tx = plain.unchecked_transaction().unwrap();
    insert_all(&tx, &data).unwrap();
    tx.commit().unwrap();
    s.plain_insert.push(t.elapsed());
    checkpoint(&plain);
    s.plain_size.push(file_size(&plain_path));

    // Replicated.
    let a_path = dir.path().join("a.db");
    let mut a = Store::open(&a_path).unwrap();
    a.apply_schema(SCHEMA).unwrap();
    let t = Instant::now();
    a.transaction(|tx| Ok(insert_all(tx, &data)?)).unwrap();
    s.repl_insert.push(t.elapsed());
    checkpoint(a.connection());
    s.repl_size.push(file_size(&a_path));
    // LITEMESH_BENCH_KEEP=DIR keeps both files, to look inside them.
    if let Some(keep) = std::env::var_os("LITEMESH_BENCH_KEEP") {
        let keep = Path::new(&keep);
        std::fs::create_dir_all(keep).unwrap();
        std::fs::copy(&plain_path, keep.join("plain.db")).unwrap();
        std::fs::copy(&a_path, keep.join("litemesh.db")).unwrap();
    }
    if insert_only {
        return;
    }

    // Full merge into an empty replica.
    let mut b = Store::open(dir.path().join("b.db")).unwrap();
    b.apply_schema(SCHEMA).unwrap();
    let t = Instant::now();
    let batches = extract(&a, &b.knowledge().unwrap());
    s.full_extract.push(t.elapsed());
    let cells: usize = batches.iter().map(ChangeBatch::cell_count).sum();
    let t = Instant::now();
    b.apply_all(&batches).unwrap();
    s.full_apply.push(t.elapsed());
    s.full_cells.push(cells);

    // Update one column of 10% of rows; then extract and apply the delta.
    let t = Instant::now();
    let tx = plain.unchecked_transaction().unwrap();
    update_tenth(&tx, &data).unwrap();
    tx.commit().unwrap();
    s.plain_update.push(t.elapsed());
    let t = Instant::now();
    a.transaction(|tx| Ok(update_tenth(tx, &data)?)).unwrap();
    s.repl_update.push(t.elapsed());
    let t = Instant::now();
    let batches = extract(&a, &b.knowledge().unwrap());
    s.delta_extract.push(t.elapsed());
    let cells: usize = batches.iter().map(ChangeBatch::cell_count).sum();
    b.apply_all(&batches).unwrap();
    s.delta_e2e.push(t.elapsed());
    s.delta_cells.push(cells);
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runs = arg("--runs", 5);
    let n = arg("--rows", 100_000);
    let insert_only = std::env::args().any(|a| a == "--insert-only");
    let mut s = Samples::default();
    for i in 0..runs {
        run(n, i as u64 + 1, &mut s, insert_only);
        eprintln!("run {}/{runs} done", i + 1);
    }
    if insert_only {
        let ratios: Vec<f64> = s
            .plain_insert
            .iter()
            .zip(&s.repl_insert)
            .map(|(p, r)| r.as_secs_f64() / p.as_secs_f64())
            .collect();
        println!("insert ratios: {ratios:.2?}");
        println!("insert_overhead_x: {:.2}", median(&ratios));
        return;
    }
    let secs = |d: Duration| d.as_secs_f64();
    let plain_ins = secs(median(&s.plain_insert));
    let repl_ins = secs(median(&s.repl_insert));
    let insert_x = median(
        &s.plain_insert
            .iter()
            .zip(&s.repl_insert)
            .map(|(p, r)| secs(*r) / secs(*p))
            .collect::<Vec<_>>(),
    );
    let size_x = median(
        &s.plain_size
            .iter()
            .zip(&s.repl_size)
            .map(|(p, r)| *r as f64 / *p as f64)
            .collect::<Vec<_>>(),
    );
    let full_rate = median(
        &s.full_apply
            .iter()
            .zip(&s.full_cells)
            .map(|(d, c)| *c as f64 / secs(*d))
            .collect::<Vec<_>>(),
    );
    let extract_rate = median(
        &s.full_extract
            .iter()
            .zip(&s.full_cells)
            .map(|(d, c)| *c as f64 / secs(*d))
            .collect::<Vec<_>>(),
    );
    let delta_rate = median(
        &s.delta_e2e
            .iter()
            .zip(&s.delta_cells)
            .map(|(d, c)| *c as f64 / secs(*d))
            .collect::<Vec<_>>(),
    );
    println!("litemesh-storage benchmark: {n} rows, {runs} runs, medians");
    println!("{:<44}{:>14}{:>14}", "", "plain SQLite", "litemesh");
    println!(
        "{:<44}{:>14.0}{:>14.0}",
        "insert, rows/s",
        n as f64 / plain_ins,
        n as f64 / repl_ins
    );
    println!(
        "{:<44}{:>14.0}{:>14.0}",
        "update 10% (one column), rows/s",
        (n / 10) as f64 / secs(median(&s.plain_update)),
        (n / 10) as f64 / secs(median(&s.repl_update))
    );
    println!(
        "{:<44}{:>14.1}{:>14.1}",
        "file size, MB",
        median(&s.plain_size) as f64 / 1e6,
        median(&s.repl_size) as f64 / 1e6
    );
    println!(
        "{:<44}{:>14}{:>14.0}",
        "extract all changes, cells/s", "-", extract_rate
    );
    println!(
        "{:<44}{:>14}{:>14.0}",
        "apply all into empty replica, cells/s", "-", full_rate
    );
    println!(
        "{:<44}{:>14}{:>14.0}",
        "delta extract only, cells/s",
        "-",
        median(&s.delta_cells) as f64 / secs(median(&s.delta_extract))
    );
    println!(
        "{:<44}{:>14}{:>14.0}",
        "delta extract + apply, cells/s", "-", delta_rate
    );
    println!("insert_overhead_x: {insert_x:.2}");
    println!("full_merge_cells_per_s: {full_rate:.0}");
    println!("delta_cells_per_s: {delta_rate:.0}");
    println!("file_size_x: {size_x:.2}");
}
