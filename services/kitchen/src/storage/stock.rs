//! Stock limits: one row per limited item of a restaurant.

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use serde::Serialize;
use sqlx::{Any, AnyPool, Row, Transaction};

use tiffin_runtime::db::placeholders;

use super::{IDS_PER_READ, PREPARED_IDS};
use crate::domain::stock::StockQuantity;

/// An item's stock limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct StockEntry {
    pub(crate) menu_item_id: String,
    /// How many more the kitchen can sell.
    pub(crate) quantity: i64,
    /// When staff last set the quantity, in Unix milliseconds. Orders that take
    /// stock do not change it.
    pub(crate) updated_at: i64,
}

/// Reads the stock of the given items, each a restaurant id and a menu item id,
/// that have a limit. Items without a limit are absent from the result.
pub(crate) async fn stock_levels(
    tx: &mut Transaction<'_, Any>,
    items: &HashSet<(&str, &str)>,
) -> Result<HashMap<(String, String), i64>, sqlx::Error> {
    let mut restaurant_ids: Vec<&str> = items.iter().map(|(restaurant, _)| *restaurant).collect();
    restaurant_ids.sort_unstable();
    restaurant_ids.dedup();
    let mut menu_item_ids: Vec<&str> = items.iter().map(|(_, item)| *item).collect();
    menu_item_ids.sort_unstable();
    menu_item_ids.dedup();
    let mut levels = HashMap::new();
    // Both lists together use the primary key's index, and the pairs that the
    // cross product adds are dropped below. The items are read in chunks because
    // a batch of orders of up to 100 lines each can name thousands.
    for chunk in menu_item_ids.chunks(IDS_PER_READ) {
        let sql = format!(
            "SELECT restaurant_id, menu_item_id, quantity FROM stock \
             WHERE restaurant_id IN ({}) AND menu_item_id IN ({})",
            placeholders(1, restaurant_ids.len()),
            placeholders(restaurant_ids.len() + 1, chunk.len())
        );
        // Only placeholders are formatted in. Short lists, the common case, stay
        // prepared.
        let prepared = restaurant_ids.len() + chunk.len() <= PREPARED_IDS;
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(prepared);
        for id in restaurant_ids.iter().chain(chunk) {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut **tx).await? {
            let restaurant_id: String = row.try_get("restaurant_id")?;
            let menu_item_id: String = row.try_get("menu_item_id")?;
            if items.contains(&(restaurant_id.as_str(), menu_item_id.as_str())) {
                levels.insert((restaurant_id, menu_item_id), row.try_get("quantity")?);
            }
        }
    }
    Ok(levels)
}

/// Takes `quantity` of an item from its stock row, and returns whether the item has
/// a row. The row's `CHECK (quantity >= 0)` fails the statement when the stock is
/// short, which callers rule out first.
pub(crate) async fn take_stock(
    tx: &mut Transaction<'_, Any>,
    restaurant_id: &str,
    menu_item_id: &str,
    quantity: u64,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE stock SET quantity = quantity - $3 WHERE restaurant_id = $1 AND menu_item_id = $2",
    )
    .bind(restaurant_id)
    .bind(menu_item_id)
    .bind(i64::try_from(quantity).unwrap_or(i64::MAX))
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Puts `quantity` of an item back into its stock row. An item whose limit was
/// removed in the meantime has no row and stays unlimited.
pub(crate) async fn return_stock(
    tx: &mut Transaction<'_, Any>,
    restaurant_id: &str,
    menu_item_id: &str,
    quantity: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE stock SET quantity = quantity + $3 WHERE restaurant_id = $1 AND menu_item_id = $2",
    )
    .bind(restaurant_id)
    .bind(menu_item_id)
    .bind(i64::try_from(quantity).unwrap_or(i64::MAX))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Sets an item's stock to `quantity` at `now`, creating its limit when it has none.
pub(crate) async fn set_stock(
    pool: &AnyPool,
    restaurant_id: &str,
    menu_item_id: &str,
    quantity: StockQuantity,
    now: i64,
) -> anyhow::Result<StockEntry> {
    sqlx::query(
        "INSERT INTO stock (restaurant_id, menu_item_id, quantity, updated_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (restaurant_id, menu_item_id) \
         DO UPDATE SET quantity = excluded.quantity, updated_at = excluded.updated_at",
    )
    .bind(restaurant_id)
    .bind(menu_item_id)
    .bind(quantity.get())
    .bind(now)
    .execute(pool)
    .await
    .with_context(|| {
        format!("failed to set the stock of item {menu_item_id} of restaurant {restaurant_id}")
    })?;
    Ok(StockEntry {
        menu_item_id: menu_item_id.to_owned(),
        quantity: quantity.get(),
        updated_at: now,
    })
}

/// Removes an item's limit, and returns whether it had one.
pub(crate) async fn remove_stock(
    pool: &AnyPool,
    restaurant_id: &str,
    menu_item_id: &str,
) -> anyhow::Result<bool> {
    let deleted = sqlx::query("DELETE FROM stock WHERE restaurant_id = $1 AND menu_item_id = $2")
        .bind(restaurant_id)
        .bind(menu_item_id)
        .execute(pool)
        .await
        .with_context(|| {
            format!(
                "failed to remove the stock limit of item {menu_item_id} of restaurant \
                 {restaurant_id}"
            )
        })?
        .rows_affected();
    Ok(deleted == 1)
}

/// Lists the limited items of `restaurant_id`, by menu item id.
pub(crate) async fn list_stock(
    pool: &AnyPool,
    restaurant_id: &str,
) -> anyhow::Result<Vec<StockEntry>> {
    let rows = sqlx::query(
        "SELECT menu_item_id, quantity, updated_at FROM stock WHERE restaurant_id = $1 \
         ORDER BY menu_item_id",
    )
    .bind(restaurant_id)
    .fetch_all(pool)
    .await
    .with_context(|| format!("failed to list the stock of restaurant {restaurant_id}"))?;
    rows.iter()
        .map(|row| {
            Ok(StockEntry {
                menu_item_id: row.try_get("menu_item_id")?,
                quantity: row.try_get("quantity")?,
                updated_at: row.try_get("updated_at")?,
            })
        })
        .collect()
}
