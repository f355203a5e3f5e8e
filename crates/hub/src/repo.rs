//! Repo ids, revisions and file names, checked against the Hub's rules before any
//! request or any write.

use crate::{cache, HubError};
use std::fmt;

/// A model repository id (`owner/name`, or a bare legacy `name`) and a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    /// `owner/name`.
    pub repo: String,
    /// Branch, tag or commit (`main` when not given).
    pub revision: String,
}

impl RepoRef {
    /// Parse `owner/name[@revision]`, with the Hub's naming rules.
    pub fn parse(s: &str) -> Result<Self, HubError> {
        let (repo, revision) = match s.split_once('@') {
            Some((r, rev)) => (r, rev),
            None => (s, "main"),
        };
        validate_repo_id(repo)?;
        validate_revision(repo, revision)?;
        Ok(Self {
            repo: repo.to_owned(),
            revision: revision.to_owned(),
        })
    }

    /// The cache folder name: `models--owner--name`.
    pub fn folder(&self) -> String {
        cache::repo_folder(&self.repo)
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.revision == "main" {
            f.write_str(&self.repo)
        } else {
            write!(f, "{}@{}", self.repo, self.revision)
        }
    }
}

/// Check a repo id against the Hub's rules: one or two parts of `[A-Za-z0-9._-]`, not
/// starting or ending with `.`/`-`, no `--` or `..`, at most 96 characters a part.
pub fn validate_repo_id(id: &str) -> Result<(), HubError> {
    let bad = |why: &str| HubError::InvalidId {
        id: id.to_owned(),
        why: why.to_owned(),
    };
    if id.is_empty() {
        return Err(bad("it is empty"));
    }
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() > 2 {
        return Err(bad("expected `owner/name` (one `/`)"));
    }
    for p in &parts {
        if p.is_empty() {
            return Err(bad("an empty owner or name"));
        }
        if p.len() > 96 {
            return Err(bad("a part is longer than 96 characters"));
        }
        if let Some(c) = p
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(bad(&format!(
                "character `{c}` is not allowed (letters, digits, `.`, `_`, `-`)"
            )));
        }
        if p.starts_with(['.', '-']) || p.ends_with(['.', '-']) {
            return Err(bad("a part starts or ends with `.` or `-`"));
        }
        if p.contains("--") || p.contains("..") {
            return Err(bad("`--` and `..` are not allowed"));
        }
    }
    Ok(())
}

pub(crate) fn validate_revision(repo: &str, rev: &str) -> Result<(), HubError> {
    let ok = !rev.is_empty()
        && rev.len() <= 255
        && !rev.starts_with('/')
        && !rev.ends_with('/')
        && !rev
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        && rev
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if ok {
        Ok(())
    } else {
        Err(HubError::InvalidId {
            id: format!("{repo}@{rev}"),
            why: format!("revision `{rev}` is not a valid branch, tag or commit name"),
        })
    }
}

/// Check a file name the server listed: relative, `/`-separated, no `.`/`..`/empty
/// segments, no backslashes or control characters. Anything else could write outside
/// the snapshot folder.
pub fn validate_repo_path(repo: &str, path: &str) -> Result<(), HubError> {
    let ok = !path.is_empty()
        && path.len() <= 1024
        && !path.starts_with('/')
        && !path.contains('\\')
        && !path.chars().any(|c| c.is_control())
        && !path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..");
    if ok {
        Ok(())
    } else {
        Err(HubError::UnsafePath {
            repo: repo.to_owned(),
            path: path.escape_debug().to_string(),
        })
    }
}
