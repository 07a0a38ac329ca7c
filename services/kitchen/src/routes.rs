//! HTTP handlers: tickets and readiness here, staff stock routes in `stock`.

mod stock;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::routing::get;
use tiffin_runtime::db::Database;
use tiffin_runtime::json::Json;
use tiffin_runtime::problem::{Problem, internal_error};
use tiffin_runtime::token::TokenVerifier;

use crate::domain::Ticket;
use crate::storage;

/// Builds the kitchen's routes, without the common layers. Without `verifier` the
/// staff routes return 503, because no token can be checked.
pub(crate) fn routes(db: Database, verifier: Option<TokenVerifier>) -> Router {
    let staff = match verifier {
        Some(verifier) => stock::routes(stock::StaffState {
            db: db.clone(),
            verifier,
        }),
        None => stock::unavailable_routes(),
    };
    Router::new()
        .route("/v1/kitchen/tickets/{order_id}", get(get_ticket))
        .route("/readyz", get(readyz))
        .with_state(db)
        .merge(staff)
}

/// `GET /v1/kitchen/tickets/{order_id}`: the order's ticket with its status, and the
/// reject reason and detail of a rejected order.
///
/// Times are Unix milliseconds. `accepted_at` and the planned `ready_by` are null for
/// an order that was never accepted, `ready_at` is null until the food is ready, and
/// `cancelled_at` is null unless the order was cancelled.
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
