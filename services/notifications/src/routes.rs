//! HTTP handlers.

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tiffin_runtime::db::Database;
use tiffin_runtime::json::Json;
use tiffin_runtime::problem::{Problem, internal_error};

use crate::domain::Notification;
use crate::storage;

/// Builds the service's routes, without the common layers.
pub(crate) fn routes(db: Database) -> Router {
    Router::new()
        .route("/v1/notifications", get(list_notifications))
        .route("/readyz", get(readyz))
        .with_state(db)
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    order_id: Option<String>,
}

#[derive(Debug, Serialize)]
struct NotificationList {
    order_id: String,
    notifications: Vec<Notification>,
}

/// `GET /v1/notifications?order_id=ORDER_ID`: the order's notifications, oldest
/// first, as `{"order_id": ..., "notifications": [...]}`. An order without
/// notifications gives an empty list.
async fn list_notifications(
    State(db): State<Database>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<NotificationList>, Problem> {
    let Query(query) =
        query.map_err(|rejection| Problem::invalid_field("order_id", rejection.body_text()))?;
    let order_id = query.order_id.filter(|id| !id.is_empty()).ok_or_else(|| {
        Problem::invalid_field(
            "order_id",
            "missing query parameter order_id: list notifications with \
             GET /v1/notifications?order_id=ORDER_ID",
        )
    })?;
    tracing::Span::current().record("order_id", order_id.as_str());

    let notifications = storage::notifications_of_order(db.pool(), &order_id)
        .await
        .map_err(internal_error)?;
    Ok(Json(NotificationList {
        order_id,
        notifications,
    }))
}

/// `GET /readyz`: 200 when the database responds, 503 otherwise.
async fn readyz(State(db): State<Database>) -> Result<&'static str, Problem> {
    match storage::ping(db.pool()).await {
        Ok(()) => Ok("ready"),
        Err(error) => {
            tracing::warn!(error = %error, "readiness check failed");
            Err(Problem::unavailable(
                "the notifications database does not answer",
                5,
            ))
        }
    }
}
