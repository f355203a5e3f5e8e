//! Remote images: `http(s)` URLs in image content parts, fetched only when the server
//! was started with `--allow-remote-images`, and then within limits — bytes (checked
//! against `Content-Length` first, then counted as the body streams in), time (the
//! whole fetch), redirects, images per request — and only `image/*` answers. Each
//! refusal is a 400 naming the content part and the URL.

use crate::openai::{ApiError, ChatInput};
use plugin_api::text::ContentPart;
use std::time::Duration;

/// Limits of fetching remote images.
#[derive(Clone, Debug)]
pub struct RemoteImages {
    /// Largest image body, in bytes.
    pub max_bytes: usize,
    /// Time one fetch may take, connection to last byte.
    pub timeout: Duration,
    /// Redirects one fetch may follow.
    pub max_redirects: usize,
    /// Remote images one request may name.
    pub max_per_request: usize,
}

impl Default for RemoteImages {
    fn default() -> Self {
        Self {
            max_bytes: crate::openai::MAX_IMAGE_BYTES,
            timeout: Duration::from_secs(10),
            max_redirects: 3,
            max_per_request: 8,
        }
    }
}

/// The HTTP client for remote images.
pub(crate) struct Fetcher {
    client: reqwest::Client,
    limits: RemoteImages,
}

impl Fetcher {
    pub(crate) fn new(limits: RemoteImages) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(limits.max_redirects))
            .timeout(limits.timeout)
            .connect_timeout(limits.timeout)
            .user_agent(concat!("mlxengine/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, limits })
    }

    /// Fetches every remote image `chat` names into its place.
    pub(crate) async fn fill(&self, chat: &mut ChatInput) -> Result<(), ApiError> {
        if chat.remote.len() > self.limits.max_per_request {
            return Err(ApiError::invalid(
                &chat.remote[self.limits.max_per_request].param,
                format!(
                    "a request may name at most {} remote images",
                    self.limits.max_per_request
                ),
            ));
        }
        for r in std::mem::take(&mut chat.remote) {
            let part = self.image(&r.url, &r.param).await?;
            chat.messages[r.message].parts[r.part] = part;
        }
        Ok(())
    }

    async fn image(&self, url: &str, param: &str) -> Result<ContentPart, ApiError> {
        let param = format!("{param}.image_url");
        let bad = |m: String| ApiError::invalid(&param, format!("fetching {url}: {m}"));
        let why = |e: reqwest::Error| {
            if e.is_timeout() {
                format!("no answer within {} s", self.limits.timeout.as_secs_f32())
            } else if e.is_redirect() {
                format!("more than {} redirects", self.limits.max_redirects)
            } else {
                e.to_string()
            }
        };
        let mut resp = self.client.get(url).send().await.map_err(|e| bad(why(e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(bad(format!("the server answered {status}")));
        }
        let mime = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        if !mime.starts_with("image/") {
            return Err(bad(format!(
                "the answer is `{}`, not an image type",
                if mime.is_empty() { "untyped" } else { &mime }
            )));
        }
        let max = self.limits.max_bytes;
        let too_big = || bad(format!("the image is larger than {} MB", max >> 20));
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(too_big());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| bad(why(e)))? {
            if bytes.len() + chunk.len() > max {
                return Err(too_big());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(ContentPart::image(bytes, mime.as_str()))
    }
}
