//! `GET /v1/models`, `/v1/models/{id}`, and the admin `POST /v1/models/load` and
//! `/v1/models/unload`.

use crate::middleware::{body_error, labelled};
use crate::{
    openai::{parse, ApiError, ModelAction},
    AppState, St,
};
use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, Path, State},
    response::{IntoResponse, Response},
    Json,
};
use engine::ModelEntry;
use plugin_api::Features;
use serde_json::{json, Value};
use std::time::Instant;

pub(crate) fn model_json(st: &AppState, e: &engine::ModelEntry, loaded: &[String]) -> Value {
    json!({
        "id": e.id,
        "object": "model",
        "created": 0,
        "owned_by": "mlxengine",
        "kind": e.kind.to_string(),
        "architecture": e.architecture,
        "context_length": e.context_length,
        "loaded": loaded.iter().any(|l| l == &e.id),
        "default": st.engine.default_model(e.kind).ok().as_deref() == Some(e.id.as_str()),
    })
}

pub(crate) async fn list_models(State(st): State<St>) -> Json<Value> {
    let loaded = st.engine.loaded_ids();
    let reg = st.engine.registry();
    let data: Vec<Value> = reg.models().map(|e| model_json(&st, e, &loaded)).collect();
    Json(json!({"object": "list", "data": data}))
}

pub(crate) async fn get_model(State(st): State<St>, Path(id): Path<String>) -> Response {
    // Only registered ids label the metrics: an unknown one must not add a series.
    match st.engine.entry(&id) {
        Ok(e) => labelled(
            &id,
            Ok(Json(model_json(&st, &e, &st.engine.loaded_ids())).into_response()),
        ),
        Err(e) => labelled("", Err(ApiError::from_host(&e))),
    }
}

pub(crate) async fn load_model(
    State(st): State<St>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut model = String::new();
    let r = async {
        let entry = registered(&st, body)?;
        model = entry.id.clone();
        let started = Instant::now();
        let engine = st.engine.clone();
        let id = model.clone();
        let m = tokio::task::spawn_blocking(move || engine.load(&id, entry.kind, Features::NONE))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::from_host(&e))?;
        let secs = started.elapsed().as_secs_f64();
        st.metrics.model_loaded(&model, secs);
        Ok(Json(json!({
            "id": model,
            "object": "model",
            "loaded": true,
            "plugin": m.plugin,
            "backend": m.info.backend.as_str(),
            "load_seconds": secs,
        }))
        .into_response())
    }
    .await;
    labelled(&model, r)
}

pub(crate) async fn unload_model(
    State(st): State<St>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut model = String::new();
    let r = async {
        model = registered(&st, body)?.id;
        let unloaded = st.engine.unload(&model);
        Ok(Json(json!({"id": model, "object": "model", "unloaded": unloaded})).into_response())
    }
    .await;
    labelled(&model, r)
}

/// The registered model an admin request's body (`{"model": ID}`) names.
fn registered(st: &AppState, body: Result<Bytes, BytesRejection>) -> Result<ModelEntry, ApiError> {
    let a: ModelAction = parse(&body.map_err(body_error)?)?;
    st.engine
        .entry(&a.model)
        .map_err(|e| ApiError::from_host(&e))
}
