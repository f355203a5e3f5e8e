//! The tree listing of a repo at a commit (`/api/models/{repo}/tree/{commit}`, paged):
//! every file with its size and checksum, each name validated before it is used.

use crate::{
    http::{authed, backoff, client, error_of, header_str, net, retryable, url},
    validate_repo_path, HubConfig, HubError, RemoteFile,
};
use reqwest::Url;

#[derive(serde::Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    oid: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    lfs: Option<TreeLfs>,
}

#[derive(serde::Deserialize)]
struct TreeLfs {
    #[serde(alias = "sha256")]
    oid: String,
    size: Option<u64>,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Most pages of one tree listing (the Hub's pages hold 1000 entries; no model has a
/// million files).
pub const MAX_PAGES: usize = 1000;

/// Every file of `repo` at `commit` (`/api/models/{repo}/tree/{commit}?recursive=true`,
/// following `Link: rel="next"` pages). Unsafe names fail the whole listing.
pub async fn list_tree(
    cfg: &HubConfig,
    repo: &str,
    commit: &str,
) -> Result<Vec<RemoteFile>, HubError> {
    let http = client()?;
    let mut next = Some(url(cfg, &["api", "models", repo, "tree", commit], None)?);
    if let Some(u) = &mut next {
        u.query_pairs_mut().append_pair("recursive", "true");
    }
    let mut out = Vec::new();
    let what = || format!("listing the files of `{repo}` on {}", cfg.endpoint);
    let home = url(cfg, &[], None)?.origin();
    let mut pages = 0;
    while let Some(u) = next.take() {
        pages += 1;
        if pages > MAX_PAGES {
            return Err(HubError::Other(format!(
                "{}: the server announced more than {MAX_PAGES} pages; refusing to follow",
                what()
            )));
        }
        // The token goes to the configured endpoint only, never to a host a page names.
        let ours = u.origin() == home;
        let mut attempt = 0;
        let resp = loop {
            attempt += 1;
            let get = http.get(u.clone());
            let get = if ours { authed(cfg, get) } else { get };
            match get.send().await {
                Ok(r) if retryable(r.status()) && attempt < cfg.attempts => {}
                Ok(r) => break r,
                Err(e) if attempt >= cfg.attempts => return Err(net(what(), &e)),
                Err(_) => {}
            }
            tokio::time::sleep(backoff(cfg, attempt, None)).await;
        };
        if !resp.status().is_success() {
            if !ours {
                // Not the endpoint's answer, and no token went there: say so rather than
                // blame the token.
                return Err(HubError::Other(format!(
                    "{}: a page on another origin ({}) answered {}; the token is sent to {} only",
                    what(),
                    u.origin().ascii_serialization(),
                    resp.status(),
                    cfg.endpoint
                )));
            }
            return Err(error_of(cfg, repo, commit, None, resp).await);
        }
        next = header_str(&resp, "link").and_then(next_link);
        let entries: Vec<TreeEntry> = resp
            .json()
            .await
            .map_err(|e| net(format!("{}: unexpected answer", what()), &e))?;
        for e in entries {
            validate_repo_path(repo, &e.path)?;
            if e.kind != "file" {
                continue;
            }
            let bad = |field: &str| {
                HubError::Other(format!(
                    "{}: entry `{}` has no valid `{field}`",
                    what(),
                    e.path
                ))
            };
            let git_oid = e
                .oid
                .clone()
                .filter(|o| is_hex(o, 40))
                .ok_or_else(|| bad("oid"))?;
            let lfs_sha256 = match &e.lfs {
                Some(l) if is_hex(&l.oid, 64) => Some(l.oid.to_ascii_lowercase()),
                Some(_) => return Err(bad("lfs.oid")),
                None => None,
            };
            let size = e
                .lfs
                .as_ref()
                .and_then(|l| l.size)
                .or(e.size)
                .ok_or_else(|| bad("size"))?;
            out.push(RemoteFile {
                path: e.path,
                size,
                git_oid: git_oid.to_ascii_lowercase(),
                lfs_sha256,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup_by(|a, b| a.path == b.path);
    Ok(out)
}

fn next_link(link: &str) -> Option<Url> {
    link.split(',').find_map(|part| {
        let (u, params) = part.split_once(';')?;
        params
            .contains("rel=\"next\"")
            .then(|| Url::parse(u.trim().trim_start_matches('<').trim_end_matches('>')).ok())?
    })
}
