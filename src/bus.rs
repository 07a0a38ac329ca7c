//! Chooses the bus backend from a URL.
//!
//! | URL | backend |
//! |---|---|
//! | `embedded:` or `embedded:PATH` | the embedded log, `bus.db` in the data directory or at PATH |
//! | `amqp://USER:PASSWORD@HOST:PORT/VHOST?queue-type=TYPE` | RabbitMQ; give each deployment its own virtual host; `queue-type` of the work queues is `quorum` (default) or `classic` |
//! | `nats://HOST:PORT?stream=NAME&prefix=SUBJECT` | NATS JetStream; `stream` and `prefix` default to `TIFFIN_EVENTS` and `tiffin.events` |
//! | `kafka://HOST:PORT[,HOST:PORT...]?topic=NAME&replication=N&batch=N` | Kafka; `topic` defaults to `tiffin.events`, `replication` and `batch` (records per produce batch) to 1 |
//!
//! Work queues and the stream may use different URLs; the bus then publishes to both
//! ([`tiffin_bus::split::SplitBus`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tiffin_bus::api::Bus;
use tiffin_bus::embedded::EmbeddedBus;
use tiffin_bus::split::SplitBus;

/// A connected bus, and the embedded log behind it if there is one (the demo reads
/// its queue depths).
#[derive(Debug, Clone)]
pub struct Connected {
    /// The bus the services use.
    pub bus: Arc<dyn Bus>,
    /// The embedded log, when a URL chose it.
    pub embedded: Option<EmbeddedBus>,
}

/// Connects to the queue and stream URLs, sharing one connection when they are equal.
///
/// # Errors
///
/// Fails when a URL is not supported or its engine cannot be reached.
pub async fn connect(
    queue_url: &str,
    stream_url: &str,
    data_dir: &Path,
) -> anyhow::Result<Connected> {
    let queues = connect_one(queue_url, data_dir).await?;
    if queue_url == stream_url {
        return Ok(queues);
    }
    let stream = connect_one(stream_url, data_dir).await?;
    Ok(Connected {
        bus: Arc::new(SplitBus::new(queues.bus, stream.bus)),
        embedded: queues.embedded.or(stream.embedded),
    })
}

async fn connect_one(url: &str, data_dir: &Path) -> anyhow::Result<Connected> {
    if let Some(path) = url.strip_prefix("embedded:") {
        let path = if path.is_empty() {
            data_dir.join("bus.db")
        } else {
            PathBuf::from(path)
        };
        let bus = EmbeddedBus::open(&path)
            .await
            .with_context(|| format!("failed to open the embedded bus at {}", path.display()))?;
        return Ok(Connected {
            bus: Arc::new(bus.clone()),
            embedded: Some(bus),
        });
    }
    if url.starts_with("amqp://") || url.starts_with("amqps://") {
        let (url, options) = rabbitmq_options(url)?;
        let bus = tiffin_bus_rabbitmq::connect(&url, options).await?;
        return Ok(Connected {
            bus: Arc::new(bus),
            embedded: None,
        });
    }
    if url.starts_with("nats://") {
        let (address, query) = url.split_once('?').unwrap_or((url, ""));
        let mut options = tiffin_bus_nats::NatsOptions::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("stream", value)) => options.stream = value.to_owned(),
                Some(("prefix", value)) => options.subject_prefix = value.to_owned(),
                _ => anyhow::bail!(
                    "unknown parameter `{pair}` in bus URL {address}: accepted are stream=NAME and prefix=SUBJECT"
                ),
            }
        }
        let bus = tiffin_bus_nats::connect(address, options).await?;
        return Ok(Connected {
            bus: bus.shared(),
            embedded: None,
        });
    }
    if let Some(rest) = url.strip_prefix("kafka://") {
        let (servers, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut options = tiffin_bus_kafka::KafkaOptions::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("topic", value)) => options.topic = value.to_owned(),
                Some(("replication", value)) => {
                    options.replication = value.parse().map_err(|_| {
                        anyhow::anyhow!(
                            "replication={value} in bus URL {url} is not a number: give the replicas per topic, for example replication=3"
                        )
                    })?;
                }
                Some(("batch", value)) => {
                    options.batch_records = value.parse().map_err(|_| {
                        anyhow::anyhow!(
                            "batch={value} in bus URL {url} is not a number: give the most records per produce batch, for example batch=1000"
                        )
                    })?;
                }
                _ => anyhow::bail!(
                    "unknown parameter `{pair}` in bus URL {url}: accepted are topic=NAME, replication=N and batch=N"
                ),
            }
        }
        let servers = servers.trim_end_matches('/');
        let bus = tiffin_bus_kafka::connect(servers, options).await?;
        return Ok(Connected {
            bus: bus.shared(),
            embedded: None,
        });
    }
    anyhow::bail!(
        "unsupported bus URL `{}`: use embedded:, embedded:PATH, amqp://USER:PASSWORD@HOST:PORT/VHOST, nats://HOST:PORT or kafka://HOST:PORT",
        tiffin_runtime::db::redact(url)
    )
}

/// Takes Tiffin's parameters out of a RabbitMQ URL and returns the URL left for
/// the AMQP client (which reads parameters of its own, such as `heartbeat`) with
/// the options they set.
pub(crate) fn rabbitmq_options(
    url: &str,
) -> anyhow::Result<(String, tiffin_bus_rabbitmq::Options)> {
    let mut options = tiffin_bus_rabbitmq::Options::default();
    let Some((address, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), options));
    };
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("queue-type", value)) => {
                options.work_queues = tiffin_bus_rabbitmq::WorkQueueType::parse(value)
                    .with_context(|| {
                        format!(
                            "invalid queue-type `{value}` in bus URL {}: accepted are quorum and classic",
                            tiffin_runtime::db::redact(address)
                        )
                    })?;
            }
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        address.to_owned()
    } else {
        format!("{address}?{}", rest.join("&"))
    };
    Ok((url, options))
}

#[cfg(test)]
mod tests {
    use tiffin_bus_rabbitmq::WorkQueueType;

    use super::rabbitmq_options;

    #[test]
    fn queue_type_is_taken_out_of_the_url() {
        let (url, options) =
            rabbitmq_options("amqp://u:p@127.0.0.1:5672/shop?heartbeat=10&queue-type=classic")
                .expect("valid");

        assert_eq!(url, "amqp://u:p@127.0.0.1:5672/shop?heartbeat=10");
        assert_eq!(options.work_queues, WorkQueueType::Classic);
    }

    #[test]
    fn quorum_is_the_default() {
        let (url, options) = rabbitmq_options("amqp://u:p@127.0.0.1:5672/shop").expect("valid");

        assert_eq!(url, "amqp://u:p@127.0.0.1:5672/shop");
        assert_eq!(options.work_queues, WorkQueueType::Quorum);
    }

    #[test]
    fn unknown_queue_type_is_named() {
        let error = rabbitmq_options("amqp://u:secret@127.0.0.1:5672/shop?queue-type=lazy")
            .expect_err("lazy is no queue type");

        let message = error.to_string();
        assert!(message.contains("`lazy`"), "{message}");
        assert!(message.contains("quorum and classic"), "{message}");
        assert!(!message.contains("secret"), "{message}");
    }
}
