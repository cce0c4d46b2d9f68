//! The database file is the configured one (SPEC §4.7). On SQLite, a file removed or replaced
//! at `database.url` while serving (an operator's mistake, a restore), or its WAL deleted,
//! leaves our open connections writing into a file nobody will read again: every 201 after it
//! would be lost at the next start. So the file's identity (device and inode) is taken when the
//! server starts, and checked before each registration batch and by readiness: two `stat`s.
//! A WAL that is missing or changed is confirmed by looking for a file of ours that was
//! deleted under us in `/proc/self/fd` (Linux), a rare and slower path.
//!
//! A mismatch is sticky: readiness 503, registrations 503, one log line at error naming the
//! path, `signup_database_file_ok` 0, until the right file is back: the server then reopens it
//! by itself (see [`DbFile::replacement_ready`] and `startup`), or is restarted.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use sea_orm::DatabaseConnection;

/// A file's identity.
type Identity = (u64, u64);

fn identity(path: &Path) -> Option<Identity> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// What went wrong with the file.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the database file {path} was {what} while the server had it open; restart the server on the right file (nothing written since is stored there)"
)]
pub(crate) struct Mismatch {
    pub path: String,
    pub what: &'static str,
}

/// The SQLite file the server opened, and whether it is still the one at its path.
#[derive(Debug)]
pub(crate) struct DbFile {
    path: PathBuf,
    wal: PathBuf,
    main: Identity,
    /// The WAL as last seen (it appears after the first connection opens the database).
    wal_seen: Mutex<Option<Identity>>,
    broken: AtomicBool,
    /// The server key (`csrf`) of the database opened: a file put back at the path is the right
    /// one only if it holds the same key (a restore of this database, not a new one).
    key: Mutex<Option<Vec<u8>>>,
}

impl DbFile {
    /// The file behind `db`, as it is now; None on PostgreSQL or an in-memory database.
    pub(crate) fn of(db: &DatabaseConnection) -> Option<Self> {
        if crate::database::is_postgres(db) {
            return None;
        }
        let options = db.get_sqlite_connection_pool().connect_options();
        let path = options.get_filename().to_path_buf();
        let main = identity(&path)?;
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        Some(Self {
            wal_seen: Mutex::new(identity(&wal)),
            path,
            wal,
            main,
            broken: AtomicBool::new(false),
            key: Mutex::new(None),
        })
    }

    /// Remembers the database's server key, by which a restored file is recognised.
    pub(crate) fn remember_key(&self, key: Vec<u8>) {
        *self.key.lock().unwrap_or_else(|e| e.into_inner()) = Some(key);
    }

    /// After a mismatch: whether a file is back at the path that may be opened in its place,
    /// this database (the same server key), whole (`PRAGMA quick_check`). Read-only: it
    /// creates nothing.
    pub(crate) async fn replacement_ready(&self) -> bool {
        use sea_orm::sqlx::{Connection, sqlite::SqliteConnectOptions};
        if !self.broken.load(Ordering::Acquire) || !self.path.exists() {
            return false;
        }
        let Some(key) = self.key.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return false;
        };
        let options = SqliteConnectOptions::new()
            .filename(&self.path)
            .read_only(true);
        let Ok(mut conn) = sea_orm::sqlx::SqliteConnection::connect_with(&options).await else {
            return false;
        };
        let whole = sea_orm::sqlx::query_scalar::<_, String>("PRAGMA quick_check")
            .fetch_one(&mut conn)
            .await
            .is_ok_and(|answer| answer == "ok");
        let same = sea_orm::sqlx::query_scalar::<_, Vec<u8>>(
            "SELECT secret FROM server_keys WHERE name = 'csrf'",
        )
        .fetch_one(&mut conn)
        .await
        .is_ok_and(|found| found == key);
        let _ = conn.close().await;
        if whole && !same {
            tracing::warn!(path = %self.path.display(), "a database file is back at the path, but not this database (another server key, or none): not opened");
        }
        whole && same
    }

    /// Ok while the file at the path is the one opened and its WAL is the one in use.
    pub(crate) fn check(&self) -> Result<(), Mismatch> {
        if self.broken.load(Ordering::Acquire) {
            return Err(self.mismatch("removed, replaced or its WAL deleted"));
        }
        let what = match identity(&self.path) {
            None => Some("removed"),
            Some(now) if now != self.main => Some("replaced"),
            Some(_) => self
                .wal_changed()
                .then_some("left without its WAL (deleted)"),
        };
        match what {
            None => Ok(()),
            Some(what) => {
                if !self.broken.swap(true, Ordering::AcqRel) {
                    tracing::error!(path = %self.path.display(), what, "the database file is not the one the server opened: registrations and readiness answer 503 until the server is restarted on the right file");
                }
                Err(self.mismatch(what))
            }
        }
    }

    fn mismatch(&self, what: &'static str) -> Mismatch {
        Mismatch {
            path: self.path.display().to_string(),
            what,
        }
    }

    /// Whether the WAL we write into is gone from its path. A WAL that appears for the first
    /// time, or is recreated by SQLite after every connection closed, is taken as the new one
    /// unless a file descriptor of ours still points at a deleted WAL.
    fn wal_changed(&self) -> bool {
        let now = identity(&self.wal);
        let mut seen = self.wal_seen.lock().unwrap_or_else(|e| e.into_inner());
        if now.is_some() && now == *seen {
            return false;
        }
        if writing_into_deleted(&self.wal) {
            return true;
        }
        *seen = now;
        false
    }
}

/// Whether this process holds `path` open although it was deleted (Linux: `/proc/self/fd`
/// links read "<path> (deleted)"). Elsewhere: whether the path is missing.
fn writing_into_deleted(path: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return !path.exists();
    };
    let deleted = format!("{} (deleted)", path.display());
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == deleted.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::ConnectionTrait;

    /// A migrated SQLite database at `dir/name` with its `csrf` server key.
    async fn database(dir: &Path, name: &str) -> (DatabaseConnection, Vec<u8>) {
        let settings = crate::configuration::DatabaseSettings {
            url: format!("sqlite://{}", dir.join(name).display()).into(),
            ..Default::default()
        };
        let db = crate::database::connect(&settings).await.expect("opens");
        crate::database::migrate(&db).await.expect("migrates");
        let key = crate::outbox::load_or_create_server_key(&db, "csrf")
            .await
            .expect("a key");
        (db, key)
    }

    /// Only this database, whole, is taken back at the path: nothing there, an empty file (a
    /// connection may create one), a torn copy and another server's database never are, so
    /// the server keeps answering 503 however often it looks (SPEC §4.7).
    #[tokio::test]
    async fn only_this_database_put_back_whole_is_ready_to_be_reopened() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (db, key) = database(dir.path(), "signup.db").await;
        let file = DbFile::of(&db).expect("a file");
        file.remember_key(key);
        let path = dir.path().join("signup.db");
        let backup = dir.path().join("backup.db");
        db.execute_unprepared(&format!("VACUUM INTO '{}'", backup.display()))
            .await
            .expect("a backup");
        assert!(!file.replacement_ready().await, "nothing is broken yet");

        for suffix in ["", "-wal", "-shm"] {
            let mut gone = path.clone().into_os_string();
            gone.push(suffix);
            let _ = std::fs::remove_file(&gone);
        }
        assert!(file.check().is_err(), "the removal is seen");
        assert!(!file.replacement_ready().await, "nothing at the path");

        std::fs::write(&path, b"").expect("an empty file");
        assert!(!file.replacement_ready().await, "an empty file");

        let whole = std::fs::read(&backup).expect("the backup");
        std::fs::write(&path, &whole[..whole.len() / 2]).expect("half a copy");
        assert!(!file.replacement_ready().await, "a torn copy");

        std::fs::remove_file(&path).expect("removed");
        let (other, _) = database(dir.path(), "other.db").await;
        other.close().await.expect("closed");
        std::fs::copy(dir.path().join("other.db"), &path).expect("another database");
        assert!(!file.replacement_ready().await, "another server's database");

        std::fs::copy(&backup, &path).expect("the backup put back");
        assert!(file.replacement_ready().await, "this database, whole");
    }

    #[test]
    fn a_deleted_file_still_open_is_seen_in_proc() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("x-wal");
        let file = std::fs::File::create(&path).expect("created");
        assert!(!writing_into_deleted(&path));
        std::fs::remove_file(&path).expect("removed");
        assert!(writing_into_deleted(&path));
        drop(file);
        assert!(!writing_into_deleted(&path) || !Path::new("/proc/self/fd").exists());
    }
}
