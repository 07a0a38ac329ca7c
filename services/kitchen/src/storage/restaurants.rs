//! The restaurant replica: amenity and opening hours per restaurant.

use anyhow::Context;
use sqlx::{Any, AnyPool, Row, Transaction};
use tiffin_events::restaurant::RestaurantUpserted;

use crate::domain::KnownRestaurant;

/// Stores `restaurant` unless the replica already has the same or a later revision,
/// so replays and out-of-order copies change nothing.
pub(crate) async fn upsert_restaurant(
    tx: &mut Transaction<'_, Any>,
    restaurant: &RestaurantUpserted,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO restaurants (restaurant_id, amenity, opening_hours, revision) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (restaurant_id) DO UPDATE SET \
         amenity = excluded.amenity, opening_hours = excluded.opening_hours, \
         revision = excluded.revision WHERE excluded.revision > restaurants.revision",
    )
    .bind(&restaurant.restaurant_id)
    .bind(&restaurant.amenity)
    .bind(restaurant.opening_hours.as_deref())
    .bind(restaurant.revision)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Finds a restaurant in the replica.
pub(crate) async fn find_restaurant(
    tx: &mut Transaction<'_, Any>,
    restaurant_id: &str,
) -> Result<Option<KnownRestaurant>, sqlx::Error> {
    let row =
        sqlx::query("SELECT amenity, opening_hours FROM restaurants WHERE restaurant_id = $1")
            .bind(restaurant_id)
            .fetch_optional(&mut **tx)
            .await?;
    row.map(|row| {
        Ok(KnownRestaurant {
            amenity: row.try_get("amenity")?,
            opening_hours: row.try_get("opening_hours")?,
        })
    })
    .transpose()
}

/// Counts the restaurants in the replica.
pub(crate) async fn count_restaurants(pool: &AnyPool) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM restaurants")
        .fetch_one(pool)
        .await
        .context("failed to count the replica's restaurants")
}
