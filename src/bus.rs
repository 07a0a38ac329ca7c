//! Chooses the bus backend from a URL.
//!
//! | URL | backend |
//! |---|---|
//! | `embedded:` or `embedded:PATH` | the embedded log, `bus.db` in the data directory or at PATH |
//! | `amqp://USER:PASSWORD@HOST:PORT/VHOST` | RabbitMQ; give each deployment its own virtual host |
//! | `nats://HOST:PORT?stream=NAME&prefix=SUBJECT` | NATS JetStream; `stream` and `prefix` default to `TIFFIN_EVENTS` and `tiffin.events` |
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
    if url.starts_with("kafka://") {
        anyhow::bail!(
            "the Kafka backend is not built yet: use embedded:, amqp:// or nats:// for {url}"
        );
    }
    anyhow::bail!(
        "unsupported bus URL `{}`: use embedded:, embedded:PATH, amqp://USER:PASSWORD@HOST:PORT/VHOST or nats://HOST:PORT",
        tiffin_runtime::db::redact(url)
    )
}
