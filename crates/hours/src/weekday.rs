//! Days of the week.

use std::fmt;

/// A day of the week. Weeks start on Monday, as in ISO 8601 and in OpenStreetMap's
/// `opening_hours` syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Weekday {
    /// Monday, `Mo`.
    Monday,
    /// Tuesday, `Tu`.
    Tuesday,
    /// Wednesday, `We`.
    Wednesday,
    /// Thursday, `Th`.
    Thursday,
    /// Friday, `Fr`.
    Friday,
    /// Saturday, `Sa`.
    Saturday,
    /// Sunday, `Su`.
    Sunday,
}

impl Weekday {
    /// Every day from Monday to Sunday.
    pub const ALL: [Weekday; 7] = [
        Weekday::Monday,
        Weekday::Tuesday,
        Weekday::Wednesday,
        Weekday::Thursday,
        Weekday::Friday,
        Weekday::Saturday,
        Weekday::Sunday,
    ];

    /// Returns the day's position in the week: 0 for Monday up to 6 for Sunday.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Returns the day at position `index` (0 is Monday), or `None` for 7 or more.
    pub fn from_index(index: usize) -> Option<Self> {
        Self::ALL.get(index).copied()
    }

    /// Returns the day after this one, Monday after Sunday.
    pub fn next(self) -> Self {
        Self::ALL[(self.index() + 1) % 7]
    }

    /// Returns the day before this one, Sunday before Monday.
    pub fn previous(self) -> Self {
        Self::ALL[(self.index() + 6) % 7]
    }

    /// Returns the two-letter abbreviation of `opening_hours`: `Mo`, `Tu`, `We`, `Th`,
    /// `Fr`, `Sa` or `Su`.
    pub fn abbreviation(self) -> &'static str {
        match self {
            Self::Monday => "Mo",
            Self::Tuesday => "Tu",
            Self::Wednesday => "We",
            Self::Thursday => "Th",
            Self::Friday => "Fr",
            Self::Saturday => "Sa",
            Self::Sunday => "Su",
        }
    }

    /// Parses a two-letter abbreviation, ignoring case (`Mo`, `mo` and `MO` are
    /// Monday).
    pub(crate) fn from_abbreviation(word: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|day| day.abbreviation().eq_ignore_ascii_case(word))
    }

    /// Returns the English name, such as `Monday`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Monday => "Monday",
            Self::Tuesday => "Tuesday",
            Self::Wednesday => "Wednesday",
            Self::Thursday => "Thursday",
            Self::Friday => "Friday",
            Self::Saturday => "Saturday",
            Self::Sunday => "Sunday",
        }
    }
}

impl fmt::Display for Weekday {
    /// Writes the English name, such as `Monday`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trips() {
        for day in Weekday::ALL {
            assert_eq!(Weekday::from_index(day.index()), Some(day));
        }
        assert_eq!(Weekday::from_index(7), None);
    }

    #[test]
    fn next_and_previous_wrap() {
        assert_eq!(Weekday::Sunday.next(), Weekday::Monday);
        assert_eq!(Weekday::Monday.previous(), Weekday::Sunday);
    }

    #[test]
    fn abbreviation_ignores_case() {
        assert_eq!(Weekday::from_abbreviation("su"), Some(Weekday::Sunday));
        assert_eq!(Weekday::from_abbreviation("TH"), Some(Weekday::Thursday));
        assert_eq!(Weekday::from_abbreviation("Ma"), None);
    }
}
