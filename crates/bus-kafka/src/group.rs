//! The parts that queues and streams share: the group's consumer, its first
//! committed offset, reading one record, and the dead-letter topic.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Message as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tiffin_bus::envelope::Envelope;

use crate::KafkaBus;
use crate::records;

/// The one partition every event lives in.
pub(crate) const PARTITION: i32 = 0;

/// The starting position of a group that has never committed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Seed {
    /// The end of the log: only records produced from now on.
    End,
    /// The start of the retained log.
    Beginning,
    /// This offset.
    Offset(i64),
    /// The first record stored at or after this time, in Unix milliseconds.
    Time(i64),
}

/// A subscribed member of a Kafka consumer group.
pub(crate) struct Member {
    pub(crate) consumer: Arc<StreamConsumer>,
    pub(crate) topic: String,
    pub(crate) group: String,
}

/// Joins `group` on the bus's topic, committing `seed` first when the group has
/// no committed offset yet.
pub(crate) async fn join(bus: &KafkaBus, group: String, seed: Seed) -> anyhow::Result<Member> {
    let options = bus.options();
    let topic = options.topic.clone();
    let timeout = options.request_timeout;
    let config = consumer_config(bus.servers(), &group, options.session_timeout);
    {
        let config = config.clone();
        let topic = topic.clone();
        tokio::task::spawn_blocking(move || seed_position(&config, &topic, seed, timeout))
            .await
            .context("seeding the group position panicked")??;
    }
    let consumer: StreamConsumer = config.create().context("invalid consumer settings")?;
    consumer
        .subscribe(&[&topic])
        .with_context(|| format!("could not subscribe to topic {topic}"))?;
    Ok(Member {
        consumer: Arc::new(consumer),
        topic,
        group,
    })
}

fn consumer_config(servers: &str, group: &str, session_timeout: Duration) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", servers)
        .set("group.id", group)
        // Offsets move only when the receiver commits what was settled.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // A joining member must not take the partition from one that is reading
        // it: that would hand the other member messages still in flight here.
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "session.timeout.ms",
            session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (session_timeout.as_millis() / 5).max(100).to_string(),
        );
    config
}

/// Commits the starting offset of a group that has none. Blocking.
fn seed_position(
    config: &ClientConfig,
    topic: &str,
    seed: Seed,
    timeout: Duration,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = config.create().context("invalid consumer settings")?;
    let mut partition = TopicPartitionList::new();
    partition.add_partition(topic, PARTITION);
    let committed = consumer
        .committed_offsets(partition, timeout)
        .map_err(|error| anyhow!("could not read the group's offset: {error}"))?;
    let current = committed
        .find_partition(topic, PARTITION)
        .map(|element| element.offset());
    if matches!(current, Some(Offset::Offset(_))) {
        return Ok(());
    }

    let (low, high) = consumer
        .fetch_watermarks(topic, PARTITION, timeout)
        .map_err(|error| anyhow!("could not read the offsets of topic {topic}: {error}"))?;
    let offset = match seed {
        Seed::End => high,
        Seed::Beginning => low,
        Seed::Offset(offset) => offset.clamp(low, high),
        Seed::Time(millis) => {
            let mut query = TopicPartitionList::new();
            query.add_partition_offset(topic, PARTITION, Offset::Offset(millis))?;
            let found = consumer
                .offsets_for_times(query, timeout)
                .map_err(|error| anyhow!("could not look up offsets by time: {error}"))?;
            match found
                .find_partition(topic, PARTITION)
                .map(|element| element.offset())
            {
                Some(Offset::Offset(offset)) => offset,
                _ => high,
            }
        }
    };
    let mut position = TopicPartitionList::new();
    position.add_partition_offset(topic, PARTITION, Offset::Offset(offset))?;
    consumer
        .commit(&position, CommitMode::Sync)
        .map_err(|error| anyhow!("could not commit the group's first offset: {error}"))?;
    Ok(())
}

impl Member {
    /// Commits `offset` (the next record to read) as the group's position in the
    /// background.
    pub(crate) fn commit_later(&self, offset: i64) -> anyhow::Result<()> {
        self.consumer
            .commit(&self.position(offset)?, CommitMode::Async)
            .map_err(|error| anyhow!("could not commit offset {offset}: {error}"))
    }

    /// Commits `offset` (the next record to read) as the group's position and
    /// returns once the broker stored it.
    pub(crate) async fn commit_now(&self, offset: i64) -> anyhow::Result<()> {
        let position = self.position(offset)?;
        let consumer = Arc::clone(&self.consumer);
        tokio::task::spawn_blocking(move || consumer.commit(&position, CommitMode::Sync))
            .await
            .context("the commit panicked")?
            .map_err(|error| anyhow!("could not commit offset {offset}: {error}"))
    }

    fn position(&self, offset: i64) -> anyhow::Result<TopicPartitionList> {
        let mut position = TopicPartitionList::new();
        position.add_partition_offset(&self.topic, PARTITION, Offset::Offset(offset))?;
        Ok(position)
    }

    /// Waits up to `wait` for the next record and returns its offset and its
    /// envelope, or the error that decoding it gave. `None` when nothing came.
    pub(crate) async fn next(
        &self,
        wait: Duration,
    ) -> anyhow::Result<Option<(i64, Result<Envelope, Record>)>> {
        let received = match tokio::time::timeout(wait, self.consumer.recv()).await {
            Err(_) => return Ok(None),
            Ok(received) => received.map_err(|error| anyhow!("{error}"))?,
        };
        let offset = received.offset();
        let payload = received.payload().unwrap_or_default();
        let decoded = Envelope::from_bytes(payload).map_err(|error| Record {
            key: received.key().map(<[u8]>::to_vec),
            payload: payload.to_vec(),
            error: error.to_string(),
        });
        Ok(Some((offset, decoded)))
    }
}

/// A record whose value is not an envelope.
#[derive(Debug)]
pub(crate) struct Record {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    error: String,
}

/// Writes dead letters of one group.
#[derive(Clone)]
pub(crate) struct DeadLetters {
    pub(crate) producer: FutureProducer,
    pub(crate) topic: String,
    pub(crate) group: String,
}

impl DeadLetters {
    pub(crate) fn new(bus: &KafkaBus, group: &str) -> Self {
        Self {
            producer: bus.inner.producer.clone(),
            topic: bus.options().dead_topic(),
            group: group.to_owned(),
        }
    }

    /// Stores `event` in the dead-letter topic and waits for the broker.
    pub(crate) async fn send(
        &self,
        event: &Envelope,
        offset: i64,
        reason: &str,
    ) -> anyhow::Result<()> {
        let payload = event.to_bytes();
        let record = FutureRecord::to(&self.topic)
            .key(event.subject.as_bytes())
            .payload(&payload)
            .headers(records::dead_headers(event, &self.group, offset, reason));
        self.deliver(record).await
    }

    /// Stores a record that could not be decoded, as it came.
    pub(crate) async fn send_raw(&self, record: &Record, offset: i64) -> anyhow::Result<()> {
        let reason = format!("not a CloudEvents envelope: {}", record.error);
        let offset = offset.to_string();
        let headers = rdkafka::message::OwnedHeaders::new()
            .insert(Header {
                key: records::DEAD_REASON_HEADER,
                value: Some(&reason),
            })
            .insert(Header {
                key: records::DEAD_GROUP_HEADER,
                value: Some(&self.group),
            })
            .insert(Header {
                key: records::DEAD_OFFSET_HEADER,
                value: Some(&offset),
            });
        let mut out = FutureRecord::to(&self.topic)
            .payload(&record.payload)
            .headers(headers);
        if let Some(key) = &record.key {
            out = out.key(key.as_slice());
        }
        self.deliver(out).await
    }

    async fn deliver(&self, record: FutureRecord<'_, [u8], Vec<u8>>) -> anyhow::Result<()> {
        self.producer
            .send(record, Duration::from_secs(5))
            .await
            .map(|_| ())
            .map_err(|(error, _)| anyhow!("could not store the dead letter: {error}"))
    }
}
