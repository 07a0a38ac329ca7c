//! The envelope's mapping to Kafka records and headers.

use rdkafka::message::{Header, OwnedHeaders};
use tiffin_bus::envelope::Envelope;

/// The header of a dead letter that contains why the consumer gave up.
pub const DEAD_REASON_HEADER: &str = "tiffin-dead-reason";
/// The header of a dead letter that names the queue or stream group.
pub const DEAD_GROUP_HEADER: &str = "tiffin-dead-group";
/// The header of a dead letter that contains the original offset.
pub(crate) const DEAD_OFFSET_HEADER: &str = "tiffin-dead-offset";

/// Builds the headers of `event`, as the crate documentation lists them.
pub(crate) fn headers(event: &Envelope) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new()
        .insert(text("content-type", "application/cloudevents+json"))
        .insert(text("ce-id", &event.id))
        .insert(text("ce-type", &event.event_type))
        .insert(text("ce-source", &event.source))
        .insert(text("ce-subject", &event.subject))
        .insert(text("ce-time", &event.time));
    if let Some(traceparent) = &event.traceparent {
        headers = headers.insert(text("traceparent", traceparent));
    }
    if let Some(tracestate) = &event.tracestate {
        headers = headers.insert(text("tracestate", tracestate));
    }
    headers
}

/// Builds the headers of a dead letter: the event's own plus why, where from and
/// at which offset the consumer gave up.
pub(crate) fn dead_headers(
    event: &Envelope,
    group: &str,
    offset: i64,
    reason: &str,
) -> OwnedHeaders {
    headers(event)
        .insert(text(DEAD_REASON_HEADER, reason))
        .insert(text(DEAD_GROUP_HEADER, group))
        .insert(text(DEAD_OFFSET_HEADER, &offset.to_string()))
}

fn text<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}
