//! The `opening_hours` lexer and parser.
//!
//! Grammar of the supported subset, after whitespace is dropped:
//!
//! ```text
//! value     = rule { ( ";" | "," ) rule } [ ";" ]
//! rule      = "24/7" [ state ]
//!           | [ selector ] [ span { "," span } ] [ state ]    (not all three empty)
//! selector  = item { "," item }
//! item      = weekday [ "-" weekday ] | "PH"
//! span      = time "-" time
//! time      = hour [ ":" minute ]                            (hour: 1-2 digits)
//! state     = "off" | "closed" | "open"
//! ```
//!
//! A `,` after a span starts another span when a time follows and an additional rule
//! when a weekday follows.

use crate::hours::{OpeningHours, Span};
use crate::local_time::MINUTES_PER_DAY;
use crate::weekday::Weekday;

/// An `opening_hours` value that failed to parse: the offending part, its byte offset
/// and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid opening_hours at byte {offset} ({fragment:?}): {kind}")]
pub struct ParseError {
    offset: usize,
    fragment: String,
    kind: ParseErrorKind,
}

/// The kind of a [`ParseError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The value has no rule.
    #[error("the value has no rule")]
    Empty,
    /// Something else appears where the grammar needs what the message names.
    #[error("expected {0}")]
    Expected(&'static str),
    /// A time is out of range or badly formed.
    #[error("invalid time: {0}")]
    InvalidTime(&'static str),
    /// Valid `opening_hours` syntax outside the supported subset, such as months,
    /// week numbers, `sunrise` or comments.
    #[error("{0} are not supported")]
    Unsupported(&'static str),
}

impl ParseError {
    /// Returns the byte offset of the offending part in the parsed value.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Returns the offending part, empty when the value ended too early.
    pub fn fragment(&self) -> &str {
        &self.fragment
    }

    /// Returns what is wrong with the offending part.
    pub fn kind(&self) -> &ParseErrorKind {
        &self.kind
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind<'a> {
    Word(&'a str),
    Number { value: u32, digits: usize },
    Colon,
    Dash,
    Comma,
    Semicolon,
    Slash,
    Comment,
    Other(char),
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    kind: TokenKind<'a>,
    offset: usize,
    text: &'a str,
}

/// Splits `input` into tokens, dropping whitespace. Characters outside the grammar
/// become [`TokenKind::Other`], so the parser reports them with the context it has.
fn lex(input: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut chars = input.char_indices().peekable();
    while let Some((offset, c)) = chars.next() {
        if c.is_whitespace() {
            continue;
        }
        let mut end = offset + c.len_utf8();
        let kind = if c.is_ascii_alphabetic() {
            while let Some(&(index, _)) = chars.peek().filter(|(_, c)| c.is_ascii_alphabetic()) {
                chars.next();
                end = index + 1;
            }
            TokenKind::Word(&input[offset..end])
        } else if c.is_ascii_digit() {
            while let Some(&(index, _)) = chars.peek().filter(|(_, c)| c.is_ascii_digit()) {
                chars.next();
                end = index + 1;
            }
            let digits = &input[offset..end];
            // Saturates for absurdly long runs, which no check accepts anyway.
            let value = digits.parse().unwrap_or(u32::MAX);
            TokenKind::Number {
                value,
                digits: digits.len(),
            }
        } else if c == '"' {
            for (index, next) in chars.by_ref() {
                end = index + next.len_utf8();
                if next == '"' {
                    break;
                }
            }
            TokenKind::Comment
        } else {
            match c {
                ':' => TokenKind::Colon,
                '-' => TokenKind::Dash,
                ',' => TokenKind::Comma,
                ';' => TokenKind::Semicolon,
                '/' => TokenKind::Slash,
                other => TokenKind::Other(other),
            }
        };
        tokens.push(Token {
            kind,
            offset,
            text: &input[offset..end],
        });
    }
    tokens
}

/// Parses an `opening_hours` value into the open spans of each weekday.
pub(crate) fn parse(input: &str) -> Result<OpeningHours, ParseError> {
    let mut parser = Parser {
        input,
        tokens: lex(input),
        position: 0,
    };
    let mut hours = OpeningHours::closed();
    let mut mode = Mode::Replace;
    let mut rules = 0;
    loop {
        // Empty rules (`;;`, a trailing `;`) are tolerated because they mean nothing.
        while parser.eat(TokenKind::Semicolon) {
            mode = Mode::Replace;
        }
        if parser.peek().is_none() {
            break;
        }
        let rule = parser.rule()?;
        rule.apply(&mut hours, mode);
        rules += 1;

        match parser.next() {
            None => break,
            Some(Token {
                kind: TokenKind::Semicolon,
                ..
            }) => mode = Mode::Replace,
            Some(Token {
                kind: TokenKind::Comma,
                ..
            }) => mode = Mode::Add,
            Some(token) => {
                return Err(parser.unexpected(token, "`;` or `,` between rules"));
            }
        }
    }
    if rules == 0 {
        return Err(ParseError {
            offset: 0,
            fragment: input.to_owned(),
            kind: ParseErrorKind::Empty,
        });
    }
    Ok(hours)
}

/// The combination of a rule with the rules before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// After `;` (or first): the rule's days get only this rule's spans.
    Replace,
    /// After `,`: the rule's spans are added to what earlier rules gave its days.
    Add,
}

/// The state a rule gives the days it selects.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    Open(Vec<Span>),
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// Selected weekdays, by index. All true for a rule without a selector.
    days: [bool; 7],
    body: Body,
}

impl Rule {
    fn apply(&self, hours: &mut OpeningHours, mode: Mode) {
        for day in Weekday::ALL {
            if !self.days[day.index()] {
                continue;
            }
            let spans = hours.spans_mut(day);
            match (&self.body, mode) {
                (Body::Closed, _) => spans.clear(),
                (Body::Open(open), Mode::Replace) => *spans = open.clone(),
                (Body::Open(open), Mode::Add) => spans.extend_from_slice(open),
            }
        }
    }
}

/// A parsed selector: the weekdays it names, and whether it only applies on
/// holidays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Selector {
    days: [bool; 7],
    /// True for `PH` alone or `PH` followed by weekdays (holidays on those weekdays).
    /// Without a holiday calendar such a rule never applies.
    holidays_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Closed,
}

struct Parser<'a> {
    input: &'a str,
    tokens: Vec<Token<'a>>,
    position: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<Token<'a>> {
        self.tokens.get(self.position).copied()
    }

    fn peek_kind(&self, ahead: usize) -> Option<TokenKind<'a>> {
        self.tokens
            .get(self.position + ahead)
            .map(|token| token.kind)
    }

    fn next(&mut self) -> Option<Token<'a>> {
        let token = self.peek()?;
        self.position += 1;
        Some(token)
    }

    /// Consumes the next token when it has exactly `kind`.
    fn eat(&mut self, kind: TokenKind<'_>) -> bool {
        let matches = self.peek_kind(0) == Some(kind);
        if matches {
            self.position += 1;
        }
        matches
    }

    /// Builds the error for a value that ends where `expected` was needed.
    fn missing(&self, expected: &'static str) -> ParseError {
        ParseError {
            offset: self.input.len(),
            fragment: String::new(),
            kind: ParseErrorKind::Expected(expected),
        }
    }

    /// Builds the error for `token`, naming the unsupported feature when the token
    /// belongs to one and the `expected` grammar element otherwise.
    fn unexpected(&self, token: Token<'_>, expected: &'static str) -> ParseError {
        let kind = match token.kind {
            TokenKind::Comment => ParseErrorKind::Unsupported("comments"),
            TokenKind::Other('+') => ParseErrorKind::Unsupported("open ends (`+`)"),
            TokenKind::Other('|') => ParseErrorKind::Unsupported("fallback rules (`||`)"),
            TokenKind::Other('[') => ParseErrorKind::Unsupported("nth weekday selectors (`[1]`)"),
            TokenKind::Word(word) => match unsupported_word(word) {
                Some(feature) => ParseErrorKind::Unsupported(feature),
                None => ParseErrorKind::Expected(expected),
            },
            _ => ParseErrorKind::Expected(expected),
        };
        error_at(token, kind)
    }

    fn rule(&mut self) -> Result<Rule, ParseError> {
        let first = self.peek().expect("rule is called before a token");
        if let TokenKind::Number { digits: 4, .. } = first.kind {
            return Err(error_at(
                first,
                ParseErrorKind::Unsupported("year selectors"),
            ));
        }
        if self.at_twenty_four_seven() {
            self.position += 3;
            let body = match self.state() {
                Some(State::Closed) => Body::Closed,
                Some(State::Open) | None => Body::Open(vec![Span::ALL_DAY]),
            };
            self.end_of_rule("`off`, `;` or `,` after `24/7`")?;
            return Ok(Rule {
                days: [true; 7],
                body,
            });
        }

        let selector = self.selector()?;
        let spans = match self.peek_kind(0) {
            Some(TokenKind::Number { .. }) => self.spans()?,
            _ => Vec::new(),
        };
        let state_token = self.peek();
        let state = self.state();
        if selector.is_none() && spans.is_empty() && state.is_none() {
            return Err(self.unexpected(first, "a weekday, a time, `24/7` or `off`"));
        }
        self.end_of_rule("a time, `off`, `;` or `,`")?;

        let body = match (spans.is_empty(), state) {
            (false, Some(State::Closed)) => {
                let token = state_token.expect("a parsed state has a token");
                return Err(error_at(
                    token,
                    ParseErrorKind::Unsupported("times marked `off`"),
                ));
            }
            (false, _) => Body::Open(spans),
            (true, Some(State::Closed)) => Body::Closed,
            // A selector on its own, or `open`, means open all day.
            (true, _) => Body::Open(vec![Span::ALL_DAY]),
        };
        let days = match selector {
            None => [true; 7],
            Some(Selector {
                holidays_only: true,
                ..
            }) => [false; 7],
            Some(selector) => selector.days,
        };
        Ok(Rule { days, body })
    }

    fn at_twenty_four_seven(&self) -> bool {
        matches!(
            (self.peek_kind(0), self.peek_kind(1), self.peek_kind(2)),
            (
                Some(TokenKind::Number {
                    value: 24,
                    digits: 2
                }),
                Some(TokenKind::Slash),
                Some(TokenKind::Number {
                    value: 7,
                    digits: 1
                })
            )
        )
    }

    /// Checks that the rule ends here: at the end of the value, at `;`, or at a `,`
    /// that an additional rule's selector follows.
    fn end_of_rule(&self, expected: &'static str) -> Result<(), ParseError> {
        let Some(token) = self.peek() else {
            return Ok(());
        };
        match token.kind {
            TokenKind::Semicolon => Ok(()),
            TokenKind::Comma => match self.tokens.get(self.position + 1) {
                Some(next) if selector_item(next.kind).is_some() => Ok(()),
                Some(next) => Err(self.unexpected(*next, "a weekday after `,`")),
                None => Err(self.missing("a rule after `,`")),
            },
            _ => Err(self.unexpected(token, expected)),
        }
    }

    /// Parses a weekday selector, or returns `None` when the rule does not start
    /// with one.
    fn selector(&mut self) -> Result<Option<Selector>, ParseError> {
        if self.peek_kind(0).and_then(selector_item).is_none() {
            return Ok(None);
        }
        let mut selector = Selector {
            days: [false; 7],
            holidays_only: false,
        };
        let mut holiday_item = false;
        loop {
            let token = self.next().expect("the loop continues only before an item");
            match selector_item(token.kind) {
                Some(Item::Day(from)) => {
                    let to = if self.eat(TokenKind::Dash) {
                        match self.next() {
                            Some(next) => match selector_item(next.kind) {
                                Some(Item::Day(to)) => to,
                                _ => return Err(self.unexpected(next, "a weekday after `-`")),
                            },
                            None => return Err(self.missing("a weekday after `-`")),
                        }
                    } else {
                        from
                    };
                    // Ranges wrap past Sunday: `Su-Tu` is Sunday, Monday and Tuesday.
                    let mut day = from;
                    loop {
                        selector.days[day.index()] = true;
                        if day == to {
                            break;
                        }
                        day = day.next();
                    }
                }
                Some(Item::Holiday) => holiday_item = true,
                None => unreachable!("the loop continues only before an item"),
            }

            let next = self.peek_kind(0);
            let after = self.peek_kind(1);
            if next == Some(TokenKind::Comma) && after.and_then(selector_item).is_some() {
                self.position += 1;
            } else if holiday_item && next.and_then(selector_item).is_some() {
                // `PH Mo-Fr` (no comma) selects holidays that fall on those weekdays.
                selector.holidays_only = true;
            } else {
                break;
            }
        }
        if holiday_item && selector.days == [false; 7] {
            selector.holidays_only = true;
        }
        Ok(Some(selector))
    }

    fn spans(&mut self) -> Result<Vec<Span>, ParseError> {
        let mut spans = vec![self.span()?];
        while self.peek_kind(0) == Some(TokenKind::Comma)
            && matches!(self.peek_kind(1), Some(TokenKind::Number { .. }))
        {
            self.position += 1;
            spans.push(self.span()?);
        }
        Ok(spans)
    }

    /// Parses `start-end`. An end at or before the start means the span runs past
    /// midnight into the next day.
    fn span(&mut self) -> Result<Span, ParseError> {
        let start_token = self.peek().expect("span is called before a number");
        let start = self.time()?;
        if start >= MINUTES_PER_DAY {
            return Err(error_at(
                start_token,
                ParseErrorKind::InvalidTime("a span must start before 24:00"),
            ));
        }
        match self.next() {
            Some(Token {
                kind: TokenKind::Dash,
                ..
            }) => {}
            Some(token) => return Err(self.unexpected(token, "`-` between two times")),
            None => return Err(self.missing("`-` and an end time")),
        }
        let end_token = self.peek();
        let mut end = self.time()?;
        if end > 2 * MINUTES_PER_DAY {
            let token = end_token.expect("a parsed time has a token");
            return Err(error_at(
                token,
                ParseErrorKind::InvalidTime("a span must end by 48:00"),
            ));
        }
        if end <= start {
            end += MINUTES_PER_DAY;
        }
        Ok(Span::new(start, end))
    }

    /// Parses `HH:MM`, `H:MM` or a bare hour `HH`, in minutes since midnight.
    fn time(&mut self) -> Result<u16, ParseError> {
        let Some(token) = self.next() else {
            return Err(self.missing("a time such as 10:00"));
        };
        let TokenKind::Number {
            value: hour,
            digits,
        } = token.kind
        else {
            return Err(self.unexpected(token, "a time such as 10:00"));
        };
        if digits > 2 || hour > 48 {
            return Err(error_at(
                token,
                ParseErrorKind::InvalidTime("hours have one or two digits, up to 48"),
            ));
        }
        let minute = if self.eat(TokenKind::Colon) {
            match self.next() {
                Some(Token {
                    kind:
                        TokenKind::Number {
                            value: minute @ 0..=59,
                            digits: 2,
                        },
                    ..
                }) => minute,
                Some(other) => {
                    return Err(error_at(
                        other,
                        ParseErrorKind::InvalidTime("minutes have two digits, from 00 to 59"),
                    ));
                }
                None => return Err(self.missing("minutes after `:`")),
            }
        } else {
            0
        };
        Ok(u16::try_from(hour * 60 + minute).expect("48 hours have fewer than 65536 minutes"))
    }

    /// Consumes `off`, `closed` or `open` when one comes next.
    fn state(&mut self) -> Option<State> {
        let Some(TokenKind::Word(word)) = self.peek_kind(0) else {
            return None;
        };
        let state = if word.eq_ignore_ascii_case("off") || word.eq_ignore_ascii_case("closed") {
            State::Closed
        } else if word.eq_ignore_ascii_case("open") {
            State::Open
        } else {
            return None;
        };
        self.position += 1;
        Some(state)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    Day(Weekday),
    Holiday,
}

fn selector_item(kind: TokenKind<'_>) -> Option<Item> {
    let TokenKind::Word(word) = kind else {
        return None;
    };
    if word.eq_ignore_ascii_case("PH") {
        return Some(Item::Holiday);
    }
    Weekday::from_abbreviation(word).map(Item::Day)
}

/// Names the unsupported feature that a word belongs to, if it is a known one.
fn unsupported_word(word: &str) -> Option<&'static str> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let lower = word.to_ascii_lowercase();
    if MONTHS.contains(&lower.as_str()) {
        Some("month selectors")
    } else if lower == "week" {
        Some("week numbers")
    } else if ["sunrise", "sunset", "dawn", "dusk"].contains(&lower.as_str()) {
        Some("sun-relative times such as sunrise")
    } else if lower == "sh" {
        Some("school holidays (`SH`)")
    } else if lower == "easter" {
        Some("movable dates such as easter")
    } else if lower == "unknown" {
        Some("unknown states")
    } else {
        None
    }
}

fn error_at(token: Token<'_>, kind: ParseErrorKind) -> ParseError {
    ParseError {
        offset: token.offset,
        fragment: token.text.to_owned(),
        kind,
    }
}
