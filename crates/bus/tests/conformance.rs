//! The backend-independent bus contract, run against the embedded backend.

use std::sync::Arc;

use async_trait::async_trait;
use tiffin_bus::api::Bus;
use tiffin_bus::conformance::{self, Case, Connector, Features};
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

async fn run(case: Case) {
    conformance::run_case(case, &Embedded::new().await, FEATURES).await;
}

tiffin_bus::conformance_tests!(run);

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
