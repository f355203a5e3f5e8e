//! `POST /v1/images/generations` (answers 501 until a `diffusion` plugin serves it).

use crate::openai::ApiError;
use axum::http::StatusCode;
pub(crate) async fn images() -> ApiError {
    let mut e = ApiError::invalid(
        "",
        "image generation is not served yet: it needs a `diffusion` plugin and model",
    );
    e.status = StatusCode::NOT_IMPLEMENTED;
    e
}
