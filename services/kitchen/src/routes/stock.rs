//! Staff routes: the stock limits of a restaurant's menu items.
//!
//! Every route needs a bearer token of a staff member or an admin. Any of them may
//! manage any restaurant, because tokens do not name a restaurant.

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRef, FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, put};
use serde::{Deserialize, Serialize};
use tiffin_runtime::db::Database;
use tiffin_runtime::json::Json;
use tiffin_runtime::problem::{Problem, internal_error};
use tiffin_runtime::time::now_millis;
use tiffin_runtime::token::{Caller, Claims, TokenVerifier};

use crate::domain::may_manage_stock;
use crate::domain::stock::StockQuantity;
use crate::storage::{self, StockEntry};

const ITEM_PATH: &str = "/v1/kitchen/restaurants/{restaurant_id}/stock/{menu_item_id}";
const LIST_PATH: &str = "/v1/kitchen/restaurants/{restaurant_id}/stock";

/// The state of the staff routes: the database and the token verifier.
#[derive(Debug, Clone)]
pub(super) struct StaffState {
    pub(super) db: Database,
    pub(super) verifier: TokenVerifier,
}

impl FromRef<StaffState> for TokenVerifier {
    fn from_ref(state: &StaffState) -> Self {
        state.verifier.clone()
    }
}

/// Builds the staff routes.
pub(super) fn routes(state: StaffState) -> Router {
    Router::new()
        .route(ITEM_PATH, put(put_stock))
        .route(LIST_PATH, get(list_stock))
        .with_state(state)
}

/// Builds the staff routes of a kitchen started without `jwks_url`: each returns 503.
pub(super) fn unavailable_routes() -> Router {
    Router::new()
        .route(ITEM_PATH, put(staff_unavailable))
        .route(LIST_PATH, get(staff_unavailable))
}

async fn staff_unavailable() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "staff routes need jwks_url: start the kitchen with the auth service's key set URL, \
         such as http://127.0.0.1:8080/v1/auth/jwks, to check staff tokens",
    )
}

/// A caller whose token has the staff or admin role. A missing or invalid token
/// is rejected with 401, any other role with 403.
#[derive(Debug)]
struct Staff(Claims);

impl FromRequestParts<StaffState> for Staff {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &StaffState,
    ) -> Result<Self, Self::Rejection> {
        let Caller(claims) = Caller::from_request_parts(parts, state).await?;
        if !may_manage_stock(claims.role) {
            return Err(Problem::forbidden(format!(
                "user {} may not manage stock: only staff and admins may, so log in with \
                 such an account",
                claims.sub
            )));
        }
        Ok(Self(claims))
    }
}

/// The body of `PUT .../stock/{menu_item_id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StockRequest {
    /// The new quantity, or null to remove the limit. The field is required, so that
    /// a body without it fails instead of removing the limit.
    #[serde(deserialize_with = "Option::deserialize")]
    quantity: Option<i64>,
}

/// An item's stock after a change.
#[derive(Debug, Serialize)]
struct StockItem {
    restaurant_id: String,
    menu_item_id: String,
    /// The quantity, or null when the item has no limit.
    quantity: Option<i64>,
    /// When staff set the quantity, or null when the item has no limit.
    updated_at: Option<i64>,
}

/// The limited items of a restaurant.
#[derive(Debug, Serialize)]
struct StockList {
    restaurant_id: String,
    /// Items with a limit, by menu item id. Items not listed have no limit.
    items: Vec<StockEntry>,
}

/// `PUT /v1/kitchen/restaurants/{restaurant_id}/stock/{menu_item_id}` with
/// `{"quantity": n}`: sets how many more of the item the kitchen can sell (`n` >= 0),
/// or removes the limit with `{"quantity": null}`. Accepted orders take from the
/// quantity, and an order that needs more than is left is rejected as sold out.
async fn put_stock(
    State(state): State<StaffState>,
    Staff(claims): Staff,
    path: Result<Path<(String, String)>, PathRejection>,
    Json(request): Json<StockRequest>,
) -> Result<Json<StockItem>, Problem> {
    let Path((restaurant_id, menu_item_id)) =
        path.map_err(|rejection| Problem::invalid_field("path", rejection.body_text()))?;
    let quantity = request
        .quantity
        .map(StockQuantity::new)
        .transpose()
        .map_err(|error| Problem::invalid_field("quantity", error.to_string()))?;

    let item = match quantity {
        Some(quantity) => {
            let entry = storage::set_stock(
                state.db.pool(),
                &restaurant_id,
                &menu_item_id,
                quantity,
                now_millis(),
            )
            .await
            .map_err(internal_error)?;
            StockItem {
                restaurant_id,
                menu_item_id,
                quantity: Some(entry.quantity),
                updated_at: Some(entry.updated_at),
            }
        }
        None => {
            storage::remove_stock(state.db.pool(), &restaurant_id, &menu_item_id)
                .await
                .map_err(internal_error)?;
            StockItem {
                restaurant_id,
                menu_item_id,
                quantity: None,
                updated_at: None,
            }
        }
    };
    tracing::info!(
        user_id = %claims.sub,
        restaurant_id = %item.restaurant_id,
        menu_item_id = %item.menu_item_id,
        quantity = item.quantity,
        "stock set"
    );
    Ok(Json(item))
}

/// `GET /v1/kitchen/restaurants/{restaurant_id}/stock`: the restaurant's limited
/// items with their quantities.
async fn list_stock(
    State(state): State<StaffState>,
    Staff(_claims): Staff,
    restaurant_id: Result<Path<String>, PathRejection>,
) -> Result<Json<StockList>, Problem> {
    let Path(restaurant_id) = restaurant_id
        .map_err(|rejection| Problem::invalid_field("restaurant_id", rejection.body_text()))?;

    let items = storage::list_stock(state.db.pool(), &restaurant_id)
        .await
        .map_err(internal_error)?;
    Ok(Json(StockList {
        restaurant_id,
        items,
    }))
}
