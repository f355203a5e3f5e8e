//! The model store: Hugging Face Hub search, repo inspection and verified, resumable
//! downloads into the standard HF cache (`models--owner--name/{blobs,snapshots,refs}`), so
//! Python tools share what `mlxengine pull` fetched and the other way round.
//!
//! `hf-hub` does what it does well here: search (`/api/models`) and revision resolution
//! (`/api/models/{repo}/revision/{rev}`), with its error mapping. The download path is
//! our own ([`download`]), because hf-hub 1.0.0 neither resumes, nor checks sizes or
//! checksums, nor checks the body's status in cache mode (see `docs/model-store.md`).
//!
//! Configuration follows the Python client: `HF_ENDPOINT`, `HF_TOKEN` / `HF_TOKEN_PATH` /
//! `$HF_HOME/token`, `HF_HUB_DISABLE_IMPLICIT_TOKEN`, `HF_HUB_CACHE` / `HF_HOME`,
//! `HF_HUB_OFFLINE`.

pub mod cache;
pub mod download;
mod error;
mod http;
mod listing;
pub mod paths;
pub mod progress;
mod repo;
pub mod select;

use serde::Serialize;
use std::{fmt, path::PathBuf, time::Duration};

pub use cache::{CachedRepo, Snapshot};
pub(crate) use error::status_error;
pub use error::HubError;
pub use repo::{validate_repo_id, validate_repo_path, RepoRef};
pub use select::{select_files, Selection};

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// An access token. Never printed: `Debug`/`Display` show `hf_***`.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    fn header(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("hf_***")
    }
}

/// Where the Hub is and how to talk to it.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Base URL, no trailing slash (`HF_ENDPOINT`).
    pub endpoint: String,
    /// The HF cache (`HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Access token, if any.
    pub token: Option<Token>,
    /// `HF_HUB_OFFLINE=1`: use the cache only.
    pub offline: bool,
    /// Attempts per file before giving up (network errors, cut bodies, 5xx/429).
    pub attempts: u32,
    /// First retry delay; doubles each attempt, capped at 8 s.
    pub backoff: Duration,
}

impl HubConfig {
    /// Configuration from the environment, like `huggingface_hub`.
    pub fn from_env() -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let truthy = |k: &str| {
            env(k).is_some_and(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "on" | "yes" | "true"
                )
            })
        };
        let endpoint = env("HF_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
            .trim_end_matches('/')
            .to_owned();
        let token = if truthy("HF_HUB_DISABLE_IMPLICIT_TOKEN") {
            None
        } else {
            env("HF_TOKEN")
                .or_else(|| {
                    let path = env("HF_TOKEN_PATH")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| paths::hf_home().join("token"));
                    std::fs::read_to_string(path)
                        .ok()
                        .map(|t| t.trim().to_owned())
                        .filter(|t| !t.is_empty())
                })
                .map(Token)
        };
        let attempts = env("MLXENGINE_HUB_ATTEMPTS")
            .and_then(|v| v.parse().ok())
            .unwrap_or(6u32)
            .max(1);
        Self {
            endpoint,
            cache_dir: paths::hf_hub_cache(),
            token,
            offline: truthy("HF_HUB_OFFLINE"),
            attempts,
            backoff: Duration::from_millis(500),
        }
    }
}

/// One file of a repo at a commit, as the tree listing gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteFile {
    /// Path in the repo.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Git blob id (sha1 of `blob <size>\0<bytes>`; of the pointer file for LFS files).
    pub git_oid: String,
    /// The content's sha256, for LFS files.
    pub lfs_sha256: Option<String>,
}

impl RemoteFile {
    /// The blob name in the cache: the sha256 for LFS files, the git blob id otherwise
    /// (what `huggingface_hub` uses, so both share blobs).
    pub fn etag(&self) -> &str {
        self.lfs_sha256.as_deref().unwrap_or(&self.git_oid)
    }
}

/// A repo at a resolved commit, with its files.
#[derive(Debug, Clone, Serialize)]
pub struct RepoListing {
    /// `owner/name`.
    pub repo: String,
    /// What was asked for (`main`, a tag, a commit).
    pub revision: String,
    /// The commit it resolved to.
    pub commit: String,
    /// Every file, sorted by path.
    pub files: Vec<RemoteFile>,
}

/// A search hit.
#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    pub id: String,
    pub downloads: Option<u64>,
    pub likes: Option<u64>,
    pub library: Option<String>,
    pub pipeline_tag: Option<String>,
    pub tags: Vec<String>,
    /// `config.json` `model_type` (or the GGUF tag's architecture), when the Hub gave it.
    pub architecture: Option<String>,
    /// Bytes `pull` would fetch by default, when the listing was asked for.
    pub size_bytes: Option<u64>,
    /// Whether a loaded plugin serves this architecture (`None`: unknown).
    pub supported: Option<bool>,
}

/// A client of one Hub endpoint.
pub struct Hub {
    cfg: HubConfig,
    /// `hf-hub`'s client (with its runtime thread), made on first use and reused.
    hf: std::sync::OnceLock<hf_hub::HFClientSync>,
}

impl Hub {
    /// A client configured from the environment.
    pub fn from_env() -> Self {
        Self::new(HubConfig::from_env())
    }

    /// A client with this configuration.
    pub fn new(cfg: HubConfig) -> Self {
        Self {
            cfg,
            hf: std::sync::OnceLock::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    fn online(&self, what: &str) -> Result<(), HubError> {
        if self.cfg.offline {
            return Err(HubError::Other(format!(
                "{what}: offline (HF_HUB_OFFLINE is set); unset it to reach {}",
                self.cfg.endpoint
            )));
        }
        Ok(())
    }

    fn hf(&self) -> Result<&hf_hub::HFClientSync, HubError> {
        if let Some(c) = self.hf.get() {
            return Ok(c);
        }
        let mut b = hf_hub::HFClient::builder()
            .endpoint(self.cfg.endpoint.clone())
            .cache_dir(self.cfg.cache_dir.clone())
            .retry_max_attempts(self.cfg.attempts as usize)
            .user_agent(user_agent());
        if let Some(t) = &self.cfg.token {
            b = b.token(t.0.clone());
        }
        let c = b
            .build_sync()
            .map_err(|e| HubError::Other(format!("Hub client for {}: {e}", self.cfg.endpoint)))?;
        Ok(self.hf.get_or_init(|| c))
    }

    fn map_hf(&self, repo: &str, revision: &str, e: hf_hub::HFError) -> HubError {
        use hf_hub::HFError as E;
        let ctx = match &e {
            E::AuthRequired { context } | E::Forbidden { context } | E::Http { context } => {
                Some(&**context)
            }
            E::RepoNotFound { context, .. } | E::RevisionNotFound { context, .. } => {
                context.as_deref()
            }
            _ => None,
        };
        match ctx {
            Some(c) => status_error(
                &self.cfg,
                repo,
                revision,
                None,
                c.status.as_u16(),
                c.error_code.as_deref(),
                c.server_message.as_deref(),
            ),
            None => HubError::Network {
                what: format!("asking {} about `{repo}`", self.cfg.endpoint),
                msg: scrub(&e.to_string()),
            },
        }
    }

    /// Search models: `query` against ids, narrowed by `pipeline_tag`, `author`.
    pub fn search(
        &self,
        query: &str,
        pipeline_tag: Option<&str>,
        author: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SearchHit>, HubError> {
        self.online("search")?;
        let hf = self.hf()?;
        let models = hf
            .list_models()
            .search(query)
            .maybe_author(author)
            .maybe_pipeline_tag(pipeline_tag)
            .fetch_config(true)
            .limit(limit.max(1))
            .send()
            .map_err(|e| match e {
                hf_hub::HFError::AuthRequired { .. } => HubError::AuthRequired {
                    repo: "search".into(),
                    endpoint: self.cfg.endpoint.clone(),
                    hint: String::new(),
                },
                other => HubError::Network {
                    what: format!("searching {}", self.cfg.endpoint),
                    msg: scrub(&other.to_string()),
                },
            })?;
        Ok(models
            .into_iter()
            .take(limit)
            .map(|m| {
                let tags = m.tags.unwrap_or_default();
                let architecture = m
                    .config
                    .as_ref()
                    .and_then(|c| c.get("model_type"))
                    .and_then(|v| v.as_str())
                    .map(str::to_ascii_lowercase)
                    .or_else(|| {
                        m.gguf
                            .as_ref()
                            .and_then(|g| g.get("architecture"))
                            .and_then(|v| v.as_str())
                            .map(str::to_owned)
                    });
                SearchHit {
                    id: m.id,
                    downloads: m.downloads,
                    likes: m.likes,
                    library: m.library_name,
                    pipeline_tag: m.pipeline_tag,
                    tags,
                    architecture,
                    size_bytes: None,
                    supported: None,
                }
            })
            .collect())
    }

    /// Resolve `r.revision` to a commit and list the repo's files there.
    pub fn listing(&self, r: &RepoRef) -> Result<RepoListing, HubError> {
        self.online(&format!("listing `{r}`"))?;
        let (owner, name) = hf_hub::split_id(&r.repo);
        let info = self
            .hf()?
            .model(owner, name)
            .info()
            .revision(r.revision.clone())
            .send()
            .map_err(|e| self.map_hf(&r.repo, &r.revision, e))?;
        let commit = info.sha.clone().ok_or_else(|| {
            HubError::Other(format!(
                "{} did not say which commit `{r}` is (no `sha` in the repo info)",
                self.cfg.endpoint
            ))
        })?;
        if !(commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit())) {
            return Err(HubError::Other(format!(
                "{} answered an invalid commit id for `{r}`",
                self.cfg.endpoint
            )));
        }
        let files = download::run(download::list_tree(&self.cfg, &r.repo, &commit))?;
        Ok(RepoListing {
            repo: r.repo.clone(),
            revision: r.revision.clone(),
            commit,
            files,
        })
    }

    /// Fetch one small file of the repo into memory (config.json and the like; at most
    /// `max` bytes), verified against its listing entry.
    pub fn fetch_small(
        &self,
        l: &RepoListing,
        path: &str,
        max: u64,
    ) -> Result<Option<Vec<u8>>, HubError> {
        let Some(f) = l.files.iter().find(|f| f.path == path) else {
            return Ok(None);
        };
        if f.size > max {
            return Ok(None);
        }
        download::run(download::fetch_bytes(
            &self.cfg, &l.repo, &l.commit, f, None,
        ))
        .map(Some)
    }

    /// The first `len` bytes of a file (a GGUF header, for its architecture).
    pub fn fetch_prefix(
        &self,
        l: &RepoListing,
        f: &RemoteFile,
        len: u64,
    ) -> Result<Vec<u8>, HubError> {
        download::run(download::fetch_bytes(
            &self.cfg,
            &l.repo,
            &l.commit,
            f,
            Some(len.min(f.size)),
        ))
    }

    /// Download `files` of the listing into the cache (verified, resumable, locked
    /// against other processes) and link them into the snapshot.
    pub fn pull(
        &self,
        l: &RepoListing,
        files: &[RemoteFile],
        progress: &progress::Progress,
    ) -> Result<Snapshot, HubError> {
        self.online(&format!("downloading `{}`", l.repo))?;
        download::run(download::pull(&self.cfg, l, files, progress))
    }
}

pub(crate) fn user_agent() -> String {
    format!("mlxengine/{}", env!("CARGO_PKG_VERSION"))
}

/// Drop anything that looks like a token from a message from a library.
pub(crate) fn scrub(msg: &str) -> String {
    let delim = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | ';' | '=');
    msg.split_inclusive(delim)
        .map(|w| {
            let core = w.trim_end_matches(delim);
            if core.starts_with("hf_") {
                format!("hf_***{}", &w[core.len()..])
            } else {
                w.to_owned()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        assert_eq!(
            RepoRef::parse("a/b@v1.0").unwrap(),
            RepoRef {
                repo: "a/b".into(),
                revision: "v1.0".into()
            }
        );
        assert_eq!(RepoRef::parse("gpt2").unwrap().revision, "main");
        for bad in [
            "", "a/b/c", "/b", "a/", "a b/c", "a/b..c", "../x", "a/b@", "a/b@../x", "a/-b",
            "a/b@x//y", "a/b\u{0}",
        ] {
            assert!(RepoRef::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn repo_paths() {
        for ok in [
            "config.json",
            "1_Pooling/config.json",
            "a.b/c-d_e.safetensors",
        ] {
            validate_repo_path("r", ok).unwrap();
        }
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "./a",
            "a\\..\\b",
            "a/",
            "",
            "a\nb",
        ] {
            assert!(
                validate_repo_path("r", bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn token_never_printed() {
        let t = Token("hf_secret123".into());
        assert!(!format!("{t:?}").contains("secret"));
        assert_eq!(
            scrub("bad header Bearer hf_secret123 x"),
            "bad header Bearer hf_*** x"
        );
    }
}
