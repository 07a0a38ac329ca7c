//! The backend-independent bus contract, run against the machine's RabbitMQ.
//!
//! Set TIFFIN_TEST_AMQP_URL to use another broker; the tests create and delete a
//! virtual host each, which needs `rabbitmqctl` on the same machine.

mod support;

use std::sync::Arc;

use async_trait::async_trait;
use support::TestVhost;
use tiffin_bus::api::Bus;
use tiffin_bus::conformance::{self, Case, Connector, Features};

struct Rabbit {
    vhost: TestVhost,
}

#[async_trait]
impl Connector for Rabbit {
    async fn connect(&self) -> Arc<dyn Bus> {
        Arc::new(self.vhost.connect().await)
    }
}

async fn rabbit() -> Option<Rabbit> {
    Some(Rabbit {
        vhost: TestVhost::create().await?,
    })
}

const FEATURES: Features = Features {
    // Closing a channel or connection returns its unacked messages at once.
    redelivers_after_member_loss: true,
    // Nacked messages wait out their delay in the group's retry queue.
    honours_nack_delay: true,
    replays_from_time: true,
    counts_attempts_across_members: true,
};

async fn run(case: Case) {
    let Some(rabbit) = rabbit().await else { return };
    conformance::run_case(case, &rabbit, FEATURES).await;
}

tiffin_bus::conformance_tests!(run);
