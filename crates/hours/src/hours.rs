//! A week of opening hours and the defaults per kind of place.

use std::str::FromStr;

use crate::local_time::{LocalTime, MINUTES_PER_DAY};
use crate::parser::{self, ParseError};
use crate::weekday::Weekday;

/// An open interval of one day, in minutes since that day's midnight. The end is
/// exclusive and may pass 1440, which means the span runs into the next morning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    start: u16,
    end: u16,
}

impl Span {
    /// From midnight to midnight.
    pub(crate) const ALL_DAY: Span = Span {
        start: 0,
        end: MINUTES_PER_DAY,
    };

    /// Builds a span. The parser guarantees `start < 1440` and `start < end <= 2880`.
    pub(crate) fn new(start: u16, end: u16) -> Self {
        debug_assert!(start < MINUTES_PER_DAY && start < end && end <= 2 * MINUTES_PER_DAY);
        Self { start, end }
    }
}

/// The weekly opening hours of a place.
///
/// Each weekday has a list of open spans. A span that ends past midnight (such as
/// `Fr 18:00-02:00`) keeps the place open into the next morning even when a later rule
/// replaces the next day's own spans, because the hours belong to the evening that
/// started them.
///
/// There is no holiday calendar and no daylight saving time: the hours repeat every
/// week, and callers convert instants to local time themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpeningHours {
    days: [Vec<Span>; 7],
}

impl OpeningHours {
    /// Parses a value in the subset of OpenStreetMap's `opening_hours` syntax
    /// described in the crate documentation.
    ///
    /// # Errors
    ///
    /// Fails on anything outside that subset (months, week numbers, `sunrise`,
    /// comments, misspelled weekdays, times such as `10.30`). The error gives the
    /// byte offset and the offending part.
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        parser::parse(value)
    }

    /// Returns true when the place is open at `minute_of_day` (minutes since midnight)
    /// of `weekday`: inside a span of that day, or inside a span of the day before
    /// that runs past midnight. Span ends are exclusive, so `10:00-22:00` is closed at
    /// 22:00.
    ///
    /// # Panics
    ///
    /// Panics when `minute_of_day` is 1440 or more.
    pub fn is_open(&self, weekday: Weekday, minute_of_day: u16) -> bool {
        assert!(
            minute_of_day < MINUTES_PER_DAY,
            "minute_of_day {minute_of_day} is not below 1440"
        );
        let today = self.days[weekday.index()]
            .iter()
            .any(|span| span.start <= minute_of_day && minute_of_day < span.end);
        let since_yesterday = minute_of_day + MINUTES_PER_DAY;
        let from_yesterday = self.days[weekday.previous().index()]
            .iter()
            .any(|span| since_yesterday < span.end);
        today || from_yesterday
    }

    /// Returns true when the place is open at `time`; see [`OpeningHours::is_open`].
    pub fn is_open_at(&self, time: LocalTime) -> bool {
        self.is_open(time.weekday(), time.minute_of_day())
    }

    /// Hours with every day closed.
    pub(crate) fn closed() -> Self {
        Self {
            days: Default::default(),
        }
    }

    /// Hours with the same span on every day.
    fn every_day(start: u16, end: u16) -> Self {
        Self {
            days: std::array::from_fn(|_| vec![Span::new(start, end)]),
        }
    }

    pub(crate) fn spans_mut(&mut self, weekday: Weekday) -> &mut Vec<Span> {
        &mut self.days[weekday.index()]
    }
}

impl FromStr for OpeningHours {
    type Err = ParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value)
    }
}

/// Returns the hours assumed for a place whose own hours are unknown or cannot be
/// parsed, by its OpenStreetMap `amenity`, every day of the week:
///
/// - `cafe`: 08:00-18:00;
/// - `fast_food`: 10:00-23:00;
/// - `restaurant`, and any other amenity: 11:00-22:00.
///
/// These are assumptions, not data from any source.
pub fn default_for(amenity: &str) -> OpeningHours {
    match amenity {
        "cafe" => OpeningHours::every_day(8 * 60, 18 * 60),
        "fast_food" => OpeningHours::every_day(10 * 60, 23 * 60),
        _ => OpeningHours::every_day(11 * 60, 22 * 60),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ParseErrorKind;
    use crate::Weekday::*;

    fn hours(value: &str) -> OpeningHours {
        OpeningHours::parse(value).unwrap_or_else(|error| panic!("{value:?}: {error}"))
    }

    fn at(hh: u16, mm: u16) -> u16 {
        hh * 60 + mm
    }

    fn error_kind(value: &str) -> ParseErrorKind {
        OpeningHours::parse(value).expect_err(value).kind().clone()
    }

    #[test]
    fn weekday_range_selects_days() {
        let hours = hours("Mo-Fr 10:00-22:00");

        assert!(hours.is_open(Monday, at(10, 0)));
        assert!(hours.is_open(Friday, at(21, 59)));
        assert!(!hours.is_open(Friday, at(22, 0)));
        assert!(!hours.is_open(Friday, at(9, 59)));
        assert!(!hours.is_open(Saturday, at(12, 0)));
    }

    #[test]
    fn weekday_list_selects_days() {
        let hours = hours("Mo,We,Fr 10:00-12:00");

        assert!(hours.is_open(Wednesday, at(11, 0)));
        assert!(!hours.is_open(Tuesday, at(11, 0)));
    }

    #[test]
    fn weekday_range_wraps_sunday() {
        let hours = hours("Su-Tu 10:00-12:00");

        for day in [Sunday, Monday, Tuesday] {
            assert!(hours.is_open(day, at(11, 0)), "{day}");
        }
        assert!(!hours.is_open(Wednesday, at(11, 0)));
        assert!(!hours.is_open(Saturday, at(11, 0)));
    }

    #[test]
    fn several_spans_leave_gap() {
        let hours = hours("Mo 11:00-14:00,17:00-22:00");

        assert!(hours.is_open(Monday, at(13, 0)));
        assert!(!hours.is_open(Monday, at(15, 0)));
        assert!(hours.is_open(Monday, at(18, 0)));
    }

    #[test]
    fn span_past_midnight_opens_next_morning() {
        let hours = hours("Fr 18:00-02:00");

        assert!(hours.is_open(Friday, at(23, 0)));
        assert!(hours.is_open(Saturday, at(1, 59)));
        assert!(!hours.is_open(Saturday, at(2, 0)));
        assert!(!hours.is_open(Friday, at(1, 0)));
    }

    #[test]
    fn sunday_night_opens_monday_morning() {
        let hours = hours("Su 20:00-03:00");

        assert!(hours.is_open(Monday, at(2, 0)));
    }

    #[test]
    fn midnight_end_closes_at_midnight() {
        let ends_at_24 = hours("Mo 10:00-24:00");
        let ends_at_00 = hours("Mo 10:00-00:00");

        assert!(ends_at_24.is_open(Monday, at(23, 59)));
        assert!(!ends_at_24.is_open(Tuesday, at(0, 0)));
        assert_eq!(ends_at_24, ends_at_00);
    }

    #[test]
    fn extended_end_time_is_next_day() {
        let hours = hours("Sa 18:00-26:00");

        assert!(hours.is_open(Sunday, at(1, 0)));
        assert!(!hours.is_open(Sunday, at(2, 0)));
    }

    #[test]
    fn off_and_closed_close_days() {
        for value in ["Mo-Su 10:00-20:00; Su off", "Mo-Su 10:00-20:00; Su closed"] {
            let hours = hours(value);

            assert!(!hours.is_open(Sunday, at(12, 0)), "{value}");
            assert!(hours.is_open(Saturday, at(12, 0)), "{value}");
        }
    }

    #[test]
    fn twenty_four_seven_always_open() {
        let hours = hours("24/7");

        for day in Weekday::ALL {
            assert!(hours.is_open(day, 0), "{day}");
            assert!(hours.is_open(day, 1439), "{day}");
        }
    }

    #[test]
    fn rule_without_selector_is_every_day() {
        let hours = hours("10:00-22:00");

        for day in Weekday::ALL {
            assert!(hours.is_open(day, at(12, 0)), "{day}");
        }
    }

    #[test]
    fn selector_alone_is_all_day() {
        let hours = hours("Sa-Su");

        assert!(hours.is_open(Sunday, 0));
        assert!(!hours.is_open(Monday, at(12, 0)));
    }

    #[test]
    fn later_rule_replaces_named_days() {
        let hours = hours("Mo-Su 10:00-22:00; Sa 12:00-14:00");

        assert!(!hours.is_open(Saturday, at(11, 0)));
        assert!(hours.is_open(Saturday, at(13, 0)));
        assert!(!hours.is_open(Saturday, at(15, 0)));
        assert!(hours.is_open(Sunday, at(11, 0)));
    }

    #[test]
    fn later_rule_keeps_overnight_spill() {
        let hours = hours("Fr 20:00-03:00; Sa 12:00-20:00");

        assert!(hours.is_open(Saturday, at(2, 0)));
        assert!(!hours.is_open(Saturday, at(4, 0)));
    }

    #[test]
    fn comma_rule_adds_spans() {
        let hours = hours("Mo-Fr 08:00-12:00, We 14:00-18:00");

        assert!(hours.is_open(Wednesday, at(9, 0)));
        assert!(hours.is_open(Wednesday, at(15, 0)));
        assert!(!hours.is_open(Thursday, at(15, 0)));
    }

    #[test]
    fn comma_after_off_starts_rule() {
        let hours = hours("We-Fr 16:00-22:00, Sa 12:00-22:00; Su off, Su 12:00-19:00");

        assert!(hours.is_open(Sunday, at(13, 0)));
        assert!(hours.is_open(Saturday, at(13, 0)));
    }

    #[test]
    fn holiday_rules_are_ignored() {
        let hours = hours("Mo-Fr 10:00-17:00; PH off; PH Mo 12:00-13:00");

        assert!(hours.is_open(Monday, at(11, 0)));
        assert!(!hours.is_open(Monday, at(9, 0)));
        assert_eq!(
            hours,
            super::OpeningHours::parse("Mo-Fr 10:00-17:00").expect("valid")
        );
    }

    #[test]
    fn holiday_list_applies_to_weekdays() {
        let hours = hours("PH,Sa 10:00-12:00");

        assert!(hours.is_open(Saturday, at(11, 0)));
        assert!(!hours.is_open(Friday, at(11, 0)));
    }

    #[test]
    fn mapping_slips_are_tolerated() {
        let cases = [
            ("Mo-Fr 8:00-16:00", "Mo-Fr 08:00-16:00"),
            ("Mo-Fr 11-22", "Mo-Fr 11:00-22:00"),
            ("mo-sa 11:00-20:00", "Mo-Sa 11:00-20:00"),
            ("Su12:00-20:00", "Su 12:00-20:00"),
            ("Mo-Su 10:00-19:00;", "Mo-Su 10:00-19:00"),
            ("Su-Th 17:00 - 22:00", "Su-Th 17:00-22:00"),
            ("Mo, Tu 11:00-16:00", "Mo,Tu 11:00-16:00"),
        ];

        for (slip, canonical) in cases {
            assert_eq!(hours(slip), hours(canonical), "{slip}");
        }
    }

    #[test]
    fn unsupported_features_are_named() {
        let cases = [
            ("Tu-Sa 17:00-22:00; Jul 1 - Aug 6 off", "month selectors"),
            ("week 1-26 Mo 10:00-12:00", "week numbers"),
            ("Mo sunrise-sunset", "sun-relative times such as sunrise"),
            ("Mo-Fr 11:00-15:00 open \"Lunch\"", "comments"),
            ("\"by appointment\"", "comments"),
            ("Mo-Sa 17:00-23:00+", "open ends (`+`)"),
            ("Mo 10:00-12:00 || \"call\"", "fallback rules (`||`)"),
            ("SH off", "school holidays (`SH`)"),
            ("2020 Mo 10:00-12:00", "year selectors"),
        ];

        for (value, feature) in cases {
            assert_eq!(
                error_kind(value),
                ParseErrorKind::Unsupported(feature),
                "{value}"
            );
        }
    }

    #[test]
    fn malformed_values_are_errors() {
        for value in [
            "",
            "   ",
            ";",
            "Mo-Fr 10.30-13",
            "Ma-Pe 10:00-16:00",
            "Mo–Th 07:45–17:00",
            "Mo-Su 10:30-20:0",
            "Mo-Fr 10:00-24:00; Sa 24h",
            "Mo-Fr 08:00-19:00 Sa 09:00-19:00",
            "Mo-Fr 11:00-21:00; Sa, 12:00-21:00",
            "Mo-Sa 11:00-22:00: Su 12:00-19:00",
            "Mo-Fr 10:00-",
            "Mo-Fr 10:00-12:00,",
            "Mo-Fr 10:00-50:00",
            "Mo 24:00-02:00",
            "Mo 10:00-12:00 off",
            "7/24",
            "Wed-Sat 11:00-20:00",
        ] {
            assert!(OpeningHours::parse(value).is_err(), "accepted {value:?}");
        }
    }

    #[test]
    fn error_names_offending_part() {
        let error = OpeningHours::parse("Mo-Fr 10:00-22:00; Sa 10.30-13:00").expect_err("a dot");

        assert_eq!(error.offset(), 24);
        assert_eq!(error.fragment(), ".");
        assert!(error.to_string().contains("byte 24"), "{error}");
    }

    #[test]
    fn month_error_names_month() {
        let error = OpeningHours::parse("Mo 10:00-12:00; Oct-Mar: off").expect_err("a month");

        assert_eq!(error.fragment(), "Oct");
        assert_eq!(
            error.to_string(),
            "invalid opening_hours at byte 16 (\"Oct\"): month selectors are not supported"
        );
    }

    #[test]
    fn defaults_follow_amenity() {
        let cafe = default_for("cafe");
        let fast_food = default_for("fast_food");
        let restaurant = default_for("restaurant");

        assert!(cafe.is_open(Sunday, at(8, 0)));
        assert!(!cafe.is_open(Sunday, at(18, 0)));
        assert!(fast_food.is_open(Monday, at(22, 59)));
        assert!(!fast_food.is_open(Monday, at(9, 59)));
        assert!(restaurant.is_open(Friday, at(11, 0)));
        assert!(!restaurant.is_open(Friday, at(22, 0)));
        assert_eq!(default_for("bar"), restaurant);
    }

    #[test]
    #[should_panic(expected = "minute_of_day 1440")]
    fn minute_past_day_panics() {
        hours("24/7").is_open(Monday, 1440);
    }

    /// Computes whether `from-to start-end` is open at `day` and `minute` without the
    /// parser. A day is in the range when it is reached walking forward from `from`,
    /// and a span whose end is not after its start runs into the next day.
    fn model_is_open(
        from: usize,
        to: usize,
        start: u16,
        end: u16,
        day: usize,
        minute: u16,
    ) -> bool {
        let selected = |d: usize| (d + 7 - from) % 7 <= (to + 7 - from) % 7;
        let end = if end <= start { end + 1440 } else { end };
        let today = selected(day) && start <= minute && minute < end;
        let yesterday = selected((day + 6) % 7) && minute + 1440 < end;
        today || yesterday
    }

    proptest! {
        #[test]
        fn single_rule_matches_model(
            from in 0usize..7,
            to in 0usize..7,
            start in 0u16..1440,
            end in 0u16..=1440,
            day in 0usize..7,
            minute in 0u16..1440,
        ) {
            let text = format!(
                "{}-{} {:02}:{:02}-{:02}:{:02}",
                Weekday::ALL[from].abbreviation(),
                Weekday::ALL[to].abbreviation(),
                start / 60,
                start % 60,
                end / 60,
                end % 60,
            );

            let hours = OpeningHours::parse(&text).expect("a generated rule parses");

            prop_assert_eq!(
                hours.is_open(Weekday::ALL[day], minute),
                model_is_open(from, to, start, end, day, minute),
                "{} on {} at minute {}", text, Weekday::ALL[day], minute
            );
        }

        #[test]
        fn parse_never_panics(value in "\\PC{0,40}") {
            let _ = OpeningHours::parse(&value);
        }

        #[test]
        fn token_soup_never_panics(
            tokens in prop::collection::vec(
                prop::sample::select(vec![
                    "Mo", "Su", "PH", "-", ",", ";", ":", "10", "7", "24", "/", "00",
                    "off", "open", "\"x\"", "+", " ", "Jan", "2020", "48", "99",
                ]),
                0..16,
            ),
        ) {
            let _ = OpeningHours::parse(&tokens.concat());
        }
    }
}
