//! The JSON body extractor of the API: checks the content type, enforces the size limit and
//! reports parse errors with the field's path (axum's `Json` rejections are plain text and do
//! not name the field).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use sapllm_engine::request::parse_json;

/// A request body parsed from JSON.
pub struct JsonBody<T>(pub T);

/// A request body parsed from JSON, with its bytes as received (to pass it on unchanged).
pub struct JsonBytes<T>(pub T, pub Bytes);

/// The checked content type and the bytes of a JSON body.
async fn json_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime != "application/json" && !mime.ends_with("+json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "expected Content-Type: application/json, got {:?}",
                if ct.is_empty() { "(none)" } else { ct }
            ),
        )
        .field("content-type"));
    }
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body exceeds the size limit",
            )
            .field("body")
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "unreadable_body", e.body_text()).field("body")
        }
    })
}

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = json_bytes(req, state).await?;
        parse_json(&bytes).map(JsonBody).map_err(ApiError::bad_request)
    }
}

impl<S, T> FromRequest<S> for JsonBytes<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = json_bytes(req, state).await?;
        let parsed = parse_json(&bytes).map_err(ApiError::bad_request)?;
        Ok(JsonBytes(parsed, bytes))
    }
}
