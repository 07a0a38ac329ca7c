//! The real orders to replay, and how each maps onto the catalog.
//!
//! The rules are those of `data/README.md`. An order goes to the catalog restaurant
//! nearest to its venue, with `item_count` items picked by a stable hash of the order
//! id. It keeps its real time since the previous order, divided by the speed.

use std::collections::BTreeMap;

use serde::Deserialize;
use tiffin_runtime::hash::fnv1a64;

/// The Wolt orders of Helsinki, August and September 2020, in time order.
const ORDERS_CSV: &str = include_str!("../../data/orders_wolt_helsinki_2020.csv");

/// One real order.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RealOrder {
    /// Sequential id in time order.
    pub order_id: u64,
    /// Placement time, `YYYY-MM-DD HH:MM:SS` (time zone not documented in the source).
    pub ordered_at: String,
    /// Items in the order.
    pub item_count: u32,
    /// Drop-off position, degrees.
    pub customer_lat: f64,
    /// Drop-off position, degrees.
    pub customer_lon: f64,
    /// Pick-up position, degrees.
    pub venue_lat: f64,
    /// Pick-up position, degrees.
    pub venue_lon: f64,
    /// Minutes from placement to the door.
    pub actual_delivery_minutes: u32,
}

impl RealOrder {
    /// Returns the placement time as a local time, `YYYY-MM-DDTHH:MM:SS`.
    pub fn local_time(&self) -> String {
        self.ordered_at.replacen(' ', "T", 1)
    }

    /// Returns the placement time in seconds since the Unix epoch. The source's time
    /// zone is undocumented and read as UTC, because only differences between orders
    /// matter here.
    pub fn ordered_at_secs(&self) -> anyhow::Result<i64> {
        parse_timestamp(&self.ordered_at).ok_or_else(|| {
            anyhow::anyhow!(
                "order {} has an invalid ordered_at `{}`",
                self.order_id,
                self.ordered_at
            )
        })
    }
}

/// Reads `limit` orders starting at row `skip` (both counted in rows of the file).
///
/// # Errors
///
/// Fails when a row does not parse, which would mean the shipped file is damaged.
pub fn real_orders(skip: usize, limit: usize) -> anyhow::Result<Vec<RealOrder>> {
    let mut reader = csv::Reader::from_reader(ORDERS_CSV.as_bytes());
    let mut orders = Vec::with_capacity(limit.min(20_000));
    for (index, row) in reader
        .deserialize::<RealOrder>()
        .enumerate()
        .skip(skip)
        .take(limit)
    {
        let order = row.map_err(|error| {
            anyhow::anyhow!(
                "row {} of the order data does not parse: {error}",
                index + 2
            )
        })?;
        orders.push(order);
    }
    Ok(orders)
}

/// Parses `YYYY-MM-DD HH:MM:SS` as UTC seconds since the Unix epoch.
fn parse_timestamp(text: &str) -> Option<i64> {
    let (date, time) = text.split_once(' ')?;
    let mut date_parts = date.split('-').map(str::parse::<i64>);
    let (year, month, day) = (
        date_parts.next()?.ok()?,
        date_parts.next()?.ok()?,
        date_parts.next()?.ok()?,
    );
    let mut time_parts = time.split(':').map(str::parse::<i64>);
    let (hour, minute, second) = (
        time_parts.next()?.ok()?,
        time_parts.next()?.ok()?,
        time_parts.next()?.ok()?,
    );
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date, using Howard Hinnant's
/// `days_from_civil` algorithm ("chrono-Compatible Low-Level Date Algorithms").
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * shifted_month + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A restaurant as the load generator needs it.
#[derive(Debug, Clone)]
pub struct Venue {
    /// The catalog id.
    pub id: String,
    /// Position, degrees.
    pub lat: f64,
    /// Position, degrees.
    pub lon: f64,
    /// When it is open, as the kitchen judges it.
    pub hours: tiffin_hours::OpeningHours,
}

/// Returns the index of the venue nearest to (`lat`, `lon`) by great-circle
/// distance, or `None` when there are none.
pub fn nearest(venues: &[Venue], lat: f64, lon: f64) -> Option<usize> {
    venues
        .iter()
        .enumerate()
        .map(|(index, venue)| (index, haversine_km(lat, lon, venue.lat, venue.lon)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(index, _)| index)
}

/// Returns the index of the venue nearest to (`lat`, `lon`) among those open at
/// `local_time` (`YYYY-MM-DDTHH:MM:SS`), or the nearest of all when none is open or
/// the time does not parse.
pub fn nearest_open(venues: &[Venue], lat: f64, lon: f64, local_time: &str) -> Option<usize> {
    let Ok(time) = tiffin_hours::LocalTime::parse(local_time) else {
        return nearest(venues, lat, lon);
    };
    venues
        .iter()
        .enumerate()
        .filter(|(_, venue)| venue.hours.is_open_at(time))
        .map(|(index, venue)| (index, haversine_km(lat, lon, venue.lat, venue.lon)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(index, _)| index)
        .or_else(|| nearest(venues, lat, lon))
}

/// Great-circle distance in kilometres on a sphere of radius 6,371 km (the mean
/// Earth radius), by the haversine formula.
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let d_phi = (lat2 - lat1).to_radians();
    let d_lambda = (lon2 - lon1).to_radians();
    let a = (d_phi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (d_lambda / 2.0).sin().powi(2);
    2.0 * 6371.0 * a.sqrt().asin()
}

/// Picks `item_count` items of a menu of `menu_len` items for `order_id`: item `i`
/// is `hash("order<order_id>#<i>") % menu_len`, and repeated picks add to one line's
/// quantity. Returns (menu index, quantity) pairs in menu order.
pub fn pick_items(order_id: u64, item_count: u32, menu_len: usize) -> Vec<(usize, u32)> {
    let mut lines = BTreeMap::new();
    if menu_len == 0 {
        return Vec::new();
    }
    for i in 0..item_count.max(1) {
        let index = (fnv1a64(&format!("order{order_id}#{i}")) % menu_len as u64) as usize;
        *lines.entry(index).or_insert(0) += 1;
    }
    lines.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_orders_parse_in_time_order() {
        let orders = real_orders(0, usize::MAX).expect("the shipped file parses");

        assert_eq!(orders.len(), 18_706);
        let times: Vec<i64> = orders
            .iter()
            .map(|o| o.ordered_at_secs().expect("valid time"))
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "orders are not in time order"
        );
    }

    #[test]
    fn timestamp_parses_as_utc() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse_timestamp("2020-08-01 06:07:00"), Some(1_596_262_020));
        assert_eq!(parse_timestamp("2020-13-01 06:07:00"), None);
    }

    fn venue(id: &str, lat: f64, lon: f64, hours: &str) -> Venue {
        Venue {
            id: id.into(),
            lat,
            lon,
            hours: tiffin_hours::OpeningHours::parse(hours).expect("valid hours"),
        }
    }

    #[test]
    fn nearest_picks_closest_venue() {
        let venues = vec![
            venue("far", 60.25, 25.10, "24/7"),
            venue("near", 60.170, 24.941, "24/7"),
        ];

        let index = nearest(&venues, 60.169, 24.940).expect("a venue");

        assert_eq!(venues[index].id, "near");
    }

    #[test]
    fn nearest_open_skips_closed_venue() {
        let venues = vec![
            venue("far-all-night", 60.25, 25.10, "24/7"),
            venue("near-daytime", 60.170, 24.941, "Mo-Su 10:00-22:00"),
        ];

        let at_dawn =
            nearest_open(&venues, 60.169, 24.940, "2020-08-01T06:07:00").expect("a venue");
        let at_noon =
            nearest_open(&venues, 60.169, 24.940, "2020-08-01T12:00:00").expect("a venue");

        assert_eq!(venues[at_dawn].id, "far-all-night");
        assert_eq!(venues[at_noon].id, "near-daytime");
    }

    #[test]
    fn picks_sum_to_item_count() {
        for count in 1..12 {
            let lines = pick_items(42, count, 7);
            assert_eq!(lines.iter().map(|(_, q)| q).sum::<u32>(), count);
            assert!(lines.iter().all(|(index, _)| *index < 7));
        }
    }
}
