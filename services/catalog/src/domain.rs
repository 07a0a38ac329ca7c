//! The catalog's types and rules: restaurants, menu items, amenities with their
//! price ranges, and the validated parameters of a restaurant listing.

use std::fmt;

use serde::Serialize;

/// The kind of food place, as OSM's `amenity` tag names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Amenity {
    /// A sit-down restaurant.
    Restaurant,
    /// A fast-food place.
    FastFood,
    /// A café.
    Cafe,
}

impl Amenity {
    /// Parses the OSM tag value (`restaurant`, `fast_food` or `cafe`).
    ///
    /// # Errors
    ///
    /// Returns the unknown value.
    pub fn parse(value: &str) -> Result<Self, UnknownAmenity> {
        match value {
            "restaurant" => Ok(Self::Restaurant),
            "fast_food" => Ok(Self::FastFood),
            "cafe" => Ok(Self::Cafe),
            other => Err(UnknownAmenity(other.to_owned())),
        }
    }

    /// Returns the OSM tag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restaurant => "restaurant",
            Self::FastFood => "fast_food",
            Self::Cafe => "cafe",
        }
    }

    /// Returns the lowest and highest generated price of one item, in euro cents,
    /// both included.
    pub fn price_range_cents(self) -> (i64, i64) {
        match self {
            Self::Cafe => (300, 1200),
            Self::FastFood => (600, 1600),
            Self::Restaurant => (1000, 3200),
        }
    }
}

impl fmt::Display for Amenity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `amenity` value that the catalog does not serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown amenity `{0}`: expected restaurant, fast_food or cafe")]
pub struct UnknownAmenity(pub String);

/// A restaurant as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Restaurant {
    /// `<osm_type>-<osm_id>`, for example `node-1369465542`.
    pub id: String,
    /// The OSM name.
    pub name: String,
    /// The kind of place.
    pub amenity: Amenity,
    /// The OSM cuisine values in their original spelling, empty when the source has none.
    pub cuisines: Vec<String>,
    /// WGS84 latitude in degrees.
    pub lat: f64,
    /// WGS84 longitude in degrees.
    pub lon: f64,
    /// The raw OSM `opening_hours` value, not validated.
    pub opening_hours: Option<String>,
    /// The postal address.
    pub address: Address,
}

/// A restaurant's postal address. Fields the source lacks are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Address {
    /// The street name.
    pub street: Option<String>,
    /// The house number, which may contain letters (`12 B`).
    pub housenumber: Option<String>,
    /// The postal code.
    pub postcode: Option<String>,
    /// The city.
    pub city: String,
}

/// One item of a restaurant's menu.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MenuItem {
    /// `<restaurant id>-<position>`.
    pub id: String,
    /// The restaurant it belongs to.
    pub restaurant_id: String,
    /// The place on the menu, counting from 1.
    pub position: i64,
    /// The dish name.
    pub name: String,
    /// The price in minor units of `currency`.
    pub price_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Whether it can be ordered.
    pub available: bool,
    /// Increases with every change of the item, starting at 1.
    pub revision: i64,
}

/// Splits a raw OSM cuisine value (`pizza;kebab`) into its values, trimmed, with
/// empty values dropped.
pub fn split_cuisines(raw: &str) -> Vec<String> {
    raw.split(';')
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Folds a city or cuisine for case-insensitive comparison. Both the stored keys and
/// the filter values go through this function, so the comparison does not depend on
/// how the SQL engine folds case.
pub fn fold(value: &str) -> String {
    value.trim().to_lowercase()
}

/// The number of restaurants on one page of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit(u32);

impl PageLimit {
    /// The limit when the request gives none.
    pub const DEFAULT: Self = Self(20);
    /// The largest accepted limit.
    pub const MAX: u32 = 100;

    /// Parses the `limit` query parameter. A missing or empty value gives
    /// [`PageLimit::DEFAULT`].
    ///
    /// # Errors
    ///
    /// Returns a message naming the value when it is not an integer from 1 to
    /// [`PageLimit::MAX`].
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        let Some(text) = value.map(str::trim).filter(|text| !text.is_empty()) else {
            return Ok(Self::DEFAULT);
        };
        match text.parse::<u32>() {
            Ok(limit) if (1..=Self::MAX).contains(&limit) => Ok(Self(limit)),
            _ => Err(format!(
                "invalid limit `{text}`: expected an integer from 1 to {}",
                Self::MAX
            )),
        }
    }

    /// Returns the limit as a number.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A validated restaurant listing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestaurantQuery {
    /// Only restaurants in this city, folded with [`fold`].
    pub city: Option<String>,
    /// Only restaurants with this cuisine among their values, folded with [`fold`].
    pub cuisine: Option<String>,
    /// Only restaurants whose id sorts after this one: the last id of the previous page.
    pub after: Option<String>,
    /// The page size.
    pub limit: PageLimit,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page {
    /// The restaurants, ordered by id.
    pub items: Vec<Restaurant>,
    /// The cursor of the next page, or `None` on the last page.
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_defaults_when_missing() {
        assert_eq!(PageLimit::parse(None), Ok(PageLimit::DEFAULT));
        assert_eq!(PageLimit::parse(Some("")), Ok(PageLimit::DEFAULT));
    }

    #[test]
    fn limit_accepts_bounds() {
        assert_eq!(PageLimit::parse(Some("1")).map(PageLimit::get), Ok(1));
        assert_eq!(PageLimit::parse(Some("100")).map(PageLimit::get), Ok(100));
    }

    #[test]
    fn limit_rejects_out_of_range() {
        for value in ["0", "101", "-1", "ten", "2.5"] {
            let error = PageLimit::parse(Some(value)).expect_err(value);

            assert!(error.contains(&format!("`{value}`")), "{value}: {error}");
        }
    }

    #[test]
    fn cuisines_split_and_trim() {
        assert_eq!(split_cuisines("pizza; kebab;;"), vec!["pizza", "kebab"]);
        assert!(split_cuisines("").is_empty());
    }

    #[test]
    fn amenity_round_trips() {
        for amenity in [Amenity::Restaurant, Amenity::FastFood, Amenity::Cafe] {
            assert_eq!(Amenity::parse(amenity.as_str()), Ok(amenity));
        }
    }
}
