//! Stock limits: one row per limited item of a restaurant.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Serialize;
use sqlx::{Any, AnyPool, Row, Transaction};

use tiffin_runtime::db::placeholders;

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

/// Reads the stock of each of `menu_item_ids` that has a limit. Items without a
/// limit are absent from the result.
pub(crate) async fn stock_levels<'a>(
    tx: &mut Transaction<'_, Any>,
    restaurant_id: &str,
    menu_item_ids: impl IntoIterator<Item = &'a str>,
) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let ids: Vec<&str> = menu_item_ids.into_iter().collect();
    let mut levels = BTreeMap::new();
    for chunk in ids.chunks(ITEMS_PER_READ) {
        let sql = format!(
            "SELECT menu_item_id, quantity FROM stock WHERE restaurant_id = $1 \
             AND menu_item_id IN ({})",
            placeholders(2, chunk.len())
        );
        // Only placeholders are formatted in. An order has a handful of lines, so
        // the few shapes are kept as prepared statements.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .persistent(chunk.len() <= 8)
            .bind(restaurant_id);
        for id in chunk {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut **tx).await? {
            levels.insert(row.try_get("menu_item_id")?, row.try_get("quantity")?);
        }
    }
    Ok(levels)
}

/// The maximum number of items per stock read, far below both engines'
/// parameter limits.
const ITEMS_PER_READ: usize = 500;

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
