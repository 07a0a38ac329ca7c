//! The Kafka backend of Tiffin's message bus, for any broker that speaks the Kafka
//! protocol (Apache Kafka 2.8 or newer, Redpanda, Tansu), through librdkafka.
//!
//! # Topics
//!
//! Every event goes to one topic (default `tiffin.events`) with one partition,
//! keyed by the event's subject (the order id for order events). Dead letters go to
//! `<topic>.dead`, with the reason in the `tiffin-dead-reason` header. Both topics
//! are created on connect when missing.
//!
//! One partition is a deliberate choice: the bus exposes a stream as one log with
//! one position per group, which a single partition gives exactly, with the
//! partition offset as the position. The cost is that one member of each consumer
//! group reads at a time. The others wait on standby and take over within the
//! session timeout when it leaves or dies. Other groups, and the other services,
//! are not limited by this.
//!
//! # Message format
//!
//! The value is the whole envelope in CloudEvents structured JSON mode, and it is
//! what receivers decode. The headers repeat `ce-id`, `ce-type`, `ce-source`,
//! `ce-subject` and `ce-time`, with `content-type:
//! application/cloudevents+json` and the W3C `traceparent` and `tracestate`, so
//! tools can filter and trace without parsing the value.
//!
//! # Consumer groups
//!
//! A work queue of group `G` is the Kafka consumer group `<topic>.queue.G`, and a
//! stream subscription the group `<topic>.stream.G`. A group that has never
//! committed gets its starting offset committed when it is first subscribed: the
//! end of the log for a queue (it collects events from then on), or the position
//! the stream spec requests. Offsets are committed only after the messages before
//! them are settled, which the consumer runners do after the handler's transaction
//! commits.
//!
//! Kafka tracks positions, not single messages, so the backend keeps per-message
//! state in memory: a nacked message waits in the member for its delay and holds
//! back the group's committed offset until it is settled. When the member dies,
//! the group resumes from that offset, which redelivers the nacked message and any
//! that followed it; the consumers' inboxes absorb the repeats.
//!
//! # Layout
//!
//! - this file: options, [`connect`] and publishing.
//! - `records`: the envelope's mapping to records and headers.
//! - `group`: consumer creation and the first committed offset.
//! - `queue`: work-queue receivers and message settlement.
//! - `stream`: stream readers.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod group;
mod queue;
mod records;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureProducer;
use tiffin_bus::api::{
    Bus, PublishError, Publisher, QueueReceiver, QueueSpec, StreamReceiver, StreamSpec,
    SubscribeError, Subscriber,
};
use tiffin_bus::envelope::Envelope;

pub use records::{DEAD_GROUP_HEADER, DEAD_REASON_HEADER};

/// Settings of the Kafka backend.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// The topic that stores events. Default `tiffin.events`.
    pub topic: String,
    /// Replicas of each topic created on connect. Default 1; use 3 on a cluster.
    pub replication: i32,
    /// How long a publish may wait for the broker's acknowledgement, and one
    /// request for offsets or group state may take. Default 10 s.
    pub request_timeout: Duration,
    /// How long the group waits for a silent member before it hands the partition
    /// to another. Default 10 s.
    pub session_timeout: Duration,
    /// Most records the producer puts in one batch. Default 1, because Tansu 0.6
    /// serves a fetch from an offset inside a batch from the next batch, which
    /// would skip records when a group resumes mid-batch. On Apache Kafka or
    /// Redpanda raise it (librdkafka's default is 10,000) for throughput.
    pub batch_records: u32,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        Self {
            topic: "tiffin.events".to_owned(),
            replication: 1,
            request_timeout: Duration::from_secs(10),
            session_timeout: Duration::from_secs(10),
            batch_records: 1,
        }
    }
}

impl KafkaOptions {
    /// Returns the topic that stores dead letters.
    pub fn dead_topic(&self) -> String {
        format!("{}.dead", self.topic)
    }

    /// Returns the Kafka consumer group behind the work queue `group`.
    pub fn queue_group(&self, group: &str) -> String {
        format!("{}.queue.{group}", self.topic)
    }

    /// Returns the Kafka consumer group behind the stream subscription `group`.
    pub fn stream_group(&self, group: &str) -> String {
        format!("{}.stream.{group}", self.topic)
    }
}

/// Connecting to Kafka or preparing the topics failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to connect to Kafka at {servers}: {source:#}")]
pub struct ConnectError {
    /// The bootstrap servers.
    pub servers: String,
    /// The cause, with what to check.
    #[source]
    pub source: anyhow::Error,
}

/// A bus over Kafka. Cloning shares the producer.
#[derive(Clone)]
pub struct KafkaBus {
    inner: Arc<Inner>,
}

struct Inner {
    servers: String,
    options: KafkaOptions,
    producer: FutureProducer,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("servers", &self.inner.servers)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// Connects to the brokers in `servers` (`HOST:PORT`, comma-separated) and creates
/// the topics when missing.
///
/// # Errors
///
/// Fails when no broker responds within the request timeout or a topic cannot be
/// created.
pub async fn connect(servers: &str, options: KafkaOptions) -> Result<KafkaBus, ConnectError> {
    let failed = |source: anyhow::Error| ConnectError {
        servers: servers.to_owned(),
        source,
    };
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        // Idempotence keeps the order of a batch through retries; `acks=all`
        // counts a publish only once every in-sync replica stored it.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("batch.num.messages", options.batch_records.to_string())
        .set(
            "message.timeout.ms",
            options.request_timeout.as_millis().to_string(),
        )
        .create()
        .context("invalid producer settings")
        .map_err(failed)?;
    create_topics(servers, &options).await.map_err(failed)?;
    Ok(KafkaBus {
        inner: Arc::new(Inner {
            servers: servers.to_owned(),
            options,
            producer,
        }),
    })
}

async fn create_topics(servers: &str, options: &KafkaOptions) -> anyhow::Result<()> {
    let admin = admin(servers)?;
    let dead = options.dead_topic();
    let topics = [
        NewTopic::new(
            &options.topic,
            1,
            TopicReplication::Fixed(options.replication),
        ),
        NewTopic::new(&dead, 1, TopicReplication::Fixed(options.replication)),
    ];
    let admin_options = AdminOptions::new().request_timeout(Some(options.request_timeout));
    let results = admin
        .create_topics(&topics, &admin_options)
        .await
        .map_err(|error| anyhow!("{error}; is a broker listening there?"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(anyhow!("could not create topic {topic}: {code}"));
            }
        }
    }
    Ok(())
}

fn admin(servers: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .context("invalid admin client settings")
}

impl KafkaBus {
    /// Returns the settings this bus was connected with.
    pub fn options(&self) -> &KafkaOptions {
        &self.inner.options
    }

    /// Returns the bootstrap servers.
    pub fn servers(&self) -> &str {
        &self.inner.servers
    }

    /// Returns the bus as the shared trait object the services take.
    pub fn shared(self) -> Arc<dyn Bus> {
        Arc::new(self)
    }

    /// Deletes the event and dead-letter topics, for tests that made their own.
    ///
    /// # Errors
    ///
    /// Fails when the brokers cannot be reached.
    pub async fn delete_topics(&self) -> anyhow::Result<()> {
        let admin = admin(&self.inner.servers)?;
        let dead = self.inner.options.dead_topic();
        admin
            .delete_topics(&[&self.inner.options.topic, &dead], &AdminOptions::new())
            .await
            .context("failed to delete the topics")?;
        Ok(())
    }
}

#[async_trait]
impl Publisher for KafkaBus {
    async fn publish(&self, events: &[Envelope]) -> Result<(), PublishError> {
        let options = &self.inner.options;
        let mut deliveries = Vec::with_capacity(events.len());
        // Every record is handed to the producer before any is awaited, so a batch
        // costs one round trip, and idempotence keeps them in this order.
        for event in events {
            let payload = event.to_bytes();
            let record = rdkafka::producer::FutureRecord::to(&options.topic)
                .key(event.subject.as_bytes())
                .payload(&payload)
                .headers(records::headers(event));
            let delivery = self
                .inner
                .producer
                .send_result(record)
                .map_err(|(error, _)| PublishError(anyhow!("could not queue event: {error}")))?;
            deliveries.push(delivery);
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => {
                    return Err(PublishError(anyhow!(
                        "broker did not store the event: {error}"
                    )));
                }
                Err(_) => return Err(PublishError(anyhow!("the producer shut down"))),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Subscriber for KafkaBus {
    async fn queue(&self, spec: &QueueSpec) -> Result<Box<dyn QueueReceiver>, SubscribeError> {
        queue::open(self, spec)
            .await
            .map(|receiver| Box::new(receiver) as Box<dyn QueueReceiver>)
            .map_err(|cause| SubscribeError {
                group: spec.group.clone(),
                cause,
            })
    }

    async fn stream(&self, spec: &StreamSpec) -> Result<Box<dyn StreamReceiver>, SubscribeError> {
        stream::open(self, spec)
            .await
            .map(|receiver| Box::new(receiver) as Box<dyn StreamReceiver>)
            .map_err(|cause| SubscribeError {
                group: spec.group.clone(),
                cause,
            })
    }
}
