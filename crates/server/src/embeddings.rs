//! `POST /v1/embeddings`.

use crate::middleware::{body_error, labelled};
use crate::{
    openai::{self, parse, ApiError, EmbeddingRequest},
    resolve, St,
};
use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, State},
    response::{IntoResponse, Response},
    Json,
};
use base64::Engine as _;
use engine::request::Embed;
use plugin_api::{
    embed::{EmbedRequest, Pooling},
    ModelKind,
};
use serde_json::{json, Value};
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

pub(crate) async fn embeddings(
    State(st): State<St>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut model = String::new();
    let r = async {
        let req: EmbeddingRequest = parse(&body.map_err(body_error)?)?;
        let entry = resolve(&st, req.model.as_deref(), &[ModelKind::EMBED], "/v1/embeddings")?;
        model = entry.id.clone();
        let texts = match req.input {
            openai::EmbedInput::One(t) => vec![t],
            openai::EmbedInput::Many(v) => v,
            openai::EmbedInput::Tokens(_) => {
                return Err(ApiError::invalid(
                    "input",
                    "token-id input is not supported; send text",
                ))
            }
        };
        let base64 = match req.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(ApiError::invalid(
                    "encoding_format",
                    format!("`encoding_format` must be `float` or `base64` (got `{other}`)"),
                ))
            }
        };
        let ereq = Embed::new(EmbedRequest {
            texts: texts.iter().map(|t| t.as_str().into()).collect(),
            pooling: Pooling::MODEL_DEFAULT,
            normalize: None.into(),
            truncate: false,
            options: "".into(),
        })
        // The engine's rules (count, empty texts); its `texts` is the API's `input`.
        .map_err(|e| ApiError::invalid(&e.field.replacen("texts", "input", 1), e.message))?;
        // Bounded like generation: at most --max-queue requests in flight per model, each
        // answered within --request-timeout. The slot stays taken until the work really
        // ends: at most one more chunk of texts after a timeout or a disconnect.
        let slot = st.embed_slots.take(&model, st.opts.max_queue).inspect_err(|_| {
            st.metrics.rejected("queue_full");
        })?;
        // A client that leaves (this future is dropped) or a request past its time limit
        // stops the work before its next chunk of texts.
        let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
        let (engine, id, cancelled) = (st.engine.clone(), model.clone(), cancel.0.clone());
        let work = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            engine.embed_until(&id, &ereq, &|| cancelled.load(Ordering::Relaxed))
        });
        let resp = tokio::time::timeout(st.opts.request_timeout, work)
            .await
            .map_err(|_| ApiError::timeout())?
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::from_host(&e))?;
        let dim = resp.dim as usize;
        if let Some(d) = req.dimensions {
            if d as usize != dim {
                return Err(ApiError::invalid(
                    "dimensions",
                    format!("model `{model}` makes {dim}-dimensional vectors; `dimensions` must be {dim} or absent"),
                ));
            }
        }
        let data: Vec<Value> = resp
            .data
            .chunks(dim.max(1))
            .enumerate()
            .map(|(i, v)| {
                let embedding = if base64 {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(v)
                };
                json!({"object": "embedding", "index": i, "embedding": embedding})
            })
            .collect();
        let tokens = resp.prompt_tokens;
        Ok(Json(json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }))
        .into_response())
    }
    .await;
    labelled(&model, r)
}

/// Sets its flag when dropped: when the handler ends, however it ends.
pub(crate) struct CancelOnDrop(pub(crate) Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Embedding requests in flight, per model.
#[derive(Default)]
pub(crate) struct Slots(Mutex<HashMap<String, usize>>);

/// One request's place among a model's in-flight embedding requests; freed on drop.
pub(crate) struct Slot {
    slots: Arc<Slots>,
    model: String,
}

impl Slots {
    /// A slot for `model`, or 429 when `max` requests are in flight already.
    pub(crate) fn take(self: &Arc<Self>, model: &str, max: usize) -> Result<Slot, ApiError> {
        let mut n = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let c = n.entry(model.to_owned()).or_insert(0);
        if *c >= max {
            return Err(ApiError::queue_full(model, max));
        }
        *c += 1;
        Ok(Slot {
            slots: self.clone(),
            model: model.to_owned(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut n = self.slots.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = n.get_mut(&self.model) {
            *c = c.saturating_sub(1);
        }
    }
}
