//! HTTP handlers.

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::routing::get;
use tiffin_runtime::db::Database;
use tiffin_runtime::json::Json;
use tiffin_runtime::problem::{Problem, internal_error};

use crate::domain::Delivery;
use crate::storage::{self, CourierCounts};

/// Builds the delivery service's routes, without the common layers.
pub(crate) fn routes(db: Database) -> Router {
    Router::new()
        .route("/v1/delivery/orders/{order_id}", get(get_delivery))
        .route("/v1/delivery/couriers", get(get_couriers))
        .route("/readyz", get(readyz))
        .with_state(db)
}

/// `GET /v1/delivery/orders/{order_id}`: the order's delivery with its status, its
/// courier and its times in Unix milliseconds, each null until the step happens
/// (`assigned_at`, the planned `pickup_due` and `delivered_due`, `picked_up_at`,
/// `delivered_at`, `cancelled_at`).
async fn get_delivery(
    State(db): State<Database>,
    order_id: Result<Path<String>, PathRejection>,
) -> Result<Json<Delivery>, Problem> {
    let Path(order_id) =
        order_id.map_err(|rejection| Problem::invalid_field("order_id", rejection.body_text()))?;
    tracing::Span::current().record("order_id", order_id.as_str());

    match storage::find_delivery(db.pool(), &order_id).await {
        Ok(Some(delivery)) => Ok(Json(delivery)),
        Ok(None) => Err(Problem::not_found(format!(
            "no delivery for order {order_id}: the delivery service creates one when it \
             receives the order's order.ready event, so retry once the kitchen has \
             reported the food ready"
        ))),
        Err(error) => Err(internal_error(error)),
    }
}

/// `GET /v1/delivery/couriers`: how many couriers there are, and how many of them are
/// free and busy.
async fn get_couriers(State(db): State<Database>) -> Result<Json<CourierCounts>, Problem> {
    storage::courier_counts(db.pool())
        .await
        .map(Json)
        .map_err(internal_error)
}

/// `GET /readyz`: 200 when the database responds, 503 otherwise.
async fn readyz(State(db): State<Database>) -> Result<&'static str, Problem> {
    match storage::ping(db.pool()).await {
        Ok(()) => Ok("ready"),
        Err(error) => {
            tracing::warn!(error = %error, "readiness check failed");
            Err(Problem::unavailable(
                "the delivery service's database does not answer",
                5,
            ))
        }
    }
}
