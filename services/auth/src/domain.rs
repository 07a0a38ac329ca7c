//! Account rules: what a valid email address and password are, and how roles are
//! stored.

use std::fmt;

use tiffin_runtime::token::Role;

/// Maximum length of an email address, in characters.
const MAX_EMAIL_CHARS: usize = 254;

/// Minimum length of a password, in characters.
const MIN_PASSWORD_CHARS: usize = 8;

/// Maximum length of a password, in characters.
const MAX_PASSWORD_CHARS: usize = 128;

/// A request value that breaks an account rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    /// The request field, such as `email`.
    pub(crate) field: &'static str,
    /// The problem and its fix, written for the client.
    pub(crate) detail: String,
}

/// A syntactically plausible email address, trimmed and lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Email(String);

impl Email {
    /// Normalizes `raw` and checks its shape: one `@`, a non-empty local part, a
    /// domain of non-empty labels with at least one dot, no whitespace and at most
    /// 254 characters.
    ///
    /// Deliverability is not checked: that takes a message to the address.
    pub(crate) fn parse(raw: &str) -> Result<Self, Invalid> {
        let email = normalize_email(raw);
        let invalid = |reason: &str| Invalid {
            field: "email",
            detail: format!("email `{email}` is invalid: {reason}"),
        };

        let length = email.chars().count();
        if length > MAX_EMAIL_CHARS {
            return Err(invalid(&format!(
                "it has {length} characters, the maximum is {MAX_EMAIL_CHARS}"
            )));
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("remove the spaces inside it"));
        }

        let shape = "use the form name@example.com";
        let Some((local, domain)) = email.split_once('@') else {
            return Err(invalid(shape));
        };
        if local.is_empty() || domain.contains('@') {
            return Err(invalid(shape));
        }
        if !domain.contains('.') || domain.split('.').any(str::is_empty) {
            return Err(invalid(shape));
        }
        Ok(Self(email))
    }

    /// Returns the normalized address.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Normalizes an email address the way it is stored: trimmed and lowercased.
///
/// Login uses this without [`Email::parse`], because an address that fails the
/// rules can never match a stored account and must get the same response as any
/// other unknown address.
pub(crate) fn normalize_email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

/// A password of acceptable length. `Debug` never prints it.
#[derive(Clone)]
pub(crate) struct Password(String);

impl Password {
    /// Checks that `raw` has 8 to 128 characters. The password is kept exactly as
    /// sent, spaces included.
    pub(crate) fn parse(raw: String) -> Result<Self, Invalid> {
        let length = raw.chars().count();
        if (MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&length) {
            Ok(Self(raw))
        } else {
            Err(Invalid {
                field: "password",
                detail: format!(
                    "password must have {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters, it has {length}"
                ),
            })
        }
    }

    /// Returns the password as sent.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// Returns the name a role is stored under, which is also its JSON form.
pub(crate) fn role_name(role: Role) -> &'static str {
    match role {
        Role::Customer => "customer",
        Role::Staff => "staff",
        Role::Admin => "admin",
    }
}

/// Parses a stored role name. Returns `None` for a name that [`role_name`] never
/// writes.
pub(crate) fn parse_role(name: &str) -> Option<Role> {
    match name {
        "customer" => Some(Role::Customer),
        "staff" => Some(Role::Staff),
        "admin" => Some(Role::Admin),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_trimmed_and_lowercased() {
        let email = Email::parse("  Ana.Virtanen@Example.FI ").expect("valid address");

        assert_eq!(email.as_str(), "ana.virtanen@example.fi");
    }

    #[test]
    fn malformed_emails_are_rejected() {
        let too_long = format!("{}@example.com", "a".repeat(243));
        for (raw, case) in [
            ("", "empty"),
            ("ana", "no @"),
            ("@example.com", "empty local part"),
            ("ana@example", "no dot in the domain"),
            ("ana@.example.com", "empty first label"),
            ("ana@example.", "empty last label"),
            ("ana@@example.com", "two @"),
            ("ana@exa mple.com", "space inside"),
            (too_long.as_str(), "255 characters"),
        ] {
            let result = Email::parse(raw);

            assert_eq!(
                result.map_err(|invalid| invalid.field),
                Err("email"),
                "{case}"
            );
        }
    }

    #[test]
    fn email_at_length_limit_is_accepted() {
        let raw = format!("{}@example.com", "a".repeat(242));

        let result = Email::parse(&raw);

        assert!(result.is_ok(), "254 characters were rejected");
    }

    #[test]
    fn password_length_bounds() {
        for (length, accepted) in [(7, false), (8, true), (128, true), (129, false)] {
            let result = Password::parse("é".repeat(length));

            assert_eq!(result.is_ok(), accepted, "{length} characters");
        }
    }

    #[test]
    fn password_debug_hides_value() {
        let password = Password::parse("correct horse".to_owned()).expect("valid password");

        assert_eq!(format!("{password:?}"), "Password(***)");
    }

    #[test]
    fn role_names_round_trip() {
        for role in [Role::Customer, Role::Staff, Role::Admin] {
            assert_eq!(parse_role(role_name(role)), Some(role));
        }
    }
}
