//! Chooses the bus backend from a URL.
//!
//! | URL | backend |
//! |---|---|
//! | `embedded:` or `embedded:PATH` | the embedded log, `bus.db` in the data directory or at PATH |
//! | `amqp://USER:PASSWORD@HOST:PORT/VHOST` | RabbitMQ; give each deployment its own virtual host |
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
        let bus =
            tiffin_bus_rabbitmq::connect(url, tiffin_bus_rabbitmq::Options::default()).await?;
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
