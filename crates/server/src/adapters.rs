//! The admin endpoints of LoRA adapters: `GET /v1/adapters`, `POST /v1/adapters/load`
//! (`{"id"}` of a `lora` entry, or `{"id", "base", "path", "scale"}` to register one
//! first) and `POST /v1/adapters/unload` (`{"id"}`). Loading runs beside the requests in
//! flight; the provider keeps them apart.

use crate::middleware::{body_error, labelled};
use crate::{
    openai::{parse, AdapterAction, ApiError},
    St,
};
use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, State},
    response::{IntoResponse, Response},
    Json,
};
use engine::AdapterStatus;
use serde_json::{json, Value};
use std::{path::PathBuf, time::Instant};

fn status_json(a: &AdapterStatus) -> Value {
    json!({
        "id": a.id,
        "object": "adapter",
        "base": a.base,
        "scale": a.scale,
        "loaded": !a.loaded_on.is_empty(),
        "loaded_on": a.loaded_on,
        "bytes": a.bytes,
    })
}

pub(crate) async fn list(State(st): State<St>) -> Json<Value> {
    let data: Vec<Value> = st.engine.adapters().iter().map(status_json).collect();
    Json(json!({"object": "list", "data": data}))
}

pub(crate) async fn load(State(st): State<St>, body: Result<Bytes, BytesRejection>) -> Response {
    let r = async {
        let a: AdapterAction = parse(&body.map_err(body_error)?)?;
        let engine = st.engine.clone();
        let started = Instant::now();
        let status = tokio::task::spawn_blocking(move || {
            if let (Some(base), Some(path)) = (&a.base, &a.path) {
                engine.register_adapter(&a.id, base, &PathBuf::from(path), a.scale)?;
            } else if a.base.is_some() || a.path.is_some() || a.scale.is_some() {
                return Err(engine::HostError::Adapter {
                    id: a.id.clone(),
                    reason: "to register an adapter give both `base` and `path` (and optionally \
                             `scale`); to load a registered one give only `id`"
                        .into(),
                });
            }
            engine.load_adapter(&a.id)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::from_host(&e))?;
        let mut v = status_json(&status);
        v["load_seconds"] = json!(started.elapsed().as_secs_f64());
        Ok(Json(v).into_response())
    }
    .await;
    labelled("", r)
}

pub(crate) async fn unload(State(st): State<St>, body: Result<Bytes, BytesRejection>) -> Response {
    let r = async {
        let a: AdapterAction = parse(&body.map_err(body_error)?)?;
        let engine = st.engine.clone();
        let id = a.id.clone();
        let unloaded = tokio::task::spawn_blocking(move || {
            engine.entry(&id)?;
            engine.unload_adapter(&id)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::from_host(&e))?;
        Ok(Json(json!({"id": a.id, "object": "adapter", "unloaded": unloaded})).into_response())
    }
    .await;
    labelled("", r)
}
