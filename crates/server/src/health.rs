//! `GET /health`, `/ready` and `/metrics` (Prometheus text).

use crate::St;
use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use plugin_api::ModelKind;
use serde_json::{json, Value};
pub(crate) async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub(crate) async fn ready(State(st): State<St>) -> Response {
    let check = || -> Result<Value, String> {
        let plugins = st.engine.plugins();
        if plugins.plugins.is_empty() {
            return Err(format!("no plugins loaded (searched {:?})", plugins.dirs));
        }
        let id = st
            .engine
            .default_model(ModelKind::LLM)
            .map_err(|e| e.to_string())?;
        let entry = st.engine.entry(&id).map_err(|e| e.to_string())?;
        let plugin = st
            .engine
            .select_on(&entry, entry.features, entry.backend.as_deref())
            .map_err(|e| e.to_string())?;
        st.engine.local_path(&entry).map_err(|e| e.to_string())?;
        Ok(json!({
            "status": "ready",
            "plugins": plugins.plugins.iter().map(|p| p.descriptor.name.as_str()).collect::<Vec<_>>(),
            "default_model": id,
            "default_model_plugin": plugin.descriptor.name.as_str(),
            "loaded": st.engine.loaded_ids(),
        }))
    };
    match check() {
        Ok(v) => Json(v).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason})),
        )
            .into_response(),
    }
}

pub(crate) async fn metrics_text(State(st): State<St>) -> Response {
    let text = st.metrics.render(st.engine.loaded_ids().len());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
