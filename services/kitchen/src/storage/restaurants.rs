//! The restaurant replica: amenity and opening hours per restaurant.

use std::collections::HashMap;

use super::{IDS_PER_READ, query_in};
use crate::domain::KnownRestaurant;
use anyhow::Context;
use sqlx::{Any, AnyPool, Row, Transaction};
use tiffin_events::restaurant::RestaurantUpserted;

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

/// Finds restaurants in the replica. A restaurant it does not hold is absent from
/// the result.
pub(crate) async fn find_restaurants(
    tx: &mut Transaction<'_, Any>,
    restaurant_ids: &[&str],
) -> Result<HashMap<String, KnownRestaurant>, sqlx::Error> {
    let mut found = HashMap::with_capacity(restaurant_ids.len());
    for chunk in restaurant_ids.chunks(IDS_PER_READ) {
        let sql = "SELECT restaurant_id, amenity, opening_hours FROM restaurants \
                   WHERE restaurant_id IN ({ids})";
        for row in query_in(sql, chunk).fetch_all(&mut **tx).await? {
            let restaurant = KnownRestaurant {
                amenity: row.try_get("amenity")?,
                opening_hours: row.try_get("opening_hours")?,
            };
            found.insert(row.try_get("restaurant_id")?, restaurant);
        }
    }
    Ok(found)
}

/// Counts the restaurants in the replica.
pub(crate) async fn count_restaurants(pool: &AnyPool) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM restaurants")
        .fetch_one(pool)
        .await
        .context("failed to count the replica's restaurants")
}
