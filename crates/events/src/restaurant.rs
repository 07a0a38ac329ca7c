//! Events of the catalog's restaurants.

use serde::{Deserialize, Serialize};
use tiffin_bus::envelope::EventData;

/// A restaurant was created or changed. The latest revision per restaurant is its
/// state, so a reader rebuilds its copy by replaying the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestaurantUpserted {
    /// The restaurant.
    pub restaurant_id: String,
    /// Its name.
    pub name: String,
    /// `restaurant`, `fast_food` or `cafe`.
    pub amenity: String,
    /// Position, degrees.
    pub lat: f64,
    /// Position, degrees.
    pub lon: f64,
    /// Opening hours in OpenStreetMap's `opening_hours` syntax, as mapped; absent when
    /// unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opening_hours: Option<String>,
    /// Increases with every change of this restaurant.
    pub revision: i64,
}

impl EventData for RestaurantUpserted {
    const TYPE: &'static str = "restaurant.upserted";
    const VERSION: u32 = 1;

    fn subject(&self) -> String {
        self.restaurant_id.clone()
    }
}
