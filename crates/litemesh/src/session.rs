//! One node per file, and never a reused version.
//!
//! - **The file lock.** A node holds an exclusive `flock` on its database
//!   file itself for as long as it runs. The lock belongs to the file (its
//!   inode), not to a name: a second node reaching the same file through a
//!   hard link, a symbolic link or another relative path is refused. (Two
//!   processes on one file through two names would also use two WAL files,
//!   which corrupts it.) SQLite's own locks are `fcntl` locks, which `flock`
//!   does not interfere with.
//! - **Clean shutdowns.** A graceful shutdown writes a random marker into the
//!   file and the same marker, with the file's device and inode, into a
//!   sidecar file `<db>-clean`. At the next start the node keeps its actor id
//!   only if both agree and name this very file; otherwise (a crash, a
//!   deleted WAL, a restored backup, a copied or moved file) it moves to a new
//!   actor id before it accepts any write. The versions its file lost — which
//!   peers may hold — then belong to an actor that no longer writes, and come
//!   back by ordinary anti-entropy; nothing is ever numbered twice.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use litemesh_storage::Store;

use crate::error::Error;

/// Holds the node's exclusive lock on its database file while alive.
#[derive(Debug)]
pub(crate) struct FileLock {
    file: File,
}

impl FileLock {
    /// Whether `path` still names the file this lock holds (it was not
    /// removed, or replaced by another file, under the running node).
    pub(crate) fn names(&self, path: &Path) -> bool {
        match (self.file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
}

/// Takes the exclusive lock on the database file (creating it if missing).
pub(crate) fn lock(db: &Path) -> Result<FileLock, Error> {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(db)
        .map_err(|e| Error::Settings(format!("cannot open {}: {e}", db.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(FileLock { file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::InUse(db.display().to_string())),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::Settings(format!(
            "cannot lock {}: {e}",
            db.display()
        ))),
    }
}

fn sidecar(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-clean");
    PathBuf::from(p)
}

fn identity(db: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(db).ok().map(|m| (m.dev(), m.ino()))
}

/// How a start went.
#[derive(Debug)]
pub(crate) struct Begun {
    /// The last run ended with a clean shutdown of this very file, and the
    /// actor id was kept.
    pub kept: bool,
}

/// At start, before any write: keeps the actor id only if the last run ended
/// with a clean shutdown of this very file; else moves to a new one (unless
/// this start created the file). Then clears the marker, so that a crash from here
/// on is detected.
pub(crate) fn begin(store: &mut Store, db: &Path) -> Result<Begun, Error> {
    let marker = store.clean_marker()?;
    let expected = std::fs::read_to_string(sidecar(db)).ok();
    let clean = match (&marker, expected, identity(db)) {
        (Some(m), Some(text), Some((dev, ino))) => text.trim() == format!("{} {dev} {ino}", hex(m)),
        _ => false,
    };
    // Whether the actor wrote anything is read from the file — which, after
    // a lost WAL, may have lost every one of its writes: so any start that is
    // not clean moves to a new actor id.
    let wrote = store.db_version()? > 0;
    // A file this start created has a new actor id that never wrote.
    if !clean && !store.created() {
        let old = store.actor_id();
        let new = store.rotate_actor()?;
        tracing::warn!(
            old = %old,
            new = %new,
            "the last run did not end with a clean shutdown of this file (a crash, a lost WAL, \
             a restored or copied file): local writes now go under a new actor id, so that no \
             version number is ever reused; the old actor's versions stay and replicate as before"
        );
    }
    if marker.is_some() {
        store.set_clean_marker(None)?;
    }
    let _ = std::fs::remove_file(sidecar(db));
    Ok(Begun {
        kept: clean && wrote,
    })
}

/// Makes the node file `db` from the backup `from` with a new identity (a
/// new node and a new actor; see [`litemesh_storage::restore`]), ready to
/// start as it is: it counts as cleanly stopped, so its first start keeps
/// the new actor — unless the file is copied or moved first, which moves
/// it to yet another actor, as for any file.
pub fn restore(from: &Path, db: &Path) -> Result<litemesh_storage::Restored, Error> {
    let r = litemesh_storage::restore(from, db)?;
    let mut store = Store::open(db)?;
    end_clean(&mut store, db)?;
    Ok(r)
}

/// Writes a consistent copy of the node file `db` to `out` while the node
/// runs (blocking; see [`litemesh_storage::backup`]). [`crate::Node::backup`]
/// does the same from async code.
pub fn backup_file(db: &Path, out: &Path) -> Result<u64, Error> {
    Ok(litemesh_storage::backup(db, out)?)
}

/// At the end of a graceful shutdown, when nothing writes any more.
pub(crate) fn end_clean(store: &mut Store, db: &Path) -> Result<(), Error> {
    let marker: [u8; 16] = rand::random();
    store.set_clean_marker(Some(&marker))?;
    let Some((dev, ino)) = identity(db) else {
        return Ok(());
    };
    let path = sidecar(db);
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp)
        .map_err(|e| Error::Settings(format!("cannot write {}: {e}", tmp.display())))?;
    writeln!(f, "{} {dev} {ino}", hex(&marker))
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::Settings(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| Error::Settings(format!("cannot write {}: {e}", path.display())))?;
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
