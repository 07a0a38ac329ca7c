//! The bus contract and the Kafka specifics, run against a real broker.
//!
//! The bootstrap servers come from `TIFFIN_TEST_KAFKA_SERVERS` (default
//! `127.0.0.1:9092`). Each test uses its own topics and deletes them at the end, so
//! tests run in parallel on a shared broker.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers as _, Message as _};
use tiffin_bus::api::{Bus, Publisher, QueueSpec, StartPosition, StreamSpec, Subscriber};
use tiffin_bus::conformance::{self, Case, Connector, Features};
use tiffin_bus::envelope::Envelope;
use tiffin_bus_kafka::{DEAD_REASON_HEADER, KafkaBus, KafkaOptions, connect};

const START_HINT: &str = "start a Kafka-protocol broker there, for example: tansu broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/";

fn servers() -> String {
    std::env::var("TIFFIN_TEST_KAFKA_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// Options with topics of their own.
fn unique_options() -> KafkaOptions {
    let id = uuid::Uuid::now_v7().simple().to_string();
    KafkaOptions {
        topic: format!("tiffin-test.{}", &id[id.len() - 12..]),
        session_timeout: Duration::from_secs(6),
        ..KafkaOptions::default()
    }
}

/// Connects a bus with unique topics, or returns `None` after printing why the test
/// is skipped. With `CI=true` an unreachable broker fails the test instead.
async fn test_bus() -> Option<KafkaBus> {
    let servers = servers();
    match connect(&servers, unique_options()).await {
        Ok(bus) => Some(bus),
        Err(error) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("Kafka not reachable at {servers}: {error}; {START_HINT}")
        }
        Err(error) => {
            eprintln!("skipped: Kafka not reachable at {servers} ({error}); {START_HINT}");
            None
        }
    }
}

/// Runs `test` with a fresh bus, then deletes its topics whether or not it passed.
async fn with_bus<F, Fut>(test: F)
where
    F: FnOnce(KafkaBus) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(bus) = test_bus().await else {
        return;
    };

    let outcome = tokio::spawn(test(bus.clone())).await;

    if let Err(error) = bus.delete_topics().await {
        eprintln!("could not delete the test topics: {error:#}");
    }
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// Opens a new client per call, as a restarted process would, on the same topics.
struct Kafka {
    options: KafkaOptions,
}

#[async_trait]
impl Connector for Kafka {
    async fn connect(&self) -> Arc<dyn Bus> {
        connect(&servers(), self.options.clone())
            .await
            .expect("connects")
            .shared()
    }
}

/// Nacked messages wait in the member for their delay. A member that leaves hands
/// the partition over, and the next member reads on from the committed offset,
/// but Kafka keeps no delivery count, so that member starts counting again.
/// Brokers index records by time, so replay from a time works.
const FEATURES: Features = Features {
    redelivers_after_member_loss: true,
    honours_nack_delay: true,
    replays_from_time: true,
    counts_attempts_across_members: false,
};

async fn run(case: Case) {
    with_bus(|bus| async move {
        let connector = Kafka {
            options: bus.options().clone(),
        };
        conformance::run_case(case, &connector, FEATURES).await;
    })
    .await;
}

tiffin_bus::conformance_tests!(run);

// === Kafka specifics ===

fn event(event_type: &str, subject: &str) -> Envelope {
    Envelope {
        specversion: "1.0".to_owned(),
        id: uuid::Uuid::now_v7().to_string(),
        source: "/test".to_owned(),
        event_type: event_type.to_owned(),
        subject: subject.to_owned(),
        time: "2025-01-01T00:00:00Z".to_owned(),
        datacontenttype: "application/json".to_owned(),
        dataschema: "https://tiffin.dev/contracts/test.v1.json".to_owned(),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned()),
        tracestate: None,
        data: serde_json::json!({ "n": 1 }),
    }
}

/// Reads the first record of `topic` with a plain consumer.
fn first_record(topic: &str) -> rdkafka::message::OwnedMessage {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers())
        .set("group.id", format!("{topic}.inspect"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .expect("partition");
    consumer.assign(&assignment).expect("assign");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) {
            return message.detach();
        }
    }
    panic!("no record in {topic}");
}

fn header(message: &rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    message
        .headers()?
        .iter()
        .find(|header| header.key == name)
        .and_then(|header| header.value)
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

#[tokio::test]
async fn records_carry_key_and_cloudevents_headers() {
    with_bus(|bus| async move {
        let sent = event("order.placed", "order-17");
        bus.publish(std::slice::from_ref(&sent))
            .await
            .expect("publish");

        let topic = bus.options().topic.clone();
        let stored = tokio::task::spawn_blocking(move || first_record(&topic))
            .await
            .expect("read");

        assert_eq!(stored.key(), Some("order-17".as_bytes()));
        assert_eq!(header(&stored, "ce-id"), Some(sent.id.clone()));
        assert_eq!(header(&stored, "ce-type").as_deref(), Some("order.placed"));
        assert_eq!(header(&stored, "traceparent"), sent.traceparent);
        assert_eq!(
            header(&stored, "content-type").as_deref(),
            Some("application/cloudevents+json")
        );
        assert_eq!(
            Envelope::from_bytes(stored.payload().expect("value")).expect("envelope"),
            sent
        );
    })
    .await;
}

#[tokio::test]
async fn dead_letter_keeps_reason() {
    with_bus(|bus| async move {
        let spec = QueueSpec {
            group: "kitchen".to_owned(),
            event_types: vec!["order.*".to_owned()],
            lease: Duration::from_secs(5),
        };
        let mut queue = bus.queue(&spec).await.expect("subscribe");
        bus.publish(&[event("order.placed", "order-1")])
            .await
            .expect("publish");
        let message = queue
            .fetch(1, Duration::from_secs(10))
            .await
            .expect("fetch")
            .remove(0);

        message
            .dead_letter("kitchen closed")
            .await
            .expect("dead letter");

        let dead_topic = bus.options().dead_topic();
        let dead = tokio::task::spawn_blocking(move || first_record(&dead_topic))
            .await
            .expect("read");
        assert_eq!(
            header(&dead, DEAD_REASON_HEADER).as_deref(),
            Some("kitchen closed")
        );
        let left = queue
            .fetch(1, Duration::from_millis(500))
            .await
            .expect("fetch");
        assert!(left.is_empty(), "the original left the queue");
    })
    .await;
}

#[tokio::test]
async fn queue_skips_other_types_and_moves_past_them() {
    with_bus(|bus| async move {
        let spec = QueueSpec {
            group: "mailer".to_owned(),
            event_types: vec!["menu.item.upserted".to_owned()],
            lease: Duration::from_secs(5),
        };
        let mut queue = bus.queue(&spec).await.expect("subscribe");
        bus.publish(&[
            event("order.placed", "o"),
            event("menu.item.upserted", "m"),
            event("order.ready", "o"),
        ])
        .await
        .expect("publish");

        let mut types = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while types.is_empty() && tokio::time::Instant::now() < deadline {
            for message in queue
                .fetch(10, Duration::from_millis(500))
                .await
                .expect("fetch")
            {
                types.push(message.envelope.event_type.clone());
                message.ack().await.expect("ack");
            }
        }
        let more = queue
            .fetch(10, Duration::from_millis(500))
            .await
            .expect("fetch");

        assert_eq!(types, vec!["menu.item.upserted"]);
        assert!(more.is_empty());
    })
    .await;
}

#[tokio::test]
async fn new_stream_group_starting_latest_skips_history() {
    with_bus(|bus| async move {
        bus.publish(&[event("order.placed", "old")])
            .await
            .expect("publish");
        let spec = StreamSpec {
            group: "tracker".to_owned(),
            event_types: vec!["order.*".to_owned()],
            start: StartPosition::Latest,
        };
        let mut reader = bus.stream(&spec).await.expect("subscribe");
        bus.publish(&[event("order.placed", "new")])
            .await
            .expect("publish");

        let mut read = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while read.is_empty() && tokio::time::Instant::now() < deadline {
            read.extend(
                reader
                    .fetch(10, Duration::from_millis(500))
                    .await
                    .expect("fetch"),
            );
        }

        assert_eq!(read.len(), 1);
        assert_eq!(read[0].envelope.subject, "new");
    })
    .await;
}

#[tokio::test]
async fn unreachable_broker_is_named() {
    let options = KafkaOptions {
        request_timeout: Duration::from_secs(2),
        ..unique_options()
    };
    let error = connect("127.0.0.1:1", options)
        .await
        .expect_err("nothing listens on port 1");

    assert!(error.to_string().contains("127.0.0.1:1"), "{error}");
}
