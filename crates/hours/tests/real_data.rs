//! Parses every `opening_hours` value of the Helsinki restaurant data.

use std::collections::BTreeMap;
use std::path::Path;

use tiffin_hours::OpeningHours;

/// Reads the non-empty `opening_hours` cells of the restaurant file, one per row.
fn real_values() -> Vec<String> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/restaurants_helsinki_osm.csv");
    let mut reader = csv::Reader::from_path(&path)
        .unwrap_or_else(|error| panic!("failed to open {}: {error}", path.display()));
    let column = reader
        .headers()
        .expect("the file has a header row")
        .iter()
        .position(|name| name == "opening_hours")
        .expect("the file has an opening_hours column");
    reader
        .records()
        .map(|record| record.expect("every row is valid CSV")[column].to_owned())
        .filter(|value| !value.is_empty())
        .collect()
}

#[test]
fn most_real_values_parse() {
    let values = real_values();

    let mut failures: BTreeMap<String, String> = BTreeMap::new();
    for value in &values {
        if let Err(error) = OpeningHours::parse(value) {
            failures.insert(value.clone(), error.to_string());
        }
    }
    let parsed = values
        .iter()
        .filter(|value| !failures.contains_key(*value))
        .count();
    for (value, error) in &failures {
        println!("{value:?}: {error}");
    }
    println!("{parsed} of {} values parse", values.len());

    assert_eq!(values.len(), 742, "rows with opening_hours");
    assert!(
        parsed >= 702,
        "only {parsed} of {} values parse",
        values.len()
    );
}
