//! The backend-independent bus contract on classic work queues, run against the
//! machine's RabbitMQ.

mod support;

use std::sync::Arc;

use async_trait::async_trait;
use support::TestVhost;
use tiffin_bus::api::Bus;
use tiffin_bus::conformance::{self, Case, Connector, Features};
use tiffin_bus_rabbitmq::{Options, WorkQueueType};

struct ClassicRabbit {
    vhost: TestVhost,
}

#[async_trait]
impl Connector for ClassicRabbit {
    async fn connect(&self) -> Arc<dyn Bus> {
        let options = Options {
            work_queues: WorkQueueType::Classic,
            ..Options::default()
        };
        Arc::new(self.vhost.connect_with(options).await)
    }
}

const FEATURES: Features = Features {
    redelivers_after_member_loss: true,
    honours_nack_delay: true,
    replays_from_time: true,
    counts_attempts_across_members: true,
};

async fn run(case: Case) {
    let Some(vhost) = TestVhost::create().await else {
        return;
    };
    conformance::run_case(case, &ClassicRabbit { vhost }, FEATURES).await;
}

tiffin_bus::conformance_tests!(run);
