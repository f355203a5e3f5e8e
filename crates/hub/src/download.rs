//! The download path: verified, resumable file downloads.
//!
//! For each file: skip it if the snapshot already has it; take the blob's lock (another
//! process pulling the same model waits here, then finds the blob done); resume
//! `<blob>.incomplete` with `Range: bytes=N-` (a server that ignores Range answers 200
//! and the file restarts from 0); hash while writing (sha256 for LFS files, the git blob
//! sha1 otherwise); retry cut bodies, connection errors, 408/429/5xx with backoff
//! (`Retry-After` honoured); stop at once on other statuses, before a byte is written;
//! only a blob whose size and checksum match is renamed into place. A checksum mismatch
//! deletes the partial file and downloads once more, then fails.

use crate::{
    cache::{FileLock, RepoCache, Snapshot},
    progress::Progress,
    validate_repo_path, HubConfig, HubError, RemoteFile, RepoListing,
};
use reqwest::{header, StatusCode, Url};
use sha2::Digest as _;
use std::{
    fs,
    io::{Read, Write},
    time::Duration,
};

pub use crate::http::run;
use crate::http::{authed, backoff, client, error_of, header_str, net, retryable, url};
pub use crate::listing::list_tree;

/// The running checksum of a file being downloaded.
enum Hasher {
    Sha256(sha2::Sha256),
    GitSha1(sha1::Sha1),
}

impl Hasher {
    fn new(f: &RemoteFile) -> Self {
        match f.lfs_sha256 {
            Some(_) => Hasher::Sha256(sha2::Sha256::new()),
            None => {
                let mut h = sha1::Sha1::new();
                h.update(format!("blob {}\0", f.size).as_bytes());
                Hasher::GitSha1(h)
            }
        }
    }
    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::GitSha1(h) => h.update(b),
        }
    }
    fn hex(self) -> String {
        let bytes: Vec<u8> = match self {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::GitSha1(h) => h.finalize().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Check what was received against the listing; `Err` says what is wrong.
fn check(f: &RemoteFile, len: u64, h: Hasher) -> Result<(), String> {
    if len != f.size {
        return Err(format!("{len} bytes received, the listing says {}", f.size));
    }
    let got = h.hex();
    let want = f.etag();
    if got != want {
        let algo = if f.lfs_sha256.is_some() {
            "sha256"
        } else {
            "git sha1"
        };
        return Err(format!("{algo} is {got}, expected {want}"));
    }
    Ok(())
}

/// A whole small file, or the first `len` bytes of one, in memory.
pub async fn fetch_bytes(
    cfg: &HubConfig,
    repo: &str,
    commit: &str,
    f: &RemoteFile,
    len: Option<u64>,
) -> Result<Vec<u8>, HubError> {
    let http = client()?;
    let u = url(cfg, &[repo, "resolve", commit], Some(&f.path))?;
    let what = || format!("downloading `{}` of `{repo}`", f.path);
    let want = len.unwrap_or(f.size);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut rb = authed(cfg, http.get(u.clone()));
        if len.is_some() && want < f.size {
            rb = rb.header(header::RANGE, format!("bytes=0-{}", want.saturating_sub(1)));
        }
        let r = match rb.send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) if !retryable(r.status()) => {
                return Err(error_of(cfg, repo, commit, Some(&f.path), r).await)
            }
            Ok(r) if attempt >= cfg.attempts => {
                return Err(error_of(cfg, repo, commit, Some(&f.path), r).await)
            }
            Err(e) if attempt >= cfg.attempts => return Err(net(what(), &e)),
            _ => {
                tokio::time::sleep(backoff(cfg, attempt, None)).await;
                continue;
            }
        };
        let mut buf = Vec::with_capacity(want as usize);
        let mut r = r;
        let mut cut = None;
        loop {
            match r.chunk().await {
                Ok(Some(c)) => {
                    let take = (want as usize - buf.len()).min(c.len());
                    buf.extend_from_slice(&c[..take]);
                    if buf.len() as u64 >= want {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    cut = Some(e);
                    break;
                }
            }
        }
        if (buf.len() as u64) < want {
            if attempt >= cfg.attempts {
                return Err(match cut {
                    Some(e) => net(what(), &e),
                    None => HubError::Network {
                        what: what(),
                        msg: format!("the body ended after {} of {want} bytes", buf.len()),
                    },
                });
            }
            tokio::time::sleep(backoff(cfg, attempt, None)).await;
            continue;
        }
        if want == f.size {
            let mut h = Hasher::new(f);
            h.update(&buf);
            if let Err(why) = check(f, buf.len() as u64, h) {
                if attempt >= cfg.attempts.min(2) {
                    return Err(HubError::Verify {
                        repo: repo.to_owned(),
                        file: f.path.clone(),
                        attempts: attempt,
                        why,
                    });
                }
                continue;
            }
        }
        return Ok(buf);
    }
}

/// Download `files` of the listing into the cache and link them into its snapshot.
pub async fn pull(
    cfg: &HubConfig,
    l: &RepoListing,
    files: &[RemoteFile],
    progress: &Progress,
) -> Result<Snapshot, HubError> {
    let http = client()?;
    let rc = RepoCache::new(&cfg.cache_dir, &l.repo);
    let total: u64 = files
        .iter()
        .filter(|f| !rc.has(&l.commit, f))
        .map(|f| f.size)
        .sum();
    progress.begin(&l.repo, files.len(), total);
    let mut downloaded = 0;
    for f in files {
        validate_repo_path(&l.repo, &f.path)?;
        downloaded += file(cfg, &http, &rc, l, f, progress).await?;
    }
    rc.write_ref(&l.revision, &l.commit)?;
    progress.end();
    Ok(Snapshot {
        dir: rc.snapshot(&l.commit),
        commit: l.commit.clone(),
        files: files.iter().map(|f| f.path.clone()).collect(),
        downloaded_bytes: downloaded,
    })
}

/// What one attempt at a file ended with.
enum Attempt {
    /// All bytes are in the `.incomplete` file.
    Complete,
    /// Worth another try (cut body, network error, 5xx/429), after an optional delay.
    Retry(String, Option<Duration>),
}

/// One file: returns the bytes that came over the network.
async fn file(
    cfg: &HubConfig,
    http: &reqwest::Client,
    rc: &RepoCache,
    l: &RepoListing,
    f: &RemoteFile,
    progress: &Progress,
) -> Result<u64, HubError> {
    if rc.has(&l.commit, f) {
        progress.skip(&f.path, f.size, "already cached");
        return Ok(0);
    }
    let blob = rc.blob(f.etag());
    let whole = |p: &std::path::Path| fs::metadata(p).is_ok_and(|m| m.len() == f.size);
    if !whole(&blob) {
        let _lock = FileLock::acquire(&rc.lock_path(f.etag()), || {
            progress.note(&format!(
                "waiting for another process downloading `{}`",
                f.path
            ))
        })?;
        if !whole(&blob) {
            let transferred = fetch_blob(cfg, http, rc, l, f, progress).await?;
            rc.link(&l.commit, f)?;
            return Ok(transferred);
        }
    }
    progress.skip(&f.path, f.size, "blob already in the cache");
    rc.link(&l.commit, f)?;
    Ok(0)
}

async fn fetch_blob(
    cfg: &HubConfig,
    http: &reqwest::Client,
    rc: &RepoCache,
    l: &RepoListing,
    f: &RemoteFile,
    progress: &Progress,
) -> Result<u64, HubError> {
    let blobs = rc.root.join("blobs");
    fs::create_dir_all(&blobs).map_err(|e| HubError::io("creating", &blobs, e))?;
    let inc = rc.incomplete(f.etag());
    let u = url(cfg, &[&l.repo, "resolve", &l.commit], Some(&f.path))?;
    // Hash what an earlier run left, to continue from it.
    let (mut hasher, mut have) = (Hasher::new(f), 0u64);
    if let Ok(mut old) = fs::File::open(&inc) {
        let len = old.metadata().map_or(0, |m| m.len());
        if len > f.size {
            // Not a prefix of this file: start over.
            drop(old);
            fs::remove_file(&inc).map_err(|e| HubError::io("removing", &inc, e))?;
        } else if len > 0 {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = old
                    .read(&mut buf)
                    .map_err(|e| HubError::io("reading", &inc, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                have += n as u64;
            }
        }
    }
    progress.start(&f.path, f.size, have);
    let (mut attempt, mut bad_checksums, mut transferred) = (0u32, 0u32, 0u64);
    loop {
        attempt += 1;
        let outcome = attempt_once(
            cfg,
            http,
            l,
            f,
            &u,
            &inc,
            &mut hasher,
            &mut have,
            &mut transferred,
            progress,
        )
        .await?;
        match outcome {
            Attempt::Complete => {
                let done = std::mem::replace(&mut hasher, Hasher::new(f));
                match check(f, have, done) {
                    Ok(()) => {
                        let blob = rc.blob(f.etag());
                        fs::rename(&inc, &blob)
                            .map_err(|e| HubError::io("renaming into", &blob, e))?;
                        progress.done(&f.path);
                        return Ok(transferred);
                    }
                    Err(why) => {
                        let _ = fs::remove_file(&inc);
                        have = 0;
                        bad_checksums += 1;
                        tracing::warn!(file = %f.path, %why, "verification failed; deleted");
                        progress.note(&format!(
                            "`{}` failed verification ({why}); downloading it again",
                            f.path
                        ));
                        progress.restart(&f.path);
                        if bad_checksums >= 2 {
                            progress.fail(&f.path);
                            return Err(HubError::Verify {
                                repo: l.repo.clone(),
                                file: f.path.clone(),
                                attempts: bad_checksums,
                                why,
                            });
                        }
                    }
                }
            }
            Attempt::Retry(why, after) => {
                if attempt >= cfg.attempts {
                    progress.fail(&f.path);
                    return Err(HubError::Network {
                        what: format!(
                            "downloading `{}` of `{}` ({attempt} attempts; {have} of {} bytes kept for the next run)",
                            f.path, l.repo, f.size
                        ),
                        msg: why,
                    });
                }
                let wait = backoff(cfg, attempt, after);
                tracing::info!(file = %f.path, %why, ?wait, have, "retrying");
                progress.note(&format!(
                    "`{}`: {why}; retrying in {:.1} s from byte {have}",
                    f.path,
                    wait.as_secs_f64()
                ));
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn attempt_once(
    cfg: &HubConfig,
    http: &reqwest::Client,
    l: &RepoListing,
    f: &RemoteFile,
    u: &Url,
    inc: &std::path::Path,
    hasher: &mut Hasher,
    have: &mut u64,
    transferred: &mut u64,
    progress: &Progress,
) -> Result<Attempt, HubError> {
    if *have == f.size {
        return Ok(Attempt::Complete);
    }
    let mut rb = authed(cfg, http.get(u.clone()));
    if *have > 0 {
        rb = rb.header(header::RANGE, format!("bytes={have}-"));
    }
    let mut r = match rb.send().await {
        Ok(r) => r,
        Err(e) => return Ok(Attempt::Retry(net("request", &e).to_string(), None)),
    };
    let status = r.status();
    let restart = |hasher: &mut Hasher, have: &mut u64| -> Result<(), HubError> {
        *hasher = Hasher::new(f);
        *have = 0;
        progress.restart(&f.path);
        match fs::remove_file(inc) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(HubError::io("removing", inc, e)),
        }
    };
    match status {
        StatusCode::OK => {
            if *have > 0 {
                tracing::info!(file = %f.path, "server ignored Range; restarting from 0");
                restart(hasher, have)?;
            }
        }
        StatusCode::PARTIAL_CONTENT => {
            let start = header_str(&r, "content-range")
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if start != Some(*have) {
                restart(hasher, have)?;
                return Ok(Attempt::Retry(
                    format!(
                        "the server resumed at the wrong offset ({start:?}, wanted {})",
                        *have
                    ),
                    None,
                ));
            }
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            restart(hasher, have)?;
            return Ok(Attempt::Retry(
                "range not satisfiable; starting over".into(),
                None,
            ));
        }
        s if retryable(s) => {
            let after = header_str(&r, "retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Ok(Attempt::Retry(format!("HTTP {}", s.as_u16()), after));
        }
        _ => return Err(error_of(cfg, &l.repo, &l.commit, Some(&f.path), r).await),
    }
    if let Some(n) = r.content_length() {
        if *have + n != f.size {
            return Err(HubError::Verify {
                repo: l.repo.clone(),
                file: f.path.clone(),
                attempts: 1,
                why: format!(
                    "the server sends {} bytes, the listing says {}",
                    *have + n,
                    f.size
                ),
            });
        }
    }
    let mut out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(inc)
        .map_err(|e| HubError::io("opening", inc, e))?;
    loop {
        match r.chunk().await {
            Ok(Some(c)) => {
                if *have + c.len() as u64 > f.size {
                    // Longer than listed: cannot be this file; the size check rejects it.
                    *have += c.len() as u64;
                    return Ok(Attempt::Complete);
                }
                out.write_all(&c)
                    .map_err(|e| HubError::io("writing", inc, e))?;
                hasher.update(&c);
                *have += c.len() as u64;
                *transferred += c.len() as u64;
                progress.advance(c.len() as u64);
            }
            Ok(None) => break,
            Err(e) => {
                out.flush().map_err(|e| HubError::io("writing", inc, e))?;
                return Ok(Attempt::Retry(
                    format!(
                        "connection lost after {} of {} bytes: {}",
                        *have,
                        f.size,
                        net("body", &e)
                    ),
                    None,
                ));
            }
        }
    }
    out.sync_all()
        .map_err(|e| HubError::io("syncing", inc, e))?;
    if *have < f.size {
        return Ok(Attempt::Retry(
            format!("the body ended after {} of {} bytes", *have, f.size),
            None,
        ));
    }
    Ok(Attempt::Complete)
}
