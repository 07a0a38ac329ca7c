//! HTTP handlers.

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::routing::get;
use tiffin_runtime::db::Database;
use tiffin_runtime::json::Json;
use tiffin_runtime::problem::{Problem, internal_error};

use crate::domain::Ticket;
use crate::storage;

/// Builds the kitchen's routes, without the common layers.
pub(crate) fn routes(db: Database) -> Router {
    Router::new()
        .route("/v1/kitchen/tickets/{order_id}", get(get_ticket))
        .route("/readyz", get(readyz))
        .with_state(db)
}

/// `GET /v1/kitchen/tickets/{order_id}`: the order's ticket with its status and its
/// times in Unix milliseconds (`accepted_at`, the planned `ready_by`, and `ready_at`,
/// which is null until the food is ready).
async fn get_ticket(
    State(db): State<Database>,
    order_id: Result<Path<String>, PathRejection>,
) -> Result<Json<Ticket>, Problem> {
    let Path(order_id) =
        order_id.map_err(|rejection| Problem::invalid_field("order_id", rejection.body_text()))?;
    tracing::Span::current().record("order_id", order_id.as_str());

    match storage::find_ticket(db.pool(), &order_id).await {
        Ok(Some(ticket)) => Ok(Json(ticket)),
        Ok(None) => Err(Problem::not_found(format!(
            "no kitchen ticket for order {order_id}: the kitchen opens one when it receives \
             the order's order.placed event, so retry shortly if the order was placed just now"
        ))),
        Err(error) => Err(internal_error(error)),
    }
}

/// `GET /readyz`: 200 when the database responds, 503 otherwise.
async fn readyz(State(db): State<Database>) -> Result<&'static str, Problem> {
    match storage::ping(db.pool()).await {
        Ok(()) => Ok("ready"),
        Err(error) => {
            tracing::warn!(error = %error, "readiness check failed");
            Err(Problem::unavailable(
                "the kitchen's database does not answer",
                5,
            ))
        }
    }
}
