//! The envelope's mapping to NATS subjects and headers.

use anyhow::anyhow;
use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use tiffin_bus::envelope::Envelope;

/// The header of a dead letter that contains why the consumer gave up.
pub const DEAD_REASON_HEADER: &str = "Tiffin-Dead-Reason";
/// The header of a dead letter that names the queue or stream group.
pub(crate) const DEAD_GROUP_HEADER: &str = "Tiffin-Dead-Group";
/// The header of a dead letter that contains the original stream sequence.
pub(crate) const DEAD_SEQUENCE_HEADER: &str = "Tiffin-Dead-Sequence";
/// The header of a dead letter that contains the number of deliveries made.
pub(crate) const DEAD_ATTEMPTS_HEADER: &str = "Tiffin-Dead-Attempts";

/// Returns the subject of `event_type`: `<prefix>.<event type>`.
///
/// # Errors
///
/// Fails when the type is not a valid run of subject tokens: empty, an empty token
/// (`a..b`, a leading or trailing dot), whitespace, or the wildcards `*` and `>`.
pub(crate) fn subject(prefix: &str, event_type: &str) -> anyhow::Result<String> {
    let valid = !event_type.is_empty()
        && event_type.split('.').all(|token| {
            !token.is_empty()
                && !token
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>')
        });
    if !valid {
        return Err(anyhow!(
            "invalid event type {event_type:?}: a NATS subject needs dot-separated non-empty tokens without whitespace, '*' or '>'"
        ));
    }
    Ok(format!("{prefix}.{event_type}"))
}

/// Returns the filter subject of a type pattern, or `None` when NATS wildcards
/// cannot express it (a `*` that does not follow a dot, such as `order*`).
///
/// The bus's trailing `*` matches any suffix, dots included, which is NATS's `>`.
pub(crate) fn filter_subject(prefix: &str, pattern: &str) -> Option<String> {
    match pattern.strip_suffix(".*") {
        Some(stem) => subject(prefix, stem).ok().map(|s| format!("{s}.>")),
        None => subject(prefix, pattern).ok(),
    }
}

/// Builds the JetStream message of `event`: the envelope as JSON payload plus the
/// headers described in the crate documentation.
pub(crate) fn publish_message(event: &Envelope) -> PublishMessage {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", event.id.as_str());
    headers.insert("Content-Type", "application/cloudevents+json");
    let attributes = [
        ("ce-id", Some(&event.id)),
        ("ce-type", Some(&event.event_type)),
        ("ce-source", Some(&event.source)),
        ("ce-subject", Some(&event.subject)),
        ("ce-time", Some(&event.time)),
        ("traceparent", event.traceparent.as_ref()),
        ("tracestate", event.tracestate.as_ref()),
    ];
    for (name, value) in attributes {
        // A line break would end the header block early, and the payload contains
        // every attribute anyway, so such a value is left out of the headers.
        if let Some(value) = value.filter(|v| !v.chars().any(char::is_control)) {
            headers.insert(name, value.as_str());
        }
    }
    PublishMessage::build()
        .payload(Bytes::from(event.to_bytes()))
        .headers(headers)
}

/// Identifies where a dead letter came from.
pub(crate) struct DeadLetter<'a> {
    pub(crate) group: &'a str,
    pub(crate) sequence: u64,
    pub(crate) attempts: u32,
    pub(crate) reason: &'a str,
}

/// Builds a dead letter: the original payload and headers plus the reason, the
/// group, the original sequence and the attempts. Its `Nats-Msg-Id` joins the group
/// and the original id, so a dead-lettering that is retried stores one copy per
/// group.
pub(crate) fn dead_message(
    payload: Bytes,
    original: Option<&HeaderMap>,
    dead: &DeadLetter<'_>,
) -> PublishMessage {
    let mut headers = original.cloned().unwrap_or_default();
    let id = original
        .and_then(|h| h.get("Nats-Msg-Id"))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_else(|| dead.sequence.to_string());
    headers.insert("Nats-Msg-Id", format!("{}:{id}", dead.group).as_str());
    let reason: String = dead
        .reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    headers.insert(DEAD_REASON_HEADER, reason.as_str());
    headers.insert(DEAD_GROUP_HEADER, dead.group);
    headers.insert(DEAD_SEQUENCE_HEADER, dead.sequence.to_string().as_str());
    headers.insert(DEAD_ATTEMPTS_HEADER, dead.attempts.to_string().as_str());
    PublishMessage::build().payload(payload).headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_rejects_wildcards() {
        assert!(subject("p", "order.*").is_err());
        assert!(subject("p", "order..placed").is_err());
        assert!(subject("p", "order placed").is_err());
        assert!(subject("p", "").is_err());
        assert_eq!(subject("p", "order.placed").unwrap(), "p.order.placed");
    }

    #[test]
    fn patterns_map_to_filters() {
        assert_eq!(filter_subject("p", "order.*").as_deref(), Some("p.order.>"));
        assert_eq!(
            filter_subject("p", "menu.item.upserted").as_deref(),
            Some("p.menu.item.upserted")
        );
        assert_eq!(filter_subject("p", "order*"), None);
        assert_eq!(filter_subject("p", "*"), None);
    }
}
