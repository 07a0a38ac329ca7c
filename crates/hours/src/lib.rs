//! Opening hours in OpenStreetMap's `opening_hours` syntax, and the local times to
//! check them at.
//!
//! [`OpeningHours::parse`] reads the subset of the syntax that the Helsinki
//! restaurant data uses:
//!
//! - weekday selectors: `Mo`, ranges `Mo-Fr`, lists `Mo,We,Fr`, and ranges that wrap
//!   past Sunday (`Su-Tu`);
//! - time spans: `10:00-22:00`, several per rule (`11:00-14:00,17:00-22:00`), spans
//!   past midnight (`18:00-02:00` keeps the place open into the next morning), `24:00`
//!   as an end, and ends up to `48:00`;
//! - `off` and `closed`, `open`, and `24/7`;
//! - rules without a weekday selector, which apply to every day;
//! - rules separated by `;`, where a later rule replaces the spans of the days it
//!   names, and additional rules separated by `,` (`Mo-Th 10:00-22:00, Fr 10:00-23:00`),
//!   which add their spans to those days;
//! - `PH` (public holiday) rules, which are ignored because there is no holiday
//!   calendar. In a list with weekdays (`PH,Mo-Su`) the rule applies to those
//!   weekdays.
//!
//! It also accepts common mapping slips whose meaning is unambiguous: any whitespace
//! or none between tokens (`Su12:00-20:00`), weekdays in any letter case (`mo-sa`),
//! one-digit hours (`8:00`), bare hours (`11-22`), and empty rules (`;;`, a trailing
//! `;`).
//!
//! Everything else is an error that names the offending part: months, week numbers,
//! years, `sunrise` and other sun-relative times, school holidays, comments, open
//! ends (`+`), fallback rules (`||`), and malformed values such as `10.30` or `Ma-Pe`.
//! Callers fall back to [`default_for`] the place's amenity.
//!
//! [`LocalTime`] turns a replayed order's `YYYY-MM-DDTHH:MM:SS` or a Unix timestamp
//! at a fixed UTC offset into a [`Weekday`] and a minute of the day.
//!
//! # Layout
//!
//! - `parser`: the lexer and the recursive-descent parser, and [`ParseError`].
//! - `hours`: [`OpeningHours`], the open spans per weekday, and [`default_for`].
//! - `local_time`: [`LocalTime`] and the calendar arithmetic.
//! - `weekday`: [`Weekday`].
//!
//! # Example
//!
//! ```
//! use tiffin_hours::{LocalTime, OpeningHours, Weekday};
//!
//! let hours = OpeningHours::parse("Mo-Th 10:00-22:00; Fr-Sa 10:00-02:00; Su off")?;
//! let friday_night = LocalTime::parse("2020-08-01T01:30:00")?; // a Saturday
//!
//! assert!(hours.is_open_at(friday_night));
//! assert!(!hours.is_open(Weekday::Sunday, 12 * 60));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod hours;
mod local_time;
mod parser;
mod weekday;

pub use crate::hours::{OpeningHours, default_for};
pub use crate::local_time::{LocalTime, LocalTimeError};
pub use crate::parser::{ParseError, ParseErrorKind};
pub use crate::weekday::Weekday;
