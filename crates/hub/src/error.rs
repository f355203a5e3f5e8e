//! The store's errors, and how the Hub's error answers map to them.

use crate::HubConfig;
use std::path::PathBuf;

/// What went wrong talking to the Hub or writing the cache. Messages name the repo, the
/// file and the endpoint; never the token.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("invalid model id `{id}`: {why}")]
    InvalidId { id: String, why: String },
    #[error("`{repo}` was not found on {endpoint} (no such model; check the spelling)")]
    RepoNotFound { repo: String, endpoint: String },
    #[error("`{repo}` has no revision `{revision}` (no such branch, tag or commit)")]
    RevisionNotFound { repo: String, revision: String },
    #[error("`{repo}` at {revision} has no file `{file}`")]
    EntryNotFound {
        repo: String,
        revision: String,
        file: String,
    },
    #[error("`{repo}` needs authentication on {endpoint}: it is private or gated (or does not exist). {hint}")]
    AuthRequired {
        repo: String,
        endpoint: String,
        hint: String,
    },
    #[error("`{repo}` is a gated model: your account has not been granted access yet. Accept its terms on {endpoint}/{repo} with the account your token belongs to, then retry")]
    Gated { repo: String, endpoint: String },
    #[error("access to `{repo}` is forbidden for this token (a private repository of another account, or a token without read access to it)")]
    Forbidden { repo: String },
    #[error("the server listed an unsafe file name `{path}` in `{repo}`; refusing to download anything from it")]
    UnsafePath { repo: String, path: String },
    #[error("{what}: HTTP {status}{detail}")]
    Http {
        what: String,
        status: u16,
        detail: String,
    },
    #[error("{what}: {msg}")]
    Network { what: String, msg: String },
    #[error("`{file}` of `{repo}` failed verification {attempts} time(s): {why}. Nothing was kept in the cache")]
    Verify {
        repo: String,
        file: String,
        attempts: u32,
        why: String,
    },
    #[error("{op} {path}: {msg}")]
    Io {
        op: &'static str,
        path: PathBuf,
        msg: String,
    },
    #[error("offline (HF_HUB_OFFLINE is set) and `{repo}` is not fully cached: missing {missing}")]
    Offline { repo: String, missing: String },
    #[error("{0}")]
    Other(String),
}

impl HubError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, e: std::io::Error) -> Self {
        let path = path.into();
        let msg = if e.raw_os_error() == Some(28) {
            format!("{e} — free some disk space and run the same command again; the bytes downloaded so far are kept and the download resumes")
        } else {
            e.to_string()
        };
        HubError::Io { op, path, msg }
    }
}

/// Map an error answer of the Hub to the right [`HubError`], from its status and
/// `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`, `GatedRepo`).
pub(crate) fn status_error(
    cfg: &HubConfig,
    repo: &str,
    revision: &str,
    file: Option<&str>,
    status: u16,
    error_code: Option<&str>,
    message: Option<&str>,
) -> HubError {
    let endpoint = cfg.endpoint.clone();
    match (status, error_code) {
        (_, Some("GatedRepo")) => HubError::Gated {
            repo: repo.to_owned(),
            endpoint,
        },
        (401, _) => HubError::AuthRequired {
            repo: repo.to_owned(),
            endpoint,
            hint: if cfg.token.is_some() {
                "The token that was sent (from HF_TOKEN or the token file) was not accepted for it."
                    .into()
            } else {
                "No token was sent: set HF_TOKEN (or log in with `huggingface-cli login`).".into()
            },
        },
        (403, _) => HubError::Forbidden {
            repo: repo.to_owned(),
        },
        (404, Some("RevisionNotFound")) => HubError::RevisionNotFound {
            repo: repo.to_owned(),
            revision: revision.to_owned(),
        },
        (404, Some("EntryNotFound")) => HubError::EntryNotFound {
            repo: repo.to_owned(),
            revision: revision.to_owned(),
            file: file.unwrap_or("?").to_owned(),
        },
        (404, _) if file.is_some() => HubError::EntryNotFound {
            repo: repo.to_owned(),
            revision: revision.to_owned(),
            file: file.unwrap_or("?").to_owned(),
        },
        (404, _) => HubError::RepoNotFound {
            repo: repo.to_owned(),
            endpoint,
        },
        _ => HubError::Http {
            what: match file {
                Some(f) => format!("downloading `{f}` of `{repo}`"),
                None => format!("asking {endpoint} about `{repo}`"),
            },
            status,
            detail: message
                .map(|m| format!(" ({})", m.chars().take(200).collect::<String>()))
                .unwrap_or_default(),
        },
    }
}
