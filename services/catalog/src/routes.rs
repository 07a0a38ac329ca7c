//! HTTP handlers of the catalog's REST API.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tiffin_runtime::json::Json;
use tiffin_runtime::problem::{Problem, internal_error};

use crate::AppState;
use crate::domain::{MenuItem, Page, PageLimit, Restaurant, RestaurantQuery, fold};
use crate::storage;

/// The query string of `GET /v1/restaurants`. Every value is read as text, so that
/// [`PageLimit::parse`], not the query extractor, reports an invalid `limit`.
#[derive(Debug, Deserialize)]
pub(crate) struct ListParams {
    city: Option<String>,
    cuisine: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// The body of `GET /v1/restaurants/{id}/menu`.
#[derive(Debug, Serialize)]
pub(crate) struct MenuView {
    restaurant_id: String,
    items: Vec<MenuItemView>,
}

#[derive(Debug, Serialize)]
struct MenuItemView {
    id: String,
    name: String,
    price_cents: i64,
    currency: String,
    available: bool,
}

impl From<MenuItem> for MenuItemView {
    fn from(item: MenuItem) -> Self {
        Self {
            id: item.id,
            name: item.name,
            price_cents: item.price_cents,
            currency: item.currency,
            available: item.available,
        }
    }
}

/// `GET /v1/restaurants`: one page of restaurants ordered by id.
pub(crate) async fn list_restaurants(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Page>, Problem> {
    let Query(params) = params.map_err(|rejection| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            format!("invalid query string: {}", rejection.body_text()),
        )
    })?;
    let limit = PageLimit::parse(params.limit.as_deref())
        .map_err(|detail| Problem::invalid_field("limit", detail))?;
    let query = RestaurantQuery {
        city: non_blank(params.city).map(|city| fold(&city)),
        cuisine: non_blank(params.cuisine).map(|cuisine| fold(&cuisine)),
        after: non_blank(params.cursor),
        limit,
    };

    let page = storage::list_restaurants(&state.db, &query)
        .await
        .map_err(internal_error)?;
    Ok(Json(page))
}

/// `GET /v1/restaurants/{id}`: one restaurant.
pub(crate) async fn get_restaurant(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Restaurant>, Problem> {
    storage::find_restaurant(&state.db, &id)
        .await
        .map_err(internal_error)?
        .map(Json)
        .ok_or_else(|| restaurant_not_found(&id))
}

/// `GET /v1/restaurants/{id}/menu`: a restaurant's menu in menu order.
pub(crate) async fn get_menu(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<MenuView>, Problem> {
    let items = storage::find_menu(&state.db, &id)
        .await
        .map_err(internal_error)?
        .ok_or_else(|| restaurant_not_found(&id))?;
    Ok(Json(MenuView {
        restaurant_id: id,
        items: items.into_iter().map(MenuItemView::from).collect(),
    }))
}

/// `GET /readyz`: 200 when the database responds, 503 otherwise.
pub(crate) async fn ready(State(state): State<AppState>) -> Result<&'static str, Problem> {
    match storage::ping(&state.db).await {
        Ok(()) => Ok("ok"),
        Err(error) => {
            tracing::debug!(error = %error, "readiness check failed: the database did not respond");
            Err(Problem::unavailable(
                "the catalog database did not respond: retry in a moment",
                1,
            ))
        }
    }
}

fn restaurant_not_found(id: &str) -> Problem {
    Problem::not_found(format!(
        "restaurant `{id}` not found: restaurant ids have the form `node-<osm id>` or \
         `way-<osm id>`, and GET /v1/restaurants lists them"
    ))
}

/// Treats an empty query value (`?city=`) like a missing one.
fn non_blank(value: Option<String>) -> Option<String> {
    value.filter(|text| !text.trim().is_empty())
}
