//! Every SQL statement of the catalog.
//!
//! The seed writes use multi-row `INSERT`s: with one statement per row, seeding the
//! roughly 13,000 menu items took about twice as long.

use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Row, Transaction};
use tiffin_runtime::db::Database;

use crate::domain::{
    Address, Amenity, MenuItem, Page, Restaurant, RestaurantQuery, fold, split_cuisines,
};

/// The maximum number of parameters one multi-row statement binds.
///
/// SQLite (since 3.32) accepts up to 32,766 and PostgreSQL up to 65,535, but through
/// sqlx's `Any` driver on SQLite the cost per row grows with the statement size.
/// Seeding the full catalog in release mode took about 0.45 s with 500 parameters
/// per statement, 1.7 s with 4,000 and 5.7 s with 16,000 (a 2-core machine that was
/// running other builds, so the numbers are rough).
const MAX_BINDS: usize = 500;

const RESTAURANT_COLUMNS: &str = "id, name, amenity, cuisines, lat, lon, opening_hours, \
                                  street, housenumber, postcode, city";

/// Inserts the restaurants that are not stored yet, with their cuisine keys, and
/// returns the ids of those that were new. Existing rows are left unchanged.
///
/// # Errors
///
/// Returns the database error.
pub async fn insert_restaurants(
    tx: &mut Transaction<'static, Any>,
    restaurants: &[&Restaurant],
) -> Result<Vec<String>, sqlx::Error> {
    let mut inserted = Vec::new();
    for chunk in restaurants.chunks(MAX_BINDS / 12) {
        let sql = format!(
            "INSERT INTO restaurants ({RESTAURANT_COLUMNS}, city_key) VALUES {} \
             ON CONFLICT (id) DO NOTHING RETURNING id",
            placeholders(chunk.len(), 12)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for restaurant in chunk {
            query = query
                .bind(restaurant.id.as_str())
                .bind(restaurant.name.as_str())
                .bind(restaurant.amenity.as_str())
                .bind(restaurant.cuisines.join(";"))
                .bind(restaurant.lat)
                .bind(restaurant.lon)
                .bind(restaurant.opening_hours.as_deref())
                .bind(restaurant.address.street.as_deref())
                .bind(restaurant.address.housenumber.as_deref())
                .bind(restaurant.address.postcode.as_deref())
                .bind(restaurant.address.city.as_str())
                .bind(fold(&restaurant.address.city));
        }
        for row in query.fetch_all(&mut **tx).await? {
            inserted.push(row.try_get::<String, _>("id")?);
        }
    }

    let keys = restaurants
        .iter()
        .flat_map(|restaurant| {
            restaurant
                .cuisines
                .iter()
                .map(|cuisine| (fold(cuisine), restaurant.id.as_str()))
        })
        .collect::<Vec<_>>();
    for chunk in keys.chunks(MAX_BINDS / 2) {
        let sql = format!(
            "INSERT INTO restaurant_cuisines (cuisine, restaurant_id) VALUES {} \
             ON CONFLICT DO NOTHING",
            placeholders(chunk.len(), 2)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (cuisine, restaurant_id) in chunk {
            query = query.bind(cuisine.as_str()).bind(*restaurant_id);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(inserted)
}

/// Inserts the menu items that are not stored yet and returns the ids of those
/// that were new. Existing rows are left unchanged.
///
/// # Errors
///
/// Returns the database error.
pub async fn insert_menu_items(
    tx: &mut Transaction<'static, Any>,
    items: &[&MenuItem],
) -> Result<Vec<String>, sqlx::Error> {
    let mut inserted = Vec::new();
    for chunk in items.chunks(MAX_BINDS / 8) {
        let sql = format!(
            "INSERT INTO menu_items \
             (id, restaurant_id, position, name, price_cents, currency, available, revision) \
             VALUES {} ON CONFLICT (id) DO NOTHING RETURNING id",
            placeholders(chunk.len(), 8)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for item in chunk {
            query = query
                .bind(item.id.as_str())
                .bind(item.restaurant_id.as_str())
                .bind(item.position)
                .bind(item.name.as_str())
                .bind(item.price_cents)
                .bind(item.currency.as_str())
                .bind(i32::from(item.available))
                .bind(item.revision);
        }
        for row in query.fetch_all(&mut **tx).await? {
            inserted.push(row.try_get::<String, _>("id")?);
        }
    }
    Ok(inserted)
}

/// Returns one page of restaurants ordered by id, filtered by `query`.
///
/// # Errors
///
/// Returns the database error, or a decode error for a stored amenity the service
/// does not know.
pub async fn list_restaurants(db: &Database, query: &RestaurantQuery) -> Result<Page, sqlx::Error> {
    // The WHERE clause is built from fixed fragments, and only the values are bound.
    let mut conditions = Vec::new();
    let mut values = Vec::new();
    if let Some(city) = &query.city {
        values.push(city.as_str());
        conditions.push(format!("r.city_key = ${}", values.len()));
    }
    if let Some(cuisine) = &query.cuisine {
        values.push(cuisine.as_str());
        conditions.push(format!(
            "EXISTS (SELECT 1 FROM restaurant_cuisines c \
             WHERE c.restaurant_id = r.id AND c.cuisine = ${})",
            values.len()
        ));
    }
    if let Some(after) = &query.after {
        values.push(after.as_str());
        conditions.push(format!("r.id > ${}", values.len()));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let sql = format!(
        "SELECT {} FROM restaurants r {filter} ORDER BY r.id LIMIT ${}",
        qualified_columns("r"),
        values.len() + 1
    );

    // Fetching one row past the page shows whether a next page exists.
    let limit = i64::from(query.limit.get());
    let mut statement = sqlx::query(AssertSqlSafe(sql));
    for value in values {
        statement = statement.bind(value);
    }
    let rows = statement.bind(limit + 1).fetch_all(db.pool()).await?;

    let mut items = rows
        .iter()
        .map(restaurant_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if items.len() > query.limit.get() as usize {
        items.truncate(query.limit.get() as usize);
        items.last().map(|restaurant| restaurant.id.clone())
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

/// Returns the restaurant with `id`, or `None` when there is none.
///
/// # Errors
///
/// Returns the database error, or a decode error for a stored amenity the service
/// does not know.
pub async fn find_restaurant(db: &Database, id: &str) -> Result<Option<Restaurant>, sqlx::Error> {
    let sql = format!("SELECT {RESTAURANT_COLUMNS} FROM restaurants WHERE id = $1");
    sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(db.pool())
        .await?
        .as_ref()
        .map(restaurant_from_row)
        .transpose()
}

/// Returns the menu of restaurant `restaurant_id` in menu order, or `None` when the
/// restaurant does not exist.
///
/// # Errors
///
/// Returns the database error.
pub async fn find_menu(
    db: &Database,
    restaurant_id: &str,
) -> Result<Option<Vec<MenuItem>>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, restaurant_id, position, name, price_cents, currency, available, revision \
         FROM menu_items WHERE restaurant_id = $1 ORDER BY position",
    )
    .bind(restaurant_id)
    .fetch_all(db.pool())
    .await?;
    let items = rows
        .iter()
        .map(menu_item_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    if !items.is_empty() {
        return Ok(Some(items));
    }

    // No items can mean an empty menu or a missing restaurant, so look for the
    // restaurant.
    let exists = sqlx::query("SELECT 1 FROM restaurants WHERE id = $1")
        .bind(restaurant_id)
        .fetch_optional(db.pool())
        .await?
        .is_some();
    Ok(exists.then_some(items))
}

/// Counts the stored menu items.
///
/// # Errors
///
/// Returns the database error.
pub async fn menu_item_count(db: &Database) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM menu_items")
        .fetch_one(db.pool())
        .await
}

/// Runs a trivial query to check that the database responds.
///
/// # Errors
///
/// Returns the database error.
pub async fn ping(db: &Database) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(db.pool()).await?;
    Ok(())
}

/// Returns `rows` groups of `columns` numbered placeholders: `($1, $2), ($3, $4)`.
fn placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|row| {
            let group = (1..=columns)
                .map(|column| format!("${}", row * columns + column))
                .collect::<Vec<_>>()
                .join(", ");
            format!("({group})")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn qualified_columns(alias: &str) -> String {
    RESTAURANT_COLUMNS
        .split(", ")
        .map(|column| format!("{alias}.{}", column.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn restaurant_from_row(row: &AnyRow) -> Result<Restaurant, sqlx::Error> {
    let amenity: String = row.try_get("amenity")?;
    let amenity = Amenity::parse(&amenity).map_err(|error| sqlx::Error::ColumnDecode {
        index: "amenity".to_owned(),
        source: Box::new(error),
    })?;
    let cuisines: String = row.try_get("cuisines")?;
    Ok(Restaurant {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        amenity,
        cuisines: split_cuisines(&cuisines),
        lat: row.try_get("lat")?,
        lon: row.try_get("lon")?,
        opening_hours: row.try_get("opening_hours")?,
        address: Address {
            street: row.try_get("street")?,
            housenumber: row.try_get("housenumber")?,
            postcode: row.try_get("postcode")?,
            city: row.try_get("city")?,
        },
    })
}

fn menu_item_from_row(row: &AnyRow) -> Result<MenuItem, sqlx::Error> {
    Ok(MenuItem {
        id: row.try_get("id")?,
        restaurant_id: row.try_get("restaurant_id")?,
        position: row.try_get("position")?,
        name: row.try_get("name")?,
        price_cents: row.try_get("price_cents")?,
        currency: row.try_get("currency")?,
        available: row.try_get::<i32, _>("available")? != 0,
        revision: row.try_get("revision")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_rows_in_order() {
        assert_eq!(placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
    }
}
