//! The mapping of an envelope onto AMQP 0-9-1 message properties and headers.
//!
//! The body is the whole envelope in CloudEvents structured JSON mode, and it alone
//! is read back. The properties and headers repeat the attributes that brokers,
//! management tools and tracing proxies look at without parsing the body:
//!
//! | envelope      | AMQP                                   |
//! |---------------|----------------------------------------|
//! | `id`          | `message-id` property                  |
//! | `type`        | `type` property and the routing key    |
//! | `source`      | `app-id` property                      |
//! | `subject`     | `cloudEvents:subject` header           |
//! | `time`        | `cloudEvents:time` header              |
//! | `traceparent` | `traceparent` header (W3C)             |
//! | `tracestate`  | `tracestate` header (W3C)              |
//!
//! The `cloudEvents:` prefix follows the CloudEvents AMQP protocol binding 1.0.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use tiffin_bus::Envelope;
use tiffin_runtime::time::now_millis;

/// Content type of a CloudEvents structured-mode JSON body.
pub(crate) const CONTENT_TYPE: &str = "application/cloudevents+json";
/// Header with the envelope's subject (the aggregate id).
pub(crate) const SUBJECT: &str = "cloudEvents:subject";
/// Header with the envelope's time.
pub(crate) const TIME: &str = "cloudEvents:time";
/// W3C trace context headers.
pub(crate) const TRACEPARENT: &str = "traceparent";
pub(crate) const TRACESTATE: &str = "tracestate";
/// Header with the publish time in Unix milliseconds, for stream reads from a time.
pub(crate) const PUBLISHED_MS: &str = "tiffin-published-ms";
/// Header with the deliveries already made before the message was moved to the
/// retry queue, because the copy that comes back starts a new delivery count.
pub(crate) const ATTEMPTS: &str = "tiffin-attempts";
/// Header with the handler's last error on a retried message.
pub(crate) const LAST_ERROR: &str = "tiffin-last-error";
/// Header with the reason a message was dead-lettered.
pub(crate) const DEAD_LETTER_REASON: &str = "tiffin-dead-letter-reason";
/// Header a quorum queue adds on redelivery: how often the message was returned.
pub(crate) const DELIVERY_COUNT: &str = "x-delivery-count";
/// Header a stream queue adds to each delivery: the message's offset.
pub(crate) const STREAM_OFFSET: &str = "x-stream-offset";

/// AMQP `delivery-mode` of a message the broker writes to disk.
const PERSISTENT: u8 = 2;

/// Returns the properties of a freshly published envelope.
pub(crate) fn properties(envelope: &Envelope) -> BasicProperties {
    let published_ms = now_millis();
    let mut headers = FieldTable::default();
    headers.insert(SUBJECT.into(), string(&envelope.subject));
    headers.insert(TIME.into(), string(&envelope.time));
    if let Some(traceparent) = &envelope.traceparent {
        headers.insert(TRACEPARENT.into(), string(traceparent));
    }
    if let Some(tracestate) = &envelope.tracestate {
        headers.insert(TRACESTATE.into(), string(tracestate));
    }
    headers.insert(PUBLISHED_MS.into(), AMQPValue::LongLongInt(published_ms));

    BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(PERSISTENT)
        .with_message_id(envelope.id.as_str().into())
        .with_type(envelope.event_type.as_str().into())
        .with_app_id(envelope.source.as_str().into())
        .with_timestamp(u64::try_from(published_ms / 1000).unwrap_or(0))
        .with_headers(headers)
}

/// Returns the properties of a copy of a delivered message with `extra` headers
/// set: persistent and without an expiration, because a copy that kept the retry
/// queue's expiration would expire again where it lands.
pub(crate) fn republished(
    properties: &BasicProperties,
    extra: &[(&str, AMQPValue)],
) -> BasicProperties {
    // The copy is a new message for the broker, so the delivery count starts over;
    // `extra` carries the attempts made so far instead.
    let mut map = properties
        .headers()
        .as_ref()
        .map(|headers| headers.inner().clone())
        .unwrap_or_default();
    map.remove(DELIVERY_COUNT);
    let mut headers = FieldTable::from(map);
    for (name, value) in extra {
        headers.insert(ShortString::from(*name), value.clone());
    }
    let mut copy = BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers);
    if let Some(id) = properties.message_id() {
        copy = copy.with_message_id(id.clone());
    }
    if let Some(kind) = properties.kind() {
        copy = copy.with_type(kind.clone());
    }
    if let Some(source) = properties.app_id() {
        copy = copy.with_app_id(source.clone());
    }
    if let Some(timestamp) = properties.timestamp() {
        copy = copy.with_timestamp(*timestamp);
    }
    copy
}

/// Returns a string header value.
pub(crate) fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// Reads an integer header, whatever integer width the sender chose.
pub(crate) fn integer(properties: &BasicProperties, name: &str) -> Option<i64> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}

/// Returns which delivery of an event this is, counting from 1: the deliveries
/// made before a delayed retry, plus the returns of this copy, plus this one.
///
/// A quorum queue counts the returns. A classic queue only flags a `redelivered`
/// copy, which then counts as one return however many there were.
pub(crate) fn attempt(properties: &BasicProperties, redelivered: bool) -> u32 {
    let before_retry = integer(properties, ATTEMPTS).unwrap_or(0).max(0);
    let returned = integer(properties, DELIVERY_COUNT)
        .unwrap_or(0)
        .max(i64::from(redelivered));
    u32::try_from(before_retry + returned + 1).unwrap_or(u32::MAX)
}
