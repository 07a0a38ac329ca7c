//! REST handlers of the order service.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use tiffin_runtime::json::Json;
use tiffin_runtime::problem::{Problem, internal_error};
use tiffin_runtime::token::{Caller, Claims, Role};
use tiffin_runtime::trace::TraceContext;

use crate::AppState;
use crate::domain::{self, OrderStatus, PlaceOrderRequest};
use crate::place::place_order;
use crate::storage::{self, OrderRecord};

/// Builds the service's routes (without the common layers).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/orders", post(create_order))
        .route("/v1/orders/{id}", get(get_order))
        .route("/v1/orders/{id}/status", get(get_status))
        .route("/v1/users/{id}/orders", get(list_user_orders))
        .route("/readyz", get(readyz))
        .with_state(state)
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

    let placed = place_order(&state, &claims.sub, &key, &request, trace).await?;

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
