//! The durable token store: one JSON file holding, per upstream, the access token, the
//! refresh token, their expiries and when they were obtained, so tokens survive restarts.
//!
//! - Written atomically: a temp file (mode 0600) is written and fsynced, renamed over the
//!   store, and the directory (mode 0700) is fsynced.
//! - Written *before* a new credential is used, so a rotated single-use refresh token is
//!   never lost to a crash.
//! - Owned by one process: a daemon holds an OS lock on `<store>.lock`, which names it, so
//!   a second daemon cannot refresh the same single-use refresh token.
//! - A corrupt file is moved aside, never overwritten.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::credential::Credential;
use crate::credential::Injection;
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("token store {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("token store {path} is in use by another tokenproxy ({owner}); stop it, or give this one another [store] path")]
    Locked { path: PathBuf, owner: String },
    #[error(
        "token store {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("token store directory {path} is open to other users (mode {mode:o}) and {reason}; give the store a directory of its own, or run `chmod 700 {path}`")]
    DirectoryTooOpen {
        path: PathBuf,
        mode: u32,
        reason: String,
    },
}

/// Who holds a store: written into the lock file so others can name it and reach it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// The daemon's admin base URL, e.g. `http://127.0.0.1:8080`.
    pub admin: Option<String>,
}

/// What the file holds for one upstream. Times are Unix seconds: the monotonic clock does
/// not survive a restart.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredToken {
    /// Which auth settings produced the token; a changed config does not reuse it.
    pub fingerprint: String,
    pub access_token: String,
    pub expires_at: Option<f64>,
    pub obtained_at: f64,
    pub refresh_token: Option<String>,
    pub refresh_expires_at: Option<f64>,
}

#[derive(Default, Serialize, Deserialize)]
struct StoreFile {
    version: u32,
    upstreams: BTreeMap<String, StoredToken>,
}

pub struct Store {
    path: Option<PathBuf>,
    entries: tokio::sync::Mutex<BTreeMap<String, StoredToken>>,
    /// Held for the life of the store; the OS releases it if the process dies.
    _lock: Option<File>,
}

impl Store {
    /// Keeps nothing on disk (`path = "memory"`).
    pub fn memory() -> Store {
        Store {
            path: None,
            entries: tokio::sync::Mutex::new(BTreeMap::new()),
            _lock: None,
        }
    }

    /// Opens the store as its one owner: takes the lock, then loads the file.
    pub fn open(path: &Path, owner: &Owner) -> Result<Store, StoreError> {
        prepare_directory(path)?;
        let lock = take_lock(path, owner)?;
        let entries = load(path)?;
        Ok(Store {
            path: Some(path.to_owned()),
            entries: tokio::sync::Mutex::new(entries),
            _lock: Some(lock),
        })
    }

    /// Reads the store without owning it (status while a daemon runs). Never writes.
    pub fn read_only(path: &Path) -> Result<BTreeMap<String, StoredToken>, StoreError> {
        if !path.exists() {
            return Ok(BTreeMap::new());
        }
        let text = fs::read(path).map_err(|error| io_error(path, error))?;
        serde_json::from_slice::<StoreFile>(&text)
            .map(|file| file.upstreams)
            .map_err(|_| StoreError::Io {
                path: path.to_owned(),
                reason: "not a tokenproxy store".into(),
            })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The stored credential of `upstream`, if it was made with the same settings and is
    /// still of use (a valid access token, or a live refresh token).
    pub fn credential(
        &self,
        upstream: &str,
        fingerprint: &str,
        injection: &Injection,
    ) -> Option<Credential> {
        let entries = self.entries.try_lock().ok()?;
        let stored = entries
            .get(upstream)
            .filter(|stored| stored.fingerprint == fingerprint)?;
        restore(stored, injection)
    }

    /// Writes `credential` for `upstream` and returns once it is on disk.
    pub async fn save(
        &self,
        upstream: &str,
        fingerprint: &str,
        credential: &Credential,
    ) -> Result<(), StoreError> {
        let mut entries = self.entries.lock().await;
        entries.insert(upstream.to_owned(), stored(fingerprint, credential));
        self.write(&entries).await
    }

    /// Forgets `upstream`'s tokens, on disk too.
    pub async fn remove(&self, upstream: &str) -> Result<(), StoreError> {
        let mut entries = self.entries.lock().await;
        if entries.remove(upstream).is_some() {
            self.write(&entries).await?;
        }
        Ok(())
    }

    /// Holds the entries lock across the write, so writes land in the order they were made.
    async fn write(&self, entries: &BTreeMap<String, StoredToken>) -> Result<(), StoreError> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let file = StoreFile {
            version: 1,
            upstreams: entries.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|error| io_error(&path, error))?;
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await
            .map_err(|error| StoreError::Io {
                path: self.path.clone().unwrap_or_default(),
                reason: error.to_string(),
            })?
    }
}

fn io_error(path: &Path, error: impl std::fmt::Display) -> StoreError {
    StoreError::Io {
        path: path.to_owned(),
        reason: error.to_string(),
    }
}

/// Creates the store's directory with mode 0700 if it is missing, and tightens an existing
/// one others could enter (and so replace the store in).
fn prepare_directory(path: &Path) -> Result<(), StoreError> {
    let Some(directory) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if directory.exists() {
        #[cfg(unix)]
        tighten_directory(path, directory)?;
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(directory)
        .map_err(|error| io_error(directory, error))
}

/// Sets a directory others can use to 0700, but only one that holds nothing but this store's
/// own files: never a shared one (`/tmp`, a home or project directory, `/var/lib`), even as
/// root. Anything else, or a chmod that fails (not the owner), is refused.
#[cfg(unix)]
fn tighten_directory(path: &Path, directory: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(directory)
        .map_err(|error| io_error(directory, error))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let refused = |reason: String| StoreError::DirectoryTooOpen {
        path: directory.to_owned(),
        mode,
        reason,
    };
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let ours = |entry: &str| {
        entry == name
            || entry == format!("{name}.lock")
            || entry
                .strip_prefix(&*stem)
                .is_some_and(|rest| rest.starts_with(".tmp-") || rest.starts_with(".corrupt-"))
    };
    let others = fs::read_dir(directory)
        .map_err(|error| io_error(directory, error))?
        .filter_map(Result::ok)
        .any(|entry| !ours(&entry.file_name().to_string_lossy()));
    if others || mode & 0o1000 != 0 {
        return Err(refused("is shared with other files".into()));
    }
    fs::set_permissions(directory, fs::Permissions::from_mode(0o700))
        .map_err(|error| refused(format!("cannot be made 0700 ({error})")))?;
    tracing::info!(directory = %directory.display(), "token store directory was mode {mode:o}; set to 0700");
    Ok(())
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".lock");
    path.with_file_name(name)
}

/// Takes the OS lock on `<store>.lock` and writes who we are into it. If another process
/// holds it, names that process.
fn take_lock(path: &Path, owner: &Owner) -> Result<File, StoreError> {
    let lock_path = lock_path(path);
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&lock_path)
        .map_err(|error| io_error(&lock_path, error))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let owner = read_owner(&lock_path)
                .map(|owner| match owner.admin {
                    Some(admin) => format!("pid {}, {admin}", owner.pid),
                    None => format!("pid {}", owner.pid),
                })
                .unwrap_or_else(|| "unknown process".into());
            return Err(StoreError::Locked {
                path: path.to_owned(),
                owner,
            });
        }
        Err(fs::TryLockError::Error(error)) => return Err(io_error(&lock_path, error)),
    }
    file.set_len(0)
        .map_err(|error| io_error(&lock_path, error))?;
    let text = serde_json::to_vec(owner).unwrap_or_default();
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .map_err(|error| io_error(&lock_path, error))?;
    Ok(file)
}

/// Who owns the store at `path`, if a live process holds its lock.
pub fn current_owner(path: &Path) -> Option<Owner> {
    let lock_path = lock_path(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lock_path)
        .ok()?;
    match file.try_lock() {
        // Nobody holds it; let go at once.
        Ok(()) => None,
        Err(_) => read_owner(&lock_path),
    }
}

/// Records the admin URL of the daemon holding the store, once it is listening.
pub fn announce(path: &Path, owner: &Owner) {
    let _ = fs::write(
        lock_path(path),
        serde_json::to_vec(owner).unwrap_or_default(),
    );
}

fn read_owner(lock_path: &Path) -> Option<Owner> {
    serde_json::from_slice(&fs::read(lock_path).ok()?).ok()
}

/// Loads the file. A file others can read is refused; a file that is not a store is moved
/// aside with a message and the store starts empty.
fn load(path: &Path) -> Result<BTreeMap<String, StoredToken>, StoreError> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(error) => return Err(io_error(path, error)),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)
            .map_err(|error| io_error(path, error))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(StoreError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
    }
    match serde_json::from_slice::<StoreFile>(&text) {
        Ok(file) => Ok(file.upstreams),
        Err(error) => {
            let aside = path.with_extension(format!("corrupt-{}", unix_now() as u64));
            fs::rename(path, &aside).map_err(|error| io_error(path, error))?;
            tracing::error!(
                store = %path.display(),
                moved_to = %aside.display(),
                "token store is corrupt ({error}); moved aside, starting with fresh logins"
            );
            Ok(BTreeMap::new())
        }
    }
}

/// Temp file, fsync, rename, fsync of the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let temp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result = options
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&temp, path))
        .and_then(
            |()| match path.parent().filter(|d| !d.as_os_str().is_empty()) {
                Some(directory) => File::open(directory)?.sync_all(),
                None => File::open(".")?.sync_all(),
            },
        );
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(|error| io_error(path, error))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// A monotonic instant as Unix time.
fn to_unix(instant: Instant) -> f64 {
    let now = Instant::now();
    if instant >= now {
        unix_now() + (instant - now).as_secs_f64()
    } else {
        unix_now() - (now - instant).as_secs_f64()
    }
}

/// Unix time as a monotonic instant (past times clamp to now: they are expired either way).
fn from_unix(unix: f64) -> Instant {
    let now = Instant::now();
    let ahead = unix - unix_now();
    if ahead > 0.0 {
        now + Duration::from_secs_f64(ahead)
    } else {
        now.checked_sub(Duration::from_secs_f64(-ahead))
            .unwrap_or(now)
    }
}

pub fn stored(fingerprint: &str, credential: &Credential) -> StoredToken {
    StoredToken {
        fingerprint: fingerprint.to_owned(),
        access_token: credential.token.expose().to_owned(),
        expires_at: credential.expires_at.map(to_unix),
        obtained_at: to_unix(credential.obtained_at),
        refresh_token: credential
            .refresh_token
            .as_ref()
            .map(|t| t.expose().to_owned()),
        refresh_expires_at: credential.refresh_expires_at.map(to_unix),
    }
}

pub fn restore(stored: &StoredToken, injection: &Injection) -> Option<Credential> {
    let token = Secret::new(stored.access_token.clone());
    Some(Credential {
        headers: injection.headers_for(&token).ok()?,
        token,
        obtained_at: from_unix(stored.obtained_at),
        expires_at: stored.expires_at.map(from_unix),
        refresh_token: stored.refresh_token.clone().map(Secret::new),
        refresh_expires_at: stored.refresh_expires_at.map(from_unix),
    })
}

/// Shared handle, as the token cells hold it.
pub type SharedStore = Arc<Store>;

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tokenproxy-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir.join("state").join("tokens.json")
    }

    fn injection() -> Injection {
        Injection {
            header: http::header::AUTHORIZATION,
            scheme: "Bearer".into(),
            extra: Vec::new(),
        }
    }

    fn credential(token: &str, refresh: &str) -> Credential {
        let now = Instant::now();
        Credential {
            headers: injection().headers_for(&Secret::new(token)).unwrap(),
            token: Secret::new(token),
            obtained_at: now,
            expires_at: Some(now + Duration::from_secs(300)),
            refresh_token: Some(Secret::new(refresh)),
            refresh_expires_at: None,
        }
    }

    fn owner() -> Owner {
        Owner {
            pid: std::process::id(),
            admin: None,
        }
    }

    #[tokio::test]
    async fn saved_tokens_come_back_after_a_restart_with_private_modes() {
        use std::os::unix::fs::PermissionsExt;
        let path = temp_store("roundtrip");
        {
            let store = Store::open(&path, &owner()).unwrap();
            store
                .save("amm", "fp", &credential("at-1", "rt-1"))
                .await
                .unwrap();
            store
                .save("amm", "fp", &credential("at-2", "rt-2"))
                .await
                .unwrap();
        }
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let store = Store::open(&path, &owner()).unwrap();
        let restored = store.credential("amm", "fp", &injection()).unwrap();
        assert_eq!(restored.token.expose(), "at-2");
        assert_eq!(restored.refresh_token.unwrap().expose(), "rt-2");
        let left = restored.expires_at.unwrap() - Instant::now();
        assert!(
            left > Duration::from_secs(295) && left <= Duration::from_secs(300),
            "{left:?}"
        );
        assert!(store
            .credential("amm", "other settings", &injection())
            .is_none());
    }

    #[tokio::test]
    async fn a_second_owner_is_refused_with_the_first_named() {
        let path = temp_store("lock");
        let first = Owner {
            pid: 4242,
            admin: Some("http://127.0.0.1:8080".into()),
        };
        let _held = Store::open(&path, &first).unwrap();
        // Another open file description conflicts even within one process.
        let error = Store::open(&path, &owner())
            .err()
            .expect("second owner refused")
            .to_string();
        assert!(
            error.contains("in use by another tokenproxy (pid 4242, http://127.0.0.1:8080)"),
            "{error}"
        );
        assert_eq!(current_owner(&path).unwrap().pid, 4242);
    }

    #[test]
    fn a_corrupt_store_is_moved_aside() {
        use std::os::unix::fs::PermissionsExt;
        let path = temp_store("corrupt");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"{ not json").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let store = Store::open(&path, &owner()).unwrap();
        assert!(store.entries.try_lock().unwrap().is_empty());
        let aside: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(fs::read(aside[0].path()).unwrap(), b"{ not json");
    }

    #[test]
    fn a_store_directory_others_can_enter_is_tightened_to_0700() {
        use std::os::unix::fs::PermissionsExt;
        let path = temp_store("wide-dir");
        let directory = path.parent().unwrap();
        fs::create_dir_all(directory).unwrap();
        fs::set_permissions(directory, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(&path, b"{\"version\":1,\"upstreams\":{}}").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        Store::open(&path, &owner()).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(directory), 0o700);

        // A directory holding other files is someone's own: refused, and left as it was.
        let path = temp_store("shared-dir");
        let directory = path.parent().unwrap();
        fs::create_dir_all(directory).unwrap();
        fs::write(directory.join("notes.txt"), b"mine").unwrap();
        fs::set_permissions(directory, fs::Permissions::from_mode(0o755)).unwrap();
        let error = Store::open(&path, &owner()).err().unwrap().to_string();
        assert!(error.contains("open to other users (mode 755)"), "{error}");
        assert_eq!(mode(directory), 0o755);
    }

    #[test]
    fn a_store_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let path = temp_store("open");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"{\"version\":1,\"upstreams\":{}}").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = Store::open(&path, &owner()).err().unwrap().to_string();
        assert!(error.contains("readable by other users"), "{error}");
    }
}
