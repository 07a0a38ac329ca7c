//! The backend-independent bus contract, run against the embedded backend.

use std::sync::Arc;

use async_trait::async_trait;
use tiffin_bus::api::Bus;
use tiffin_bus::conformance::{self, Connector, Features};
use tiffin_bus::embedded::EmbeddedBus;

/// One log file per case. "Reconnecting" hands out the same bus: the embedded
/// backend belongs to one process, and a vanished member's messages come back when
/// their lease expires.
struct Embedded {
    bus: EmbeddedBus,
    _dir: tempfile::TempDir,
}

impl Embedded {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let bus = EmbeddedBus::open(&dir.path().join("bus.db"))
            .await
            .expect("bus opens");
        Self { bus, _dir: dir }
    }
}

#[async_trait]
impl Connector for Embedded {
    async fn connect(&self) -> Arc<dyn Bus> {
        Arc::new(self.bus.clone())
    }
}

const FEATURES: Features = Features {
    redelivers_after_member_loss: true,
    honours_nack_delay: true,
    replays_from_time: true,
    counts_attempts_across_members: true,
};

#[tokio::test]
async fn publish_reaches_every_group() {
    conformance::publish_reaches_every_group(&Embedded::new().await).await;
}

#[tokio::test]
async fn competing_members_share_the_queue() {
    conformance::competing_members_share_the_queue(&Embedded::new().await).await;
}

#[tokio::test]
async fn nack_redelivers() {
    conformance::nack_redelivers(&Embedded::new().await, FEATURES).await;
}

#[tokio::test]
async fn unacked_message_is_redelivered() {
    conformance::unacked_message_is_redelivered(&Embedded::new().await, FEATURES).await;
}

#[tokio::test]
async fn poison_message_is_dead_lettered() {
    conformance::poison_message_is_dead_lettered(&Embedded::new().await).await;
}

#[tokio::test]
async fn stream_keeps_per_key_order() {
    conformance::stream_keeps_per_key_order(&Embedded::new().await).await;
}

#[tokio::test]
async fn stream_replays_from_start_offset_and_time() {
    conformance::stream_replays_from_start_offset_and_time(&Embedded::new().await, FEATURES).await;
}

#[tokio::test]
async fn stream_position_survives_reconnect() {
    conformance::stream_position_survives_reconnect(&Embedded::new().await).await;
}

/// Two embedded logs, one for queues and one for the stream, behind one bus.
struct Split {
    queues: EmbeddedBus,
    stream: EmbeddedBus,
    _dir: tempfile::TempDir,
}

impl Split {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let queues = EmbeddedBus::open(&dir.path().join("queues.db"))
            .await
            .expect("bus opens");
        let stream = EmbeddedBus::open(&dir.path().join("stream.db"))
            .await
            .expect("bus opens");
        Self {
            queues,
            stream,
            _dir: dir,
        }
    }
}

#[async_trait]
impl Connector for Split {
    async fn connect(&self) -> Arc<dyn Bus> {
        Arc::new(tiffin_bus::split::SplitBus::new(
            Arc::new(self.queues.clone()),
            Arc::new(self.stream.clone()),
        ))
    }
}

#[tokio::test]
async fn split_bus_meets_the_contract() {
    conformance::run_all(&Split::new().await, FEATURES).await;
}
