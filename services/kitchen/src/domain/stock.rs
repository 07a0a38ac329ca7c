//! Stock limits: the quantities staff set, and the ordered items they fall short of.

use std::collections::BTreeMap;
use std::fmt;

use tiffin_events::order::OrderLine;

/// A stock quantity set by staff: how many more of an item the kitchen can sell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StockQuantity(i64);

/// A stock quantity below 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {0}: it must be 0 or more, or null to remove the item's limit")]
pub(crate) struct InvalidQuantity(i64);

impl StockQuantity {
    /// Validates `quantity`.
    pub(crate) fn new(quantity: i64) -> Result<Self, InvalidQuantity> {
        if quantity >= 0 {
            Ok(Self(quantity))
        } else {
            Err(InvalidQuantity(quantity))
        }
    }

    /// Returns the quantity.
    pub(crate) fn get(self) -> i64 {
        self.0
    }
}

/// An ordered item with less in stock than the order needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shortage {
    pub(crate) menu_item_id: String,
    /// The item's name as ordered.
    pub(crate) name: String,
    pub(crate) in_stock: i64,
    /// The order's total of the item, over all its lines.
    pub(crate) ordered: u64,
}

impl fmt::Display for Shortage {
    /// Writes the item and the numbers, such as `Salmon soup (item-1): 1 in stock, 2
    /// ordered`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {} in stock, {} ordered",
            self.name, self.menu_item_id, self.in_stock, self.ordered
        )
    }
}

/// Sums the ordered quantity of each item, because an order may list an item on
/// several lines.
pub(crate) fn ordered_quantities(lines: &[OrderLine]) -> BTreeMap<String, u64> {
    let mut quantities = BTreeMap::new();
    for line in lines {
        *quantities.entry(line.menu_item_id.clone()).or_default() += u64::from(line.quantity);
    }
    quantities
}

/// Lists the ordered items whose stock, where `stock` has a limit for them, is below
/// the ordered total, in the order the items first appear in `lines`.
pub(crate) fn shortages(lines: &[OrderLine], stock: &BTreeMap<String, i64>) -> Vec<Shortage> {
    let ordered = ordered_quantities(lines);
    let mut shortages: Vec<Shortage> = Vec::new();
    for line in lines {
        let Some(&in_stock) = stock.get(&line.menu_item_id) else {
            continue;
        };
        let total = ordered[&line.menu_item_id];
        let listed = shortages
            .iter()
            .any(|shortage| shortage.menu_item_id == line.menu_item_id);
        if !listed && u64::try_from(in_stock).unwrap_or(0) < total {
            shortages.push(Shortage {
                menu_item_id: line.menu_item_id.clone(),
                name: line.name.clone(),
                in_stock,
                ordered: total,
            });
        }
    }
    shortages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(menu_item_id: &str, quantity: u32) -> OrderLine {
        OrderLine {
            menu_item_id: menu_item_id.to_owned(),
            name: format!("dish {menu_item_id}"),
            quantity,
            unit_price_cents: 1000,
        }
    }

    #[test]
    fn negative_quantity_is_invalid() {
        assert!(StockQuantity::new(-1).is_err());
        assert_eq!(StockQuantity::new(0).map(StockQuantity::get), Ok(0));
    }

    #[test]
    fn repeated_item_lines_add_up() {
        let lines = [line("a", 1), line("b", 2), line("a", 2)];

        let quantities = ordered_quantities(&lines);

        assert_eq!(quantities["a"], 3);
        assert_eq!(quantities["b"], 2);
    }

    #[test]
    fn shortage_counts_all_lines() {
        let lines = [line("a", 1), line("a", 2)];
        let stock = BTreeMap::from([("a".to_owned(), 2)]);

        let shortages = shortages(&lines, &stock);

        assert_eq!(shortages.len(), 1);
        assert_eq!(shortages[0].ordered, 3);
        assert_eq!(
            shortages[0].to_string(),
            "dish a (a): 2 in stock, 3 ordered"
        );
    }

    #[test]
    fn items_without_limit_never_short() {
        let lines = [line("a", 50)];

        let shortages = shortages(&lines, &BTreeMap::new());

        assert!(shortages.is_empty());
    }

    #[test]
    fn exact_stock_is_enough() {
        let lines = [line("a", 2)];
        let stock = BTreeMap::from([("a".to_owned(), 2)]);

        let shortages = shortages(&lines, &stock);

        assert!(shortages.is_empty());
    }
}
