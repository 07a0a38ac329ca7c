//! Channels that deliver notifications, and the `channel` setting that picks one.
//!
//! - `log:` records each notification in the database and the log only.
//! - `smtp://HOST:PORT?from=ADDRESS&to_domain=DOMAIN` also sends it as a plain-text
//!   mail through an SMTP server, without TLS, from `ADDRESS` to
//!   `<customer_id>@DOMAIN`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::domain::Notification;

/// The accepted forms of the `channel` setting, for error messages.
const ACCEPTED_FORMS: &str = "use `log:` to record and log notifications only, or \
     `smtp://HOST:PORT?from=ADDRESS&to_domain=DOMAIN` to send them as mail";

/// Delivers a notification to its customer.
#[async_trait]
pub trait Channel: Send + Sync {
    /// Sends `notification` once.
    ///
    /// Callers may call it again for the same notification after a failure or a
    /// crash, so a receiver can get it more than once. Where the medium allows,
    /// implementations give it an identity derived from the event id, so that the
    /// receiver can drop the duplicate.
    ///
    /// # Errors
    ///
    /// Fails when the notification could not be handed over, and the caller retries.
    async fn send(&self, notification: &Notification) -> anyhow::Result<()>;
}

/// A `channel` setting that is not one of the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid channel `{value}`: {reason}; {ACCEPTED_FORMS}")]
pub struct InvalidChannel {
    value: String,
    reason: String,
}

impl InvalidChannel {
    fn new(value: &str, reason: impl Into<String>) -> Self {
        Self {
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

/// A parsed `channel` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelUrl {
    /// `log:`: record and log only.
    Log,
    /// `smtp://HOST:PORT?from=ADDRESS&to_domain=DOMAIN`.
    Smtp {
        /// The SMTP server's host name or IP address.
        host: String,
        /// The SMTP server's port.
        port: u16,
        /// The sender address.
        from: Address,
        /// The domain of the recipient addresses `<customer_id>@<to_domain>`.
        to_domain: String,
    },
}

impl ChannelUrl {
    /// Returns the channel's name as stored with each notification: `log` or `smtp`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Smtp { .. } => "smtp",
        }
    }

    /// Opens the channel. An SMTP send that takes longer than `timeout` fails.
    pub fn open(&self, timeout: Duration) -> Arc<dyn Channel> {
        match self {
            Self::Log => Arc::new(LogChannel),
            Self::Smtp {
                host,
                port,
                from,
                to_domain,
            } => Arc::new(SmtpChannel::new(
                host,
                *port,
                from.clone(),
                to_domain,
                timeout,
            )),
        }
    }
}

impl FromStr for ChannelUrl {
    type Err = InvalidChannel;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value == "log:" {
            return Ok(Self::Log);
        }
        let Some(rest) = value.strip_prefix("smtp://") else {
            return Err(InvalidChannel::new(value, "unknown scheme"));
        };
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (host, port) = parse_authority(value, authority.trim_end_matches('/'))?;

        let mut from = None;
        let mut to_domain = None;
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = percent_decode(raw).ok_or_else(|| {
                InvalidChannel::new(value, format!("invalid percent-encoding in `{key}`"))
            })?;
            match key {
                "from" => from = Some(decoded),
                "to_domain" => to_domain = Some(decoded),
                other => {
                    return Err(InvalidChannel::new(
                        value,
                        format!("unknown parameter `{other}`"),
                    ));
                }
            }
        }

        let from = from.ok_or_else(|| InvalidChannel::new(value, "missing parameter `from`"))?;
        let from = Address::from_str(&from).map_err(|error| {
            InvalidChannel::new(value, format!("`from` is not a mail address: {error}"))
        })?;
        let to_domain =
            to_domain.ok_or_else(|| InvalidChannel::new(value, "missing parameter `to_domain`"))?;
        if to_domain.is_empty() || Address::new("customer", &to_domain).is_err() {
            return Err(InvalidChannel::new(
                value,
                "`to_domain` is not a mail domain",
            ));
        }
        Ok(Self::Smtp {
            host,
            port,
            from,
            to_domain,
        })
    }
}

/// Splits `HOST:PORT` or `[IPV6]:PORT`.
fn parse_authority(value: &str, authority: &str) -> Result<(String, u16), InvalidChannel> {
    let missing_port = || InvalidChannel::new(value, "missing port after the host");
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| InvalidChannel::new(value, "unclosed `[` in the host"))?;
            (host, after.strip_prefix(':').ok_or_else(missing_port)?)
        }
        None => authority.rsplit_once(':').ok_or_else(missing_port)?,
    };
    if host.is_empty() {
        return Err(InvalidChannel::new(value, "missing host"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| InvalidChannel::new(value, format!("invalid port `{port}`")))?;
    Ok((host.to_owned(), port))
}

/// Decodes `%XX` escapes, or returns `None` for a malformed escape or non-UTF-8 bytes.
fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// Records notifications in the log only, at debug level.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogChannel;

#[async_trait]
impl Channel for LogChannel {
    async fn send(&self, notification: &Notification) -> anyhow::Result<()> {
        tracing::debug!(
            notification_id = %notification.notification_id,
            order_id = %notification.order_id,
            order_status = %notification.order_status,
            subject = %notification.subject,
            "notification logged"
        );
        Ok(())
    }
}

/// Sends notifications as plain-text mail through an SMTP server without TLS.
///
/// Each mail's `Message-ID` is `<EVENT_ID@FROM_DOMAIN>`, the same for every send of
/// one notification, so a receiver that keeps the ids it has seen drops duplicates.
pub struct SmtpChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to_domain: String,
}

impl fmt::Debug for SmtpChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpChannel")
            .field("from", &self.from.email)
            .field("to_domain", &self.to_domain)
            .finish_non_exhaustive()
    }
}

impl SmtpChannel {
    /// Creates a channel that connects to `host:port` in plain text for each mail, and
    /// gives up on a mail after `timeout`.
    pub fn new(host: &str, port: u16, from: Address, to_domain: &str, timeout: Duration) -> Self {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .timeout(Some(timeout))
            .build();
        Self {
            transport,
            from: Mailbox::new(None, from),
            to_domain: to_domain.to_owned(),
        }
    }
}

#[async_trait]
impl Channel for SmtpChannel {
    async fn send(&self, notification: &Notification) -> anyhow::Result<()> {
        // NOTE: there is no replica of the users' contact details yet, so the mail
        // goes to `<customer_id>@<to_domain>`, a made-up address per customer.
        let to = Address::new(&notification.customer_id, &self.to_domain).with_context(|| {
            format!(
                "failed to address notification {}: customer id {:?} is not a mail local part",
                notification.notification_id, notification.customer_id
            )
        })?;
        let message_id = format!("<{}@{}>", notification.event_id, self.from.email.domain());
        let message = Message::builder()
            .message_id(Some(message_id))
            .from(self.from.clone())
            .to(Mailbox::new(None, to))
            .subject(&notification.subject)
            .header(ContentType::TEXT_PLAIN)
            .body(notification.body.clone())
            .context("failed to build the mail")?;

        self.transport
            .send(message)
            .await
            .context("failed to send the mail")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_url_parses() {
        assert_eq!("log:".parse::<ChannelUrl>(), Ok(ChannelUrl::Log));
    }

    #[test]
    fn smtp_url_parses() {
        let url: ChannelUrl =
            "smtp://127.0.0.1:2525?from=orders%40tiffin.test&to_domain=customers.test"
                .parse()
                .expect("valid URL");

        assert_eq!(
            url,
            ChannelUrl::Smtp {
                host: "127.0.0.1".to_owned(),
                port: 2525,
                from: Address::new("orders", "tiffin.test").expect("valid address"),
                to_domain: "customers.test".to_owned(),
            }
        );
    }

    #[test]
    fn ipv6_host_parses() {
        let url: ChannelUrl = "smtp://[::1]:25?from=a@b.test&to_domain=c.test"
            .parse()
            .expect("valid URL");

        assert!(matches!(url, ChannelUrl::Smtp { host, port: 25, .. } if host == "::1"));
    }

    #[test]
    fn invalid_urls_name_the_problem() {
        let cases = [
            ("", "unknown scheme"),
            ("http://mail.test:25", "unknown scheme"),
            (
                "smtp://mail.test?from=a@b.test&to_domain=c.test",
                "missing port",
            ),
            (
                "smtp://mail.test:0?from=a@b.test&to_domain=c.test",
                "invalid port `0`",
            ),
            ("smtp://:25?from=a@b.test&to_domain=c.test", "missing host"),
            (
                "smtp://mail.test:25?to_domain=c.test",
                "missing parameter `from`",
            ),
            (
                "smtp://mail.test:25?from=a@b.test",
                "missing parameter `to_domain`",
            ),
            (
                "smtp://mail.test:25?from=nobody&to_domain=c.test",
                "`from` is not a mail address",
            ),
            (
                "smtp://mail.test:25?from=a@b.test&to_domain=",
                "`to_domain` is not a mail domain",
            ),
            (
                "smtp://mail.test:25?from=a@b.test&to_domain=c.test&tls=1",
                "unknown parameter `tls`",
            ),
            (
                "smtp://mail.test:25?from=a%4@b.test&to_domain=c.test",
                "invalid percent-encoding",
            ),
        ];

        for (value, reason) in cases {
            let error = value.parse::<ChannelUrl>().expect_err(value).to_string();
            assert!(error.starts_with("invalid channel"), "{value}: {error}");
            assert!(error.contains(reason), "{value}: {error}");
        }
    }
}
