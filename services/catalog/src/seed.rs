//! The seed catalog: the restaurants of `data/restaurants_helsinki_osm.csv` and the
//! menus generated for them from `data/dishes_nypl_top1000_names.csv`.
//!
//! Both files are compiled into the crate. The rules below are the ones documented
//! in `data/README.md` ("How Tiffin uses these files, and what it generates"), so
//! every start on every machine produces the same catalog. "Hash" is 64-bit FNV-1a
//! over a key built from `KEY = <osm_type>/<osm_id>`:
//!
//! - a restaurant has `6 + hash("KEY#count") % 7` items;
//! - item `k` (from 0) is the dish at row `hash("KEY#dish<k>#<try>") % 1000`, with
//!   `try` counting up from 0 until the name, compared case-insensitively, is not yet
//!   on the menu;
//! - item `k` costs `low + (hash("KEY#price<k>") % ((high - low) / 10 + 1)) * 10`
//!   cents, where `low` and `high` come from the amenity
//!   ([`Amenity::price_range_cents`]).

use std::collections::HashSet;

use anyhow::Context;
use serde::Deserialize;
use tiffin_runtime::hash::fnv1a64;

use crate::domain::{Address, Amenity, MenuItem, Restaurant, split_cuisines};

const RESTAURANTS_CSV: &str = include_str!("../../../data/restaurants_helsinki_osm.csv");
const DISHES_CSV: &str = include_str!("../../../data/dishes_nypl_top1000_names.csv");

/// The city of every seeded restaurant: the source covers the city of Helsinki only.
pub const CITY: &str = "Helsinki";

/// The currency of generated prices.
pub const CURRENCY: &str = "EUR";

/// A restaurant with its generated menu.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedRestaurant {
    /// The restaurant.
    pub restaurant: Restaurant,
    /// Its menu, in menu order.
    pub menu: Vec<MenuItem>,
}

/// The columns of `restaurants_helsinki_osm.csv` that the catalog uses.
#[derive(Debug, Deserialize)]
struct RestaurantRow {
    name: String,
    amenity: String,
    cuisine: String,
    lat: f64,
    lon: f64,
    opening_hours: String,
    osm_type: String,
    osm_id: String,
    addr_street: String,
    addr_housenumber: String,
    addr_postcode: String,
}

#[derive(Debug, Deserialize)]
struct DishRow {
    name: String,
}

/// Builds the whole seed catalog, in file order.
///
/// # Errors
///
/// Fails when a compiled-in file does not parse, which the unit tests rule out for
/// the shipped files.
pub fn catalog() -> anyhow::Result<Vec<SeedRestaurant>> {
    let dishes = dish_names()?;
    let mut reader = csv::Reader::from_reader(RESTAURANTS_CSV.as_bytes());
    let mut catalog = Vec::new();
    for (index, row) in reader.deserialize::<RestaurantRow>().enumerate() {
        // Line 1 is the header.
        let line = index + 2;
        let row = row
            .with_context(|| format!("failed to parse restaurants_helsinki_osm.csv line {line}"))?;
        let amenity = Amenity::parse(&row.amenity)
            .with_context(|| format!("invalid restaurants_helsinki_osm.csv line {line}"))?;

        let key = format!("{}/{}", row.osm_type, row.osm_id);
        let id = format!("{}-{}", row.osm_type, row.osm_id);
        let menu = menu(&key, &id, amenity, &dishes);
        let restaurant = Restaurant {
            id,
            name: row.name,
            amenity,
            cuisines: split_cuisines(&row.cuisine),
            lat: row.lat,
            lon: row.lon,
            opening_hours: non_empty(row.opening_hours),
            address: Address {
                street: non_empty(row.addr_street),
                housenumber: non_empty(row.addr_housenumber),
                postcode: non_empty(row.addr_postcode),
                city: CITY.to_owned(),
            },
        };
        catalog.push(SeedRestaurant { restaurant, menu });
    }
    Ok(catalog)
}

/// Reads the dish names in rank order.
///
/// Fails when the file has fewer than 12 names that differ case-insensitively,
/// because [`menu`] could then not fill the longest menu and would search forever.
fn dish_names() -> anyhow::Result<Vec<String>> {
    let mut reader = csv::Reader::from_reader(DISHES_CSV.as_bytes());
    let names = reader
        .deserialize::<DishRow>()
        .map(|row| row.map(|row| row.name))
        .collect::<Result<Vec<_>, _>>()
        .context("failed to parse dishes_nypl_top1000_names.csv")?;

    let distinct = names
        .iter()
        .map(|name| name.to_lowercase())
        .collect::<HashSet<_>>()
        .len();
    anyhow::ensure!(
        distinct >= 12,
        "dishes_nypl_top1000_names.csv has {distinct} distinct names: a menu needs up to 12"
    );
    Ok(names)
}

/// Generates the menu of restaurant `restaurant_id`, whose hash key is `key`
/// (`<osm_type>/<osm_id>`), drawing names from `dishes`, which must contain at least 12
/// names that differ case-insensitively ([`dish_names`] checks that).
///
/// Every item is available, at revision 1, priced in [`CURRENCY`].
fn menu(key: &str, restaurant_id: &str, amenity: Amenity, dishes: &[String]) -> Vec<MenuItem> {
    let length = menu_length(key);
    let mut names_on_menu = HashSet::with_capacity(length);
    let mut items = Vec::with_capacity(length);
    for k in 0..length {
        // A free name exists because `dish_names` checks for 12 distinct ones, and
        // each attempt hashes a new key. The unit tests check that the search ends
        // for every shipped restaurant.
        let name = (0u64..)
            .map(|attempt| &dishes[dish_row(key, k, attempt, dishes.len())])
            .find(|name| !names_on_menu.contains(&name.to_lowercase()))
            .expect("an unbounded search finds a name not yet on the menu");
        names_on_menu.insert(name.to_lowercase());

        let position = i64::try_from(k + 1).expect("a menu has at most 12 items");
        items.push(MenuItem {
            id: format!("{restaurant_id}-{position}"),
            restaurant_id: restaurant_id.to_owned(),
            position,
            name: name.clone(),
            price_cents: price_cents(key, k, amenity),
            currency: CURRENCY.to_owned(),
            available: true,
            revision: 1,
        });
    }
    items
}

/// Returns the number of items on the menu of the restaurant with hash key `key`: 6 to 12.
pub fn menu_length(key: &str) -> usize {
    let extra = fnv1a64(&format!("{key}#count")) % 7;
    6 + usize::try_from(extra).expect("a value below 7 fits in usize")
}

/// Returns the row of the dish list that attempt `attempt` picks for item `k`.
fn dish_row(key: &str, k: usize, attempt: u64, dish_count: usize) -> usize {
    let count = u64::try_from(dish_count).expect("the dish list length fits in u64");
    let row = fnv1a64(&format!("{key}#dish{k}#{attempt}")) % count;
    usize::try_from(row).expect("a row index below the list length fits in usize")
}

/// Returns the price of item `k` of the restaurant with hash key `key`, in cents.
pub fn price_cents(key: &str, k: usize, amenity: Amenity) -> i64 {
    let (low, high) = amenity.price_range_cents();
    let steps = u64::try_from((high - low) / 10 + 1).expect("the price range is not reversed");
    let step = fnv1a64(&format!("{key}#price{k}")) % steps;
    low + i64::try_from(step).expect("a step below the range size fits in i64") * 10
}

fn non_empty(value: String) -> Option<String> {
    if value.is_empty() { None } else { Some(value) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Vec<SeedRestaurant> {
        catalog().expect("the shipped files parse")
    }

    #[test]
    fn catalog_has_every_row() {
        let catalog = seed();

        assert_eq!(catalog.len(), 1465);
    }

    #[test]
    fn dish_list_has_every_row() {
        let dishes = dish_names().expect("the shipped file parses");

        assert_eq!(dishes.len(), 1000);
    }

    #[test]
    fn restaurant_ids_are_unique() {
        let catalog = seed();

        let ids = catalog
            .iter()
            .map(|entry| entry.restaurant.id.as_str())
            .collect::<HashSet<_>>();

        assert_eq!(ids.len(), catalog.len());
    }

    #[test]
    fn menus_have_six_to_twelve_items() {
        for entry in seed() {
            let length = entry.menu.len();

            assert!(
                (6..=12).contains(&length),
                "{}: {length} items",
                entry.restaurant.id
            );
        }
    }

    #[test]
    fn menu_names_are_distinct() {
        for entry in seed() {
            let names = entry
                .menu
                .iter()
                .map(|item| item.name.to_lowercase())
                .collect::<HashSet<_>>();

            assert_eq!(names.len(), entry.menu.len(), "{}", entry.restaurant.id);
        }
    }

    #[test]
    fn prices_are_tens_in_range() {
        for entry in seed() {
            let (low, high) = entry.restaurant.amenity.price_range_cents();
            for item in &entry.menu {
                assert_eq!(item.price_cents % 10, 0, "{}", item.id);
                assert!(
                    (low..=high).contains(&item.price_cents),
                    "{}: {}",
                    item.id,
                    item.price_cents
                );
            }
        }
    }

    #[test]
    fn item_ids_count_from_one() {
        for entry in seed() {
            for (k, item) in entry.menu.iter().enumerate() {
                assert_eq!(item.id, format!("{}-{}", entry.restaurant.id, k + 1));
            }
        }
    }

    #[test]
    fn catalog_is_deterministic() {
        let first = seed();

        let second = seed();

        assert_eq!(first, second);
    }

    // The expected menus below were computed by a separate Python implementation
    // of the rule in data/README.md, so this test checks the rule and not only
    // this implementation's consistency with itself.
    #[test]
    fn cafe_menu_matches_rule() {
        let catalog = seed();
        let entry = catalog
            .iter()
            .find(|entry| entry.restaurant.id == "node-1369465542")
            .expect("Amin's cafe is in the data");

        let menu = entry
            .menu
            .iter()
            .map(|item| (item.name.as_str(), item.price_cents))
            .collect::<Vec<_>>();

        assert_eq!(
            menu,
            vec![
                ("Spanish olives", 720),
                ("Hearts of Celery", 760),
                ("Macaroni au Gratin", 800),
                ("Roquefort", 840),
                ("Peach Ice Cream", 880),
                ("White Rock", 920),
                ("Fresh Strawberries", 960),
                ("COFFEE", 1000),
                ("Cotuits", 1040),
                ("Moet & Chandon", 1080),
            ]
        );
    }

    #[test]
    fn fast_food_menu_matches_rule() {
        let catalog = seed();
        let entry = catalog
            .iter()
            .find(|entry| entry.restaurant.id == "way-28867876")
            .expect("way 28867876 is in the data");

        let menu = entry
            .menu
            .iter()
            .map(|item| (item.name.as_str(), item.price_cents))
            .collect::<Vec<_>>();

        assert_eq!(
            menu,
            vec![
                ("Green Turtle Soup", 1480),
                ("Tea, per pot", 810),
                ("Cointreau", 800),
                ("Cherrystone Clams", 1140),
                ("Pot of Tea", 820),
                ("Ceylon Tea", 1160),
                ("Boiled eggs", 1150),
                ("Stuffed Figs and Dates", 1490),
                ("Chocolate", 1170),
                ("Strawberry short cake", 1510),
                ("French vanilla ice cream", 680),
                ("Corn muffins", 1350),
            ]
        );
    }

    #[test]
    fn catalog_item_total_matches_rule() {
        let total = seed().iter().map(|entry| entry.menu.len()).sum::<usize>();

        assert_eq!(total, 13_239);
    }
}
