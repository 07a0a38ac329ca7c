//! The backend-independent bus contract, run against the machine's RabbitMQ.
//!
//! Set TIFFIN_TEST_AMQP_URL to use another broker; the tests create and delete a
//! virtual host each, which needs `rabbitmqctl` on the same machine.

mod support;

use std::sync::Arc;

use async_trait::async_trait;
use support::TestVhost;
use tiffin_bus::api::Bus;
use tiffin_bus::conformance::{self, Connector, Features};

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

#[tokio::test]
async fn publish_reaches_every_group() {
    let Some(rabbit) = rabbit().await else { return };
    conformance::publish_reaches_every_group(&rabbit).await;
}

#[tokio::test]
async fn competing_members_share_the_queue() {
    let Some(rabbit) = rabbit().await else { return };
    conformance::competing_members_share_the_queue(&rabbit).await;
}

#[tokio::test]
async fn nack_redelivers() {
    let Some(rabbit) = rabbit().await else { return };
    conformance::nack_redelivers(&rabbit, FEATURES).await;
}

#[tokio::test]
async fn unacked_message_is_redelivered() {
    let Some(rabbit) = rabbit().await else { return };
    conformance::unacked_message_is_redelivered(&rabbit, FEATURES).await;
}

#[tokio::test]
async fn poison_message_is_dead_lettered() {
    let Some(rabbit) = rabbit().await else { return };
    conformance::poison_message_is_dead_lettered(&rabbit).await;
}

#[tokio::test]
async fn stream_keeps_per_key_order() {
    let Some(rabbit) = rabbit().await else { return };
    conformance::stream_keeps_per_key_order(&rabbit).await;
}

#[tokio::test]
async fn stream_replays_from_start_offset_and_time() {
    let Some(rabbit) = rabbit().await else { return };
    conformance::stream_replays_from_start_offset_and_time(&rabbit, FEATURES).await;
}

#[tokio::test]
async fn stream_position_survives_reconnect() {
    let Some(rabbit) = rabbit().await else { return };
    conformance::stream_position_survives_reconnect(&rabbit).await;
}
