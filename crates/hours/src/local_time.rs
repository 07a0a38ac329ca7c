//! Local wall-clock times, reduced to what opening hours depend on: the weekday and
//! the minute of the day.

use std::fmt;

use crate::Weekday;

/// Minutes in a day.
pub(crate) const MINUTES_PER_DAY: u16 = 24 * 60;

const MILLIS_PER_MINUTE: i64 = 60_000;
const MILLIS_PER_DAY: i64 = 86_400_000;

/// A local time of the week: a weekday and a minute of that day (0 is midnight, 1439
/// is 23:59). Seconds are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalTime {
    weekday: Weekday,
    minute_of_day: u16,
}

/// A local time that [`LocalTime::parse`] could not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid local time {value:?}: {reason}; expected YYYY-MM-DDTHH:MM:SS, such as \
     2020-08-01T06:07:00"
)]
pub struct LocalTimeError {
    value: String,
    reason: &'static str,
}

impl LocalTimeError {
    /// Returns the value that failed to parse.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl LocalTime {
    /// Builds a local time, or returns `None` when `minute_of_day` is 1440 or more.
    pub fn new(weekday: Weekday, minute_of_day: u16) -> Option<Self> {
        (minute_of_day < MINUTES_PER_DAY).then_some(Self {
            weekday,
            minute_of_day,
        })
    }

    /// Parses a date and time without an offset, `YYYY-MM-DDTHH:MM:SS` (a space in
    /// place of the `T` is accepted too), and derives the weekday from the date in
    /// the proleptic Gregorian calendar.
    ///
    /// # Errors
    ///
    /// Fails when the value does not have that form or names a date or time that does
    /// not exist, such as `2021-02-29` or `24:00:00`. The error names the value.
    pub fn parse(value: &str) -> Result<Self, LocalTimeError> {
        let invalid = |reason| LocalTimeError {
            value: value.to_owned(),
            reason,
        };
        let bytes = value.as_bytes();
        let separators_fit = bytes.len() == 19
            && bytes[4] == b'-'
            && bytes[7] == b'-'
            && (bytes[10] == b'T' || bytes[10] == b' ')
            && bytes[13] == b':'
            && bytes[16] == b':';
        if !separators_fit {
            return Err(invalid("the separators are not where the format puts them"));
        }
        let number = |from: usize, to: usize| -> Result<i64, LocalTimeError> {
            let digits = &bytes[from..to];
            if !digits.iter().all(u8::is_ascii_digit) {
                return Err(invalid(
                    "a date or time field has a character that is not a digit",
                ));
            }
            Ok(digits
                .iter()
                .fold(0, |value, digit| value * 10 + i64::from(digit - b'0')))
        };

        let year = number(0, 4)?;
        let month = number(5, 7)?;
        let day = number(8, 10)?;
        let hour = number(11, 13)?;
        let minute = number(14, 16)?;
        let second = number(17, 19)?;
        if !(1..=12).contains(&month) {
            return Err(invalid("the month is not between 01 and 12"));
        }
        if day < 1 || day > days_in_month(year, month) {
            return Err(invalid("the day does not exist in that month"));
        }
        if hour > 23 || minute > 59 || second > 59 {
            return Err(invalid("the time is not between 00:00:00 and 23:59:59"));
        }

        let days = days_from_civil(year, month, day);
        Ok(Self {
            weekday: weekday_from_days(days),
            minute_of_day: u16::try_from(hour * 60 + minute)
                .expect("a time before 24:00 has fewer than 1440 minutes"),
        })
    }

    /// Converts a Unix timestamp in milliseconds to the local time at a fixed offset
    /// from UTC, in minutes east of Greenwich (120 for UTC+02:00).
    ///
    /// The offset is applied as given: daylight saving time is up to the caller.
    pub fn from_unix_millis(unix_millis: i64, utc_offset_minutes: i32) -> Self {
        let local = unix_millis.saturating_add(i64::from(utc_offset_minutes) * MILLIS_PER_MINUTE);
        let days = local.div_euclid(MILLIS_PER_DAY);
        let minute = local.rem_euclid(MILLIS_PER_DAY) / MILLIS_PER_MINUTE;
        Self {
            weekday: weekday_from_days(days),
            minute_of_day: u16::try_from(minute)
                .expect("the remainder of a day has fewer than 1440 minutes"),
        }
    }

    /// Returns the day of the week.
    pub fn weekday(self) -> Weekday {
        self.weekday
    }

    /// Returns the minutes since midnight, from 0 to 1439.
    pub fn minute_of_day(self) -> u16 {
        self.minute_of_day
    }
}

impl fmt::Display for LocalTime {
    /// Writes the weekday and the time, such as `Saturday 06:07`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:02}:{:02}",
            self.weekday,
            self.minute_of_day / 60,
            self.minute_of_day % 60
        )
    }
}

/// Returns the weekday of a day counted from 1970-01-01, which was a Thursday.
fn weekday_from_days(days_since_epoch: i64) -> Weekday {
    let index = (days_since_epoch + Weekday::Thursday.index() as i64).rem_euclid(7);
    Weekday::ALL[index as usize]
}

/// Returns the days from 1970-01-01 to a date of the proleptic Gregorian calendar,
/// using Howard Hinnant's `days_from_civil` algorithm ("chrono-Compatible Low-Level
/// Date Algorithms").
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parse_reads_weekday_and_minute() {
        let time = LocalTime::parse("2020-08-01T06:07:00").expect("valid time");

        assert_eq!(time.weekday(), Weekday::Saturday);
        assert_eq!(time.minute_of_day(), 6 * 60 + 7);
    }

    #[test]
    fn parse_accepts_space_separator() {
        let time = LocalTime::parse("2020-09-30 23:59:59").expect("valid time");

        assert_eq!(time.weekday(), Weekday::Wednesday);
        assert_eq!(time.minute_of_day(), 1439);
    }

    #[test]
    fn parse_knows_leap_days() {
        let leap = LocalTime::parse("2000-02-29T12:00:00").expect("2000 is a leap year");

        assert_eq!(leap.weekday(), Weekday::Tuesday);
        assert!(LocalTime::parse("2100-02-29T12:00:00").is_err());
        assert!(LocalTime::parse("2021-02-29T12:00:00").is_err());
    }

    #[test]
    fn parse_rejects_malformed_values() {
        for value in [
            "",
            "2020-08-01",
            "2020-08-01T06:07",
            "2020-08-01T06:07:00Z",
            "2020/08/01T06:07:00",
            "2020-13-01T06:07:00",
            "2020-04-31T06:07:00",
            "2020-08-00T06:07:00",
            "2020-08-01T24:00:00",
            "2020-08-01T06:60:00",
            "2020-08-01T06:07:60",
            "2020-08-01T0a:07:00",
            "2020-08-01T+6:07:00",
        ] {
            assert!(LocalTime::parse(value).is_err(), "accepted {value:?}");
        }
    }

    #[test]
    fn parse_error_names_value() {
        let error = LocalTime::parse("yesterday").expect_err("not a time");

        assert_eq!(error.value(), "yesterday");
        assert!(error.to_string().contains("\"yesterday\""), "{error}");
    }

    #[test]
    fn epoch_is_thursday() {
        let time = LocalTime::from_unix_millis(0, 0);

        assert_eq!(time.weekday(), Weekday::Thursday);
        assert_eq!(time.minute_of_day(), 0);
    }

    #[test]
    fn offset_moves_across_midnight() {
        // 2020-08-01T22:30:00Z is a Saturday in UTC and Sunday 01:30 at UTC+03:00.
        let utc = LocalTime::parse("2020-08-01T22:30:00").expect("valid time");
        let millis = days_from_civil(2020, 8, 1) * MILLIS_PER_DAY + 22 * 3_600_000 + 30 * 60_000;

        let helsinki_summer = LocalTime::from_unix_millis(millis, 180);

        assert_eq!(LocalTime::from_unix_millis(millis, 0), utc);
        assert_eq!(helsinki_summer.weekday(), Weekday::Sunday);
        assert_eq!(helsinki_summer.minute_of_day(), 90);
    }

    #[test]
    fn before_epoch_is_supported() {
        let time = LocalTime::from_unix_millis(-1, 0);

        assert_eq!(time.weekday(), Weekday::Wednesday);
        assert_eq!(time.minute_of_day(), 1439);
    }

    #[test]
    fn display_shows_day_and_time() {
        let time = LocalTime::new(Weekday::Friday, 21 * 60 + 5).expect("valid minute");

        assert_eq!(time.to_string(), "Friday 21:05");
        assert_eq!(LocalTime::new(Weekday::Friday, 1440), None);
    }

    /// Converts days since 1970-01-01 back to a date with Hinnant's
    /// `civil_from_days`, independently of the code under test.
    fn civil_from_days(days: i64) -> (i64, i64, i64) {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        (yoe + era * 400 + i64::from(month <= 2), month, day)
    }

    proptest! {
        #[test]
        fn parse_agrees_with_unix_millis(
            days in -700_000i64..2_900_000,
            minute in 0i64..1440,
        ) {
            let (year, month, day) = civil_from_days(days);
            let text = format!(
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:30",
                minute / 60,
                minute % 60
            );

            let parsed = LocalTime::parse(&text).expect("a formatted date parses");
            let converted =
                LocalTime::from_unix_millis(days * MILLIS_PER_DAY + minute * 60_000 + 30_000, 0);

            prop_assert_eq!(parsed, converted, "{}", text);
            prop_assert_eq!(days_from_civil(year, month, day), days);
        }
    }
}
