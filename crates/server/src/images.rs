//! `POST /v1/images/generations`: OpenAI's image request (`prompt`, `n`, `size`,
//! `response_format` `b64_json`) with this engine's extensions (`negative_prompt`,
//! `steps`, `guidance`, `seed`, `sampler`), bounded like embeddings (at most
//! `--max-queue` in flight per model, `--request-timeout`), stopped at the next
//! denoising step when the client leaves or the time is up.

use crate::embeddings::CancelOnDrop;
use crate::middleware::{body_error, labelled};
use crate::{
    openai::{parse, ApiError},
    resolve, St,
};
use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, State},
    response::{IntoResponse, Response},
    Json,
};
use base64::Engine as _;
use engine::request::Image;
use plugin_api::{image::ImageRequest, text::StreamControl, ModelKind};
use serde::Deserialize;
use serde_json::json;
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

/// The request body. Unknown fields are refused (a misspelt extension would otherwise
/// be ignored silently); OpenAI's `quality`, `style` and `user` are accepted and unused.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImageGenerationRequest {
    #[serde(default)]
    model: Option<String>,
    prompt: String,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    response_format: Option<String>,
    #[serde(default)]
    negative_prompt: Option<String>,
    #[serde(default)]
    steps: Option<u32>,
    #[serde(default)]
    guidance: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    sampler: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    quality: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    style: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
}

/// `WIDTHxHEIGHT`, or `auto` / absent for the model's default.
fn size(s: Option<&str>) -> Result<(u32, u32), ApiError> {
    let bad = || {
        ApiError::invalid(
            "size",
            format!(
                "`size` must be WIDTHxHEIGHT or `auto` (got `{}`)",
                s.unwrap_or("")
            ),
        )
    };
    match s {
        None | Some("auto") => Ok((0, 0)),
        Some(v) => {
            let (w, h) = v.split_once('x').ok_or_else(bad)?;
            Ok((w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?))
        }
    }
}

pub(crate) async fn images(State(st): State<St>, body: Result<Bytes, BytesRejection>) -> Response {
    let mut model = String::new();
    let r = async {
        let req: ImageGenerationRequest = parse(&body.map_err(body_error)?)?;
        let entry = resolve(&st, req.model.as_deref(), &[ModelKind::DIFFUSION], "/v1/images/generations")?;
        model = entry.id.clone();
        match req.response_format.as_deref() {
            None | Some("b64_json") => {}
            Some(other) => {
                return Err(ApiError::invalid(
                    "response_format",
                    format!("`response_format` must be `b64_json` (got `{other}`): this server keeps no files to link to"),
                ))
            }
        }
        let (width, height) = size(req.size.as_deref())?;
        let ireq = Image::new(ImageRequest {
            prompt: req.prompt.as_str().into(),
            negative_prompt: req.negative_prompt.as_deref().unwrap_or("").into(),
            width,
            height,
            steps: req.steps.unwrap_or(0),
            guidance: req.guidance.unwrap_or(0.0),
            seed: req.seed.into(),
            count: req.n.unwrap_or(1),
            sampler: req.sampler.as_deref().unwrap_or("").into(),
            ..Default::default()
        })
        // The engine's rules; its `count` and `width`/`height` are the API's `n`, `size`.
        .map_err(|e| {
            let field = match e.field.as_str() {
                "count" => "n",
                "width" | "height" => "size",
                f => f,
            };
            ApiError::invalid(field, format!("`{field}`: {}", e.message))
        })?;
        let slot = st.image_slots.take(&model, st.opts.max_queue).inspect_err(|_| {
            st.metrics.rejected("queue_full");
        })?;
        let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
        let (engine, id, cancelled) = (st.engine.clone(), model.clone(), cancel.0.clone());
        let work = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            engine.generate_image(&id, None, &ireq, &mut |_| {
                if cancelled.load(Ordering::Relaxed) {
                    StreamControl::Stop
                } else {
                    StreamControl::Continue
                }
            })
        });
        let resp = tokio::time::timeout(st.opts.request_timeout, work)
            .await
            .map_err(|_| ApiError::timeout())?
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::from_host(&e))?;
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let data: Vec<_> = resp
            .images
            .iter()
            .map(|png| json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(png.as_slice())}))
            .collect();
        Ok(Json(json!({
            "created": created,
            "data": data,
            "model": model,
            "seed": resp.seed,
        }))
        .into_response())
    }
    .await;
    labelled(&model, r)
}
