//! A JSON body extractor whose rejections are problem documents that name the field.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// Request bodies larger than this are rejected with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Like [`axum::Json`], but a malformed body gives a 400 problem document whose detail
/// contains the JSON path of the offending field, a wrong content type gives 415,
/// and an oversized body gives 413.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(problem_from_rejection(&rejection)),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Maps axum's JSON rejection to a problem document.
pub fn problem_from_rejection(rejection: &JsonRejection) -> Problem {
    match rejection {
        JsonRejection::JsonDataError(error) => {
            // axum reports the path of the failing field ("items[0].quantity: ...").
            let detail = error.body_text();
            let detail = detail
                .strip_prefix("Failed to deserialize the JSON body into the target type: ")
                .unwrap_or(&detail)
                .to_owned();
            let field = detail.split_once(": ").map(|(path, _)| path.to_owned());
            let mut problem = Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-request",
                format!("invalid request body: {detail}"),
            );
            if let Some(field) = field.filter(|f| !f.contains(' ')) {
                problem = problem.with_field(field);
            }
            problem
        }
        JsonRejection::JsonSyntaxError(error) => Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            format!("request body is not valid JSON: {}", error.body_text()),
        ),
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "request body must be JSON: send `Content-Type: application/json`",
        ),
        JsonRejection::BytesRejection(error) if error.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                format!("request body is larger than the limit of {MAX_BODY_BYTES} bytes"),
            )
        }
        other => Problem::new(other.status(), "invalid-request", other.body_text()),
    }
}
