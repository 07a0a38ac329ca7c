//! REST handlers of the order service.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use tiffin_runtime::http::NotAFault;
use tiffin_runtime::json::Json;
use tiffin_runtime::problem::{Problem, internal_error};
use tiffin_runtime::time::now_millis;
use tiffin_runtime::token::{Caller, Claims, Role};
use tiffin_runtime::trace::TraceContext;

use crate::AppState;
use crate::domain::{self, OrderEvent, OrderStatus, PlaceOrderRequest};
use crate::place::place_order;
use crate::saga::{self, Change, Outcome};
use crate::storage::{self, OrderRecord};

/// Builds the service's routes (without the common layers).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/orders", post(create_order))
        .route("/v1/orders/{id}", get(get_order))
        .route("/v1/orders/{id}/status", get(get_status))
        .route("/v1/orders/{id}/cancel", post(cancel_order))
        .route("/v1/users/{id}/orders", get(list_user_orders))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// A placement the order service admits: while the kitchen or the outbox relay is
/// behind, the request is rejected with 503 before its token is verified or its body read, so that a
/// client retrying without pause costs little. A retry with the same
/// `Idempotency-Key` after `Retry-After` places the order or returns the one it
/// placed before.
struct Admitted;

impl FromRequestParts<AppState> for Admitted {
    type Rejection = Response;

    async fn from_request_parts(_parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Err(behind) = state.admission.admit().await else {
            return Ok(Self);
        };
        tracing::debug!(%behind, "order rejected with 503");
        let problem =
            Problem::unavailable(format!("{behind}; retry with the same Idempotency-Key"), 1);
        // The admission state logs when it starts and stops rejecting; a warning per
        // rejected request would flood the log exactly when the service is busiest.
        Err((Extension(NotAFault), problem).into_response())
    }
}

/// The response body of `POST /v1/orders`.
#[derive(Debug, Serialize)]
struct CreatedOrder {
    id: String,
    status: OrderStatus,
    total_cents: i64,
    currency: String,
    payment_id: String,
}

async fn create_order(
    _admitted: Admitted,
    State(state): State<AppState>,
    Extension(trace): Extension<TraceContext>,
    Caller(claims): Caller,
    headers: HeaderMap,
    Json(request): Json<PlaceOrderRequest>,
) -> Result<Response, Problem> {
    if claims.role != Role::Customer {
        return Err(Problem::forbidden("only customers place orders"));
    }
    let key = domain::validate_idempotency_key(
        headers.get("idempotency-key").and_then(|v| v.to_str().ok()),
    )?;

    // The flow runs in a task of its own: a client that disconnects must not cancel
    // it between the payment's authorization and the order's commit, which would
    // leave money held for an order that does not exist.
    let placed = {
        let state = state.clone();
        let customer = claims.sub.clone();
        tokio::spawn(async move { place_order(&state, &customer, &key, &request, trace).await })
            .await
            .map_err(|error| {
                tiffin_runtime::problem::internal_error(anyhow::anyhow!(
                    "the order placement task failed: {error}"
                ))
            })??
    };

    let order = placed.order;
    let location = format!("/v1/orders/{}", order.id);
    let body = CreatedOrder {
        id: order.id,
        status: order.status,
        total_cents: order.total_cents,
        currency: order.currency,
        payment_id: order.payment_id,
    };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    if placed.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

async fn get_order(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path(id): Path<String>,
) -> Result<Json<OrderRecord>, Problem> {
    tracing::Span::current().record("order_id", id.as_str());
    let order = load_visible(&state, &claims, &id).await?;
    Ok(Json(order))
}

#[derive(Debug, Serialize)]
struct StatusView {
    id: String,
    status: OrderStatus,
    updated_at: i64,
}

async fn get_status(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path(id): Path<String>,
) -> Result<Json<StatusView>, Problem> {
    tracing::Span::current().record("order_id", id.as_str());
    let order = load_visible(&state, &claims, &id).await?;
    Ok(Json(StatusView {
        id: order.id,
        status: order.status,
        updated_at: order.updated_at,
    }))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

#[derive(Debug, Serialize)]
struct OrderList {
    items: Vec<OrderRecord>,
}

async fn list_user_orders(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path(user_id): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Json<OrderList>, Problem> {
    if claims.sub != user_id && claims.role != Role::Admin {
        return Err(Problem::forbidden(format!(
            "you may list only your own orders (GET /v1/users/{}/orders)",
            claims.sub
        )));
    }
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(Problem::invalid_field(
            "limit",
            format!("limit is {limit}; it must be between 1 and 200"),
        ));
    }
    let items = storage::list_customer_orders(&state.db, &user_id, limit)
        .await
        .map_err(internal_error)?;
    Ok(Json(OrderList { items }))
}

/// The optional body of `POST /v1/orders/{id}/cancel`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    reason: Option<String>,
}

/// Cancels an order before pickup. Cancelling a cancelled order returns it again; an
/// order past the point of cancelling gives 409 with the reason. Another customer's
/// order gives 404 like an unknown one, so nobody learns which orders exist.
async fn cancel_order(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceContext>,
    Caller(claims): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<OrderRecord>, Problem> {
    tracing::Span::current().record("order_id", id.as_str());
    let not_found = || Problem::not_found(format!("order {id} does not exist"));
    let order = storage::find_order(&state.db, &id)
        .await
        .map_err(internal_error)?
        .ok_or_else(not_found)?;
    if order.customer_id != claims.sub && claims.role != Role::Admin {
        return Err(not_found());
    }
    let request: CancelRequest = if body.is_empty() {
        CancelRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|error| {
            Problem::invalid_field("reason", format!("invalid cancel request body: {error}"))
        })?
    };
    let reason = request
        .reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "customer_request".to_owned());
    if reason.len() > 200 {
        return Err(Problem::invalid_field(
            "reason",
            format!(
                "reason is {} bytes long; at most 200 are allowed",
                reason.len()
            ),
        ));
    }

    let outcome = async {
        let mut tx = state.db.begin_write_for(&[&id]).await?;
        let change = Change {
            order_id: &id,
            event: OrderEvent::Cancelled,
            at: now_millis(),
            reason: Some(&reason),
            event_id: None,
            trace,
        };
        let outcome = saga::apply(&mut tx, &change).await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(outcome)
    }
    .await
    .map_err(internal_error)?;

    match outcome {
        Outcome::Moved { .. } => {
            state.relay_waker.notify_one();
            state.compensation_waker.notify_one();
            tracing::info!(%reason, "order cancelled");
        }
        Outcome::Stale(_) => {}
        Outcome::Illegal(status) => {
            let why = match status {
                OrderStatus::PickedUp => "a courier has already picked it up".to_owned(),
                OrderStatus::Delivered => "it has already been delivered".to_owned(),
                other => format!("it is already {other}"),
            };
            return Err(Problem::conflict(format!(
                "order {id} cannot be cancelled: {why}"
            )));
        }
        Outcome::UnknownOrder => return Err(not_found()),
    }
    let order = storage::find_order(&state.db, &id)
        .await
        .map_err(internal_error)?
        .ok_or_else(not_found)?;
    Ok(Json(order))
}

/// Loads an order the caller may see: their own, or any for an admin.
async fn load_visible(state: &AppState, claims: &Claims, id: &str) -> Result<OrderRecord, Problem> {
    let order = storage::find_order(&state.db, id)
        .await
        .map_err(internal_error)?
        .ok_or_else(|| Problem::not_found(format!("order {id} does not exist")))?;
    if order.customer_id != claims.sub && claims.role != Role::Admin {
        return Err(Problem::forbidden(format!(
            "order {id} belongs to another customer"
        )));
    }
    Ok(order)
}

/// Returns 200 when the database responds and the menu replica has caught up with the
/// catalog's stream, so prices are known.
async fn readyz(State(state): State<AppState>) -> Result<&'static str, Problem> {
    storage::menu_replica_size(&state.db)
        .await
        .map_err(|error| {
            tracing::warn!(error = %error, "database check failed");
            Problem::unavailable("the order database does not answer", 1)
        })?;
    if !*state.replica_caught_up.borrow() {
        return Err(Problem::unavailable(
            "the menu replica is still catching up with the catalog",
            1,
        ));
    }
    Ok("ready")
}
