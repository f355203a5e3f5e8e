//! Around every handler: request id, auth, the shutdown gate, metrics and the request
//! log; and the answers for unknown routes, wrong methods and unreadable bodies.

use crate::{openai::ApiError, ModelLabel, St};
use axum::{
    body::{Body, Bytes},
    extract::{rejection::BytesRejection, MatchedPath, Request, State},
    http::{header, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};
use tracing::Instrument;
/// Request id, auth, shutdown gate, metrics and the request log, around every handler.
pub(crate) async fn around(State(st): State<St>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req-{}", st.next_id.fetch_add(1, Ordering::Relaxed)));
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |p| p.as_str())
        .to_owned();
    let method = req.method().clone();
    let span = tracing::info_span!("request", id = %id, method = %method, path = %req.uri().path());
    let started = Instant::now();
    let mut resp = async {
        if endpoint != "/health" {
            if let Some(key) = &st.opts.api_key {
                let given = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
                    return ApiError::unauthorized().into_response();
                }
            }
        }
        if st.shutting_down.load(Ordering::Relaxed) && endpoint != "/health" {
            st.metrics.rejected("shutting_down");
            return ApiError::unavailable("the server is shutting down").into_response();
        }
        req.extensions_mut().insert(id.clone());
        // The whole body, within --body-timeout: hyper times only the headers, and a
        // client dribbling its body would hold the connection and its task for ever.
        let (parts, body) = req.into_parts();
        let body = match read_body(body, st.opts.max_body, st.opts.body_timeout).await {
            Ok(b) => b,
            Err(e) => {
                st.metrics.rejected("body");
                return e.into_response();
            }
        };
        next.run(Request::from_parts(parts, Body::from(body))).await
    }
    .instrument(span.clone())
    .await;
    let model = resp
        .extensions()
        .get::<ModelLabel>()
        .map_or(String::new(), |m| m.0.clone());
    let status = resp.status();
    st.metrics.request(&endpoint, &model, status.as_u16());
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            model = %model,
            ms = started.elapsed().as_millis() as u64,
            "done"
        )
    });
    resp
}

/// A request body read whole: at most `max` bytes (413 past that), within `timeout` (408).
async fn read_body(body: Body, max: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    use futures_util::StreamExt;
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::invalid("", format!("request body: {e}")))?;
            if buf.len() + chunk.len() > max {
                let mut e = ApiError::invalid(
                    "",
                    format!("request body: larger than the {max} bytes this server takes (--max-body-mb)"),
                );
                e.status = StatusCode::PAYLOAD_TOO_LARGE;
                return Err(e);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(buf))
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| {
            let mut e = ApiError::timeout();
            e.message = format!(
                "the request body did not arrive within {} s (--body-timeout)",
                timeout.as_secs_f64()
            );
            Err(e)
        })
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A response labelled with its model for the metrics.
pub(crate) fn labelled(model: &str, r: Result<Response, ApiError>) -> Response {
    let mut resp = r.unwrap_or_else(IntoResponse::into_response);
    resp.extensions_mut().insert(ModelLabel(model.to_owned()));
    resp
}

pub(crate) fn body_error(e: BytesRejection) -> ApiError {
    let mut err = ApiError::invalid("", format!("request body: {}", e.body_text()));
    err.status = e.status();
    err
}

pub(crate) async fn no_route(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::no_route(method.as_str(), uri.path())
}

pub(crate) async fn wrong_method(method: Method, uri: axum::http::Uri) -> ApiError {
    let mut e = ApiError::no_route(method.as_str(), uri.path());
    e.status = StatusCode::METHOD_NOT_ALLOWED;
    e.message = format!("{} does not accept {method}", uri.path());
    e
}
