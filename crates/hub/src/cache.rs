//! The Hugging Face cache layout, shared with `huggingface_hub`:
//!
//! ```text
//! <cache>/models--owner--name/blobs/<etag>               verified content (sha256 or git oid)
//! <cache>/models--owner--name/blobs/<etag>.incomplete    bytes so far (resumed with Range)
//! <cache>/models--owner--name/snapshots/<commit>/<path>  relative symlink to the blob
//! <cache>/models--owner--name/refs/<revision>            the commit a branch/tag points to
//! <cache>/.locks/models--owner--name/<etag>.lock         one writer per blob (flock)
//! ```
//!
//! A blob is only ever renamed into place after its size and checksum matched, so a
//! file under `blobs/` without `.incomplete` is whole.

use super::{HubError, RemoteFile};
use serde::Serialize;
use std::{
    fs,
    path::{Path, PathBuf},
};

/// `owner/name` → `models--owner--name`.
pub fn repo_folder(repo: &str) -> String {
    format!("models--{}", repo.replace('/', "--"))
}

/// A snapshot folder with the files it holds.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// `<cache>/models--…/snapshots/<commit>`.
    pub dir: PathBuf,
    /// The commit.
    pub commit: String,
    /// Files (repo paths) now present.
    pub files: Vec<String>,
    /// Bytes that came over the network in this call.
    pub downloaded_bytes: u64,
}

/// Paths of one repo in the cache.
pub struct RepoCache {
    pub root: PathBuf,
    pub locks: PathBuf,
}

impl RepoCache {
    pub fn new(cache_dir: &Path, repo: &str) -> Self {
        let folder = repo_folder(repo);
        Self {
            root: cache_dir.join(&folder),
            locks: cache_dir.join(".locks").join(folder),
        }
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(etag)
    }

    pub fn incomplete(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(format!("{etag}.incomplete"))
    }

    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }

    pub fn lock_path(&self, etag: &str) -> PathBuf {
        self.locks.join(format!("{etag}.lock"))
    }

    /// The snapshot folder `revision` resolves to locally (through `refs/<revision>`; a
    /// commit id is itself), whether or not it exists, and the `files` it lacks. It is
    /// whole when it is a folder and nothing is missing (a failed pull links the files it
    /// finished; the rest stay missing).
    pub fn snapshot_of<'a>(&self, revision: &str, files: &'a [String]) -> (PathBuf, Vec<&'a str>) {
        let commit = fs::read_to_string(self.root.join("refs").join(revision))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| revision.to_owned());
        let snap = self.snapshot(&commit);
        let missing = files
            .iter()
            .filter(|f| !snap.join(f).is_file())
            .map(String::as_str)
            .collect();
        (snap, missing)
    }

    /// Record that `revision` is at `commit` (atomically).
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<(), HubError> {
        if revision == commit {
            return Ok(());
        }
        let path = self.root.join("refs").join(revision);
        let dir = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(|e| HubError::io("creating", dir, e))?;
        let tmp = dir.join(format!(
            ".{}.tmp{}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        fs::write(&tmp, commit).map_err(|e| HubError::io("writing", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| HubError::io("renaming into", &path, e))
    }

    /// Whether `f` is in the snapshot of `commit`, pointing at a whole blob of the right
    /// size.
    pub fn has(&self, commit: &str, f: &RemoteFile) -> bool {
        let p = self.snapshot(commit).join(&f.path);
        fs::metadata(&p).is_ok_and(|m| m.is_file() && m.len() == f.size)
    }

    /// Point `snapshots/<commit>/<path>` at the blob (a relative symlink, as
    /// `huggingface_hub` makes; replaced if it exists).
    pub fn link(&self, commit: &str, f: &RemoteFile) -> Result<(), HubError> {
        let dst = self.snapshot(commit).join(&f.path);
        let dir = dst.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(|e| HubError::io("creating", dir, e))?;
        let depth = f.path.matches('/').count() + 2;
        let target = PathBuf::from("../".repeat(depth))
            .join("blobs")
            .join(f.etag());
        let tmp = dir.join(format!(
            ".{}.link{}",
            dst.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        let _ = fs::remove_file(&tmp);
        #[cfg(unix)]
        std::os::unix::fs::symlink(&target, &tmp).map_err(|e| HubError::io("linking", &tmp, e))?;
        #[cfg(not(unix))]
        fs::copy(self.blob(f.etag()), &tmp).map_err(|e| HubError::io("copying", &tmp, e))?;
        fs::rename(&tmp, &dst).map_err(|e| HubError::io("renaming into", &dst, e))
    }
}

/// An exclusive lock on a file, held until dropped (`flock`; `huggingface_hub`'s
/// `filelock` takes the same lock on the same path).
pub struct FileLock(#[allow(dead_code)] fs::File);

impl FileLock {
    /// Take the lock, waiting for another holder; `on_wait` is called once if it must wait.
    pub fn acquire(path: &Path, on_wait: impl FnOnce()) -> Result<Self, HubError> {
        if let Some(d) = path.parent() {
            fs::create_dir_all(d).map_err(|e| HubError::io("creating", d, e))?;
        }
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| HubError::io("opening lock", path, e))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                on_wait();
                f.lock().map_err(|e| HubError::io("locking", path, e))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(HubError::io("locking", path, e)),
        }
        Ok(Self(f))
    }

    /// Take the lock only if free.
    pub fn try_acquire(path: &Path) -> Result<Option<Self>, HubError> {
        let f = match fs::OpenOptions::new().write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(HubError::io("opening lock", path, e)),
        };
        match f.try_lock() {
            Ok(()) => Ok(Some(Self(f))),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(HubError::io("locking", path, e)),
        }
    }
}

/// A repo in the cache, for `mlxengine ls`.
#[derive(Debug, Clone, Serialize)]
pub struct CachedRepo {
    /// `owner/name`.
    pub repo: String,
    /// Cache folder.
    pub path: PathBuf,
    /// Bytes of whole blobs.
    pub size_bytes: u64,
    /// Bytes of unfinished downloads (`.incomplete`).
    pub incomplete_bytes: u64,
    /// Commits with a snapshot.
    pub snapshots: Vec<String>,
    /// `revision → commit`.
    pub refs: Vec<(String, String)>,
    /// Files in the newest snapshot.
    pub files: usize,
}

/// Every model repo in the cache.
pub fn scan(cache_dir: &Path) -> Vec<CachedRepo> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(cache_dir) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("models--") else {
            continue;
        };
        let repo = rest.replacen("--", "/", 1);
        let root = e.path();
        let (mut size, mut partial) = (0, 0);
        if let Ok(blobs) = fs::read_dir(root.join("blobs")) {
            for b in blobs.flatten() {
                let len = b.metadata().map_or(0, |m| m.len());
                if b.file_name().to_string_lossy().ends_with(".incomplete") {
                    partial += len;
                } else {
                    size += len;
                }
            }
        }
        let mut snapshots: Vec<(std::time::SystemTime, String)> =
            fs::read_dir(root.join("snapshots"))
                .map(|r| {
                    r.flatten()
                        .map(|s| {
                            let t = s
                                .metadata()
                                .and_then(|m| m.modified())
                                .unwrap_or(std::time::UNIX_EPOCH);
                            (t, s.file_name().to_string_lossy().into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default();
        snapshots.sort();
        let files = snapshots
            .last()
            .map_or(0, |(_, c)| count_files(&root.join("snapshots").join(c)));
        let mut refs = Vec::new();
        collect_refs(&root.join("refs"), "", &mut refs);
        out.push(CachedRepo {
            repo,
            path: root,
            size_bytes: size,
            incomplete_bytes: partial,
            snapshots: snapshots.into_iter().map(|(_, c)| c).collect(),
            refs,
            files,
        });
    }
    out.sort_by(|a, b| a.repo.cmp(&b.repo));
    out
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |r| {
        r.flatten()
            .map(|e| {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    count_files(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

fn collect_refs(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_refs(&e.path(), &format!("{name}/"), out);
        } else if let Ok(c) = fs::read_to_string(e.path()) {
            out.push((name, c.trim().to_owned()));
        }
    }
    out.sort();
}

/// Remove a repo from the cache. Refused while another process holds one of its blob
/// locks (a pull in progress). The folder is renamed away first, so readers never see
/// half of it.
pub fn remove(cache_dir: &Path, repo: &str) -> Result<u64, HubError> {
    let rc = RepoCache::new(cache_dir, repo);
    if !rc.root.exists() {
        return Err(HubError::Other(format!(
            "`{repo}` is not in the cache ({})",
            cache_dir.display()
        )));
    }
    let mut held = Vec::new();
    if let Ok(rd) = fs::read_dir(&rc.locks) {
        for e in rd.flatten() {
            match FileLock::try_acquire(&e.path())? {
                Some(l) => held.push(l),
                None => {
                    return Err(HubError::Other(format!(
                        "`{repo}` is being downloaded by another process (lock {} is held); try again when it is done",
                        e.path().display()
                    )))
                }
            }
        }
    }
    let size = scan(cache_dir)
        .into_iter()
        .find(|r| r.repo == repo)
        .map_or(0, |r| r.size_bytes + r.incomplete_bytes);
    let trash = cache_dir.join(format!(
        ".trash-{}-{}",
        repo_folder(repo),
        std::process::id()
    ));
    fs::rename(&rc.root, &trash).map_err(|e| HubError::io("moving away", &rc.root, e))?;
    fs::remove_dir_all(&trash).map_err(|e| HubError::io("removing", &trash, e))?;
    drop(held);
    let _ = fs::remove_dir_all(&rc.locks);
    Ok(size)
}
