//! The message format: a CloudEvents 1.0 event in structured JSON mode, with the W3C
//! `traceparent` and `tracestate` extension attributes.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tiffin_runtime::time;
use tiffin_runtime::trace::TraceContext;

/// One event. `subject` is the id of the aggregate the event is about (an order id,
/// a menu item id) and doubles as the partitioning key, so a broker that orders per
/// key keeps one order's events in sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Always `1.0`.
    pub specversion: String,
    /// Unique per event; consumers deduplicate on it.
    pub id: String,
    /// The producing service, for example `/tiffin/orders`.
    pub source: String,
    /// The event type, for example `order.placed`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The aggregate id.
    pub subject: String,
    /// When the event happened, RFC 3339.
    pub time: String,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// The schema of `data`, which carries its version, for example
    /// `https://tiffin.dev/contracts/order.placed.v1.json`.
    pub dataschema: String,
    /// W3C trace context of the operation that produced the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// W3C vendor trace state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// The payload.
    pub data: serde_json::Value,
}

/// An event payload type with a fixed CloudEvents `type` and schema.
pub trait EventData: Serialize + DeserializeOwned {
    /// The CloudEvents `type`.
    const TYPE: &'static str;
    /// The schema version, written into `dataschema`.
    const VERSION: u32;

    /// The aggregate id this event is about.
    fn subject(&self) -> String;
}

/// Errors from reading an envelope's payload.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The envelope holds another event type.
    #[error("expected event type {expected}, got {actual}")]
    WrongType {
        /// The expected type.
        expected: &'static str,
        /// The envelope's type.
        actual: String,
    },
    /// The payload does not match the schema.
    #[error("event {id} of type {event_type} has an invalid payload: {source}")]
    InvalidData {
        /// The event id.
        id: String,
        /// The event type.
        event_type: String,
        /// The cause.
        source: serde_json::Error,
    },
}

impl Envelope {
    /// Wraps `data` in a new envelope with a fresh time-ordered id.
    pub fn new<T: EventData>(source: &str, data: &T, trace: Option<TraceContext>) -> Self {
        Self {
            specversion: "1.0".to_owned(),
            id: uuid::Uuid::now_v7().to_string(),
            source: source.to_owned(),
            event_type: T::TYPE.to_owned(),
            subject: data.subject(),
            time: time::rfc3339(time::now_millis()),
            datacontenttype: "application/json".to_owned(),
            dataschema: schema_uri(T::TYPE, T::VERSION),
            traceparent: trace.map(|context| context.to_string()),
            tracestate: None,
            data: serde_json::to_value(data).expect("event payloads serialize to JSON"),
        }
    }

    /// Reads the payload as `T`.
    ///
    /// Fields unknown to `T` are ignored, so a consumer keeps reading a newer minor
    /// version of a schema (tolerant reader).
    ///
    /// # Errors
    ///
    /// Fails when the type differs or the payload does not match `T`.
    pub fn decode<T: EventData>(&self) -> Result<T, DecodeError> {
        if self.event_type != T::TYPE {
            return Err(DecodeError::WrongType {
                expected: T::TYPE,
                actual: self.event_type.clone(),
            });
        }
        T::deserialize(&self.data).map_err(|source| DecodeError::InvalidData {
            id: self.id.clone(),
            event_type: self.event_type.clone(),
            source,
        })
    }

    /// The schema version from `dataschema`, or 1 when it carries none.
    pub fn schema_version(&self) -> u32 {
        self.dataschema
            .rsplit_once(".v")
            .and_then(|(_, rest)| rest.trim_end_matches(".json").parse().ok())
            .unwrap_or(1)
    }

    /// The trace context, or a new root when the producer sent none.
    pub fn trace_context(&self) -> TraceContext {
        TraceContext::from_header_or_new(self.traceparent.as_deref())
    }

    /// Serializes to JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }

    /// Parses JSON bytes.
    ///
    /// # Errors
    ///
    /// Fails when the bytes are not a CloudEvents envelope.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Returns the `dataschema` URI of an event type's version.
pub fn schema_uri(event_type: &str, version: u32) -> String {
    format!("https://tiffin.dev/contracts/{event_type}.v{version}.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Pinged {
        target: String,
    }

    impl EventData for Pinged {
        const TYPE: &'static str = "test.pinged";
        const VERSION: u32 = 2;

        fn subject(&self) -> String {
            self.target.clone()
        }
    }

    #[test]
    fn envelope_round_trips() {
        let trace = TraceContext::new_root();
        let envelope = Envelope::new("/test", &Pinged { target: "a".into() }, Some(trace));

        let parsed = Envelope::from_bytes(&envelope.to_bytes()).expect("parses");

        assert_eq!(parsed, envelope);
        assert_eq!(parsed.subject, "a");
        assert_eq!(parsed.schema_version(), 2);
        assert_eq!(parsed.trace_context().trace_id(), trace.trace_id());
        assert_eq!(parsed.decode::<Pinged>().expect("decodes").target, "a");
    }

    #[test]
    fn decode_rejects_other_type() {
        let mut envelope = Envelope::new("/test", &Pinged { target: "a".into() }, None);
        envelope.event_type = "test.other".into();

        let error = envelope.decode::<Pinged>().expect_err("wrong type");

        assert!(
            error
                .to_string()
                .contains("expected event type test.pinged")
        );
    }
}
