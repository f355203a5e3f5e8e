//! HTTP plumbing of the store: the client, URLs, the token header, error answers, and
//! which failures are retried after how long.

use crate::{scrub, status_error, user_agent, HubConfig, HubError};
use reqwest::{header, StatusCode, Url};
use std::{future::Future, time::Duration};

/// Run `fut` to completion on a fresh single-threaded runtime on its own thread, so
/// callers may be plain threads or inside another tokio runtime.
pub fn run<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime for the download")
                .block_on(fut)
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

pub(crate) fn client() -> Result<reqwest::Client, HubError> {
    reqwest::Client::builder()
        .user_agent(user_agent())
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::limited(10))
        .build()
        .map_err(|e| HubError::Other(format!("HTTP client: {e}")))
}

pub(crate) fn authed(cfg: &HubConfig, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match &cfg.token {
        Some(t) => rb.header(header::AUTHORIZATION, t.header()),
        None => rb,
    }
}

pub(crate) fn url(cfg: &HubConfig, segments: &[&str], path: Option<&str>) -> Result<Url, HubError> {
    let mut u = Url::parse(&cfg.endpoint)
        .map_err(|e| HubError::Other(format!("HF_ENDPOINT `{}`: {e}", cfg.endpoint)))?;
    {
        let mut s = u.path_segments_mut().map_err(|_| {
            HubError::Other(format!(
                "HF_ENDPOINT `{}` cannot be a base URL",
                cfg.endpoint
            ))
        })?;
        s.pop_if_empty();
        for seg in segments {
            s.extend(seg.split('/'));
        }
        if let Some(p) = path {
            s.extend(p.split('/'));
        }
    }
    Ok(u)
}

pub(crate) fn net(what: impl Into<String>, e: &reqwest::Error) -> HubError {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    HubError::Network {
        what: what.into(),
        msg: scrub(&msg),
    }
}

pub(crate) fn header_str<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

pub(crate) async fn error_of(
    cfg: &HubConfig,
    repo: &str,
    revision: &str,
    file: Option<&str>,
    r: reqwest::Response,
) -> HubError {
    let status = r.status().as_u16();
    let code = header_str(&r, "x-error-code").map(str::to_owned);
    let msg = header_str(&r, "x-error-message").map(str::to_owned);
    status_error(
        cfg,
        repo,
        revision,
        file,
        status,
        code.as_deref(),
        msg.as_deref(),
    )
}

pub(crate) fn retryable(s: StatusCode) -> bool {
    s == StatusCode::REQUEST_TIMEOUT || s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error()
}

pub(crate) fn backoff(cfg: &HubConfig, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = cfg.backoff.saturating_mul(1 << attempt.min(5));
    retry_after
        .unwrap_or(exp)
        .min(Duration::from_secs(30))
        .min(exp.max(Duration::from_secs(8)))
}
