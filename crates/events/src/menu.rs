//! Events of the catalog.

use serde::{Deserialize, Serialize};
use tiffin_bus::envelope::EventData;

/// A menu item was created or changed. The latest event per item is its state, so
/// a reader can rebuild its copy of the menus by replaying the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MenuItemUpserted {
    /// The menu item.
    pub menu_item_id: String,
    /// The restaurant it belongs to.
    pub restaurant_id: String,
    /// The restaurant's name, for receipts and notifications.
    pub restaurant_name: String,
    /// The dish name.
    pub name: String,
    /// Price in minor units of `currency`.
    pub price_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Whether it can be ordered.
    pub available: bool,
    /// Increases with every change of this item, so a reader keeps the newest state
    /// even if it sees an older event last.
    pub revision: i64,
}

impl EventData for MenuItemUpserted {
    const TYPE: &'static str = "menu.item.upserted";
    const VERSION: u32 = 1;

    fn subject(&self) -> String {
        self.menu_item_id.clone()
    }
}
