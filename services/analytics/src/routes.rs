//! REST handlers of the analytics service.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use tiffin_runtime::db::Database;
use tiffin_runtime::json::Json;
use tiffin_runtime::problem::{Problem, internal_error};

use crate::storage::{self, Summary};

/// Builds the service's routes (without the common layers).
pub fn router(db: Database) -> Router {
    Router::new()
        .route("/v1/analytics/summary", get(summary))
        .route("/readyz", get(readyz))
        .with_state(db)
}

async fn summary(State(db): State<Database>) -> Result<Json<Summary>, Problem> {
    Ok(Json(storage::summary(&db).await.map_err(internal_error)?))
}

async fn readyz(State(db): State<Database>) -> Result<&'static str, Problem> {
    storage::fact_count(&db).await.map_err(|error| {
        tracing::warn!(error = %error, "database check failed");
        Problem::unavailable("the analytics database does not answer", 1)
    })?;
    Ok("ready")
}
