//! A bus whose work queues and event stream live on different engines, for example
//! work queues on RabbitMQ and the stream on Kafka.

use std::sync::Arc;

use async_trait::async_trait;

use crate::api::{
    Bus, PublishError, Publisher, QueueReceiver, QueueSpec, StreamReceiver, StreamSpec,
    SubscribeError, Subscriber,
};
use crate::envelope::Envelope;

/// Routes queue subscriptions to one bus and stream subscriptions to another.
///
/// Publishing goes to both, the queue engine first, and succeeds only when both
/// confirmed. A failure in between leaves the event on one engine only; the caller
/// (the outbox relay) publishes it again, and consumers drop the repeat by event id.
#[derive(Debug, Clone)]
pub struct SplitBus {
    queues: Arc<dyn Bus>,
    stream: Arc<dyn Bus>,
}

impl SplitBus {
    /// Combines a bus for work queues with a bus for the stream.
    pub fn new(queues: Arc<dyn Bus>, stream: Arc<dyn Bus>) -> Self {
        Self { queues, stream }
    }
}

#[async_trait]
impl Publisher for SplitBus {
    async fn publish(&self, events: &[Envelope]) -> Result<(), PublishError> {
        self.queues.publish(events).await?;
        self.stream.publish(events).await
    }
}

#[async_trait]
impl Subscriber for SplitBus {
    async fn queue(&self, spec: &QueueSpec) -> Result<Box<dyn QueueReceiver>, SubscribeError> {
        self.queues.queue(spec).await
    }

    async fn stream(&self, spec: &StreamSpec) -> Result<Box<dyn StreamReceiver>, SubscribeError> {
        self.stream.stream(spec).await
    }
}
