//! RabbitMQ-specific behaviour: how envelopes map onto AMQP, unroutable publishes,
//! dead letters, one stream per event family and reconnecting.

mod support;

use std::time::Duration;

use futures::StreamExt as _;
use lapin::options::{BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use support::TestVhost;
use tiffin_bus::Envelope;
use tiffin_bus::api::{
    Publisher, QueueReceiver, QueueSpec, StartPosition, StreamReceiver, StreamSpec, Subscriber,
};
use tiffin_bus_rabbitmq::Options;
use tiffin_runtime::time::{now_millis, rfc3339};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn event(event_type: &str, subject: &str) -> Envelope {
    Envelope {
        specversion: "1.0".to_owned(),
        id: uuid::Uuid::now_v7().to_string(),
        source: "/test".to_owned(),
        event_type: event_type.to_owned(),
        subject: subject.to_owned(),
        time: rfc3339(now_millis()),
        datacontenttype: "application/json".to_owned(),
        dataschema: "https://tiffin.dev/contracts/test.v1.json".to_owned(),
        traceparent: Some(TRACEPARENT.to_owned()),
        tracestate: None,
        data: serde_json::json!({ "n": 1 }),
    }
}

fn spec(group: &str) -> QueueSpec {
    QueueSpec {
        group: group.to_owned(),
        event_types: vec!["test.*".to_owned()],
        lease: Duration::from_secs(30),
    }
}

/// Takes one message from `queue` with a bare AMQP connection, leaving the bus out.
async fn get_raw(vhost: &TestVhost, queue: &str) -> (BasicProperties, String) {
    let connection = Connection::connect(&vhost.url, ConnectionProperties::default())
        .await
        .expect("connects");
    let channel = connection.create_channel().await.expect("channel");
    let message = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .expect("a message is waiting");
    (
        message.delivery.properties.clone(),
        message.delivery.routing_key.to_string(),
    )
}

fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    properties.headers().as_ref()?.inner().get(name)
}

fn text(value: Option<&AMQPValue>) -> Option<String> {
    match value? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Fetches until one message arrives or `within` passes.
async fn fetch_one(
    receiver: &mut Box<dyn QueueReceiver>,
    within: Duration,
) -> Option<tiffin_bus::QueueMessage> {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if let Ok(mut batch) = receiver.fetch(1, Duration::from_millis(500)).await
            && !batch.is_empty()
        {
            return Some(batch.remove(0));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test]
async fn envelope_maps_to_amqp_properties() {
    let Some(vhost) = TestVhost::create().await else {
        return;
    };
    let bus = vhost.connect().await;
    drop(bus.queue(&spec("kitchen")).await.expect("subscribe"));
    let sent = event("test.pinged", "order-7");

    bus.publish(std::slice::from_ref(&sent))
        .await
        .expect("publish");
    let (properties, routing_key) = get_raw(&vhost, "kitchen").await;

    assert_eq!(routing_key, "test.pinged");
    assert_eq!(
        properties.message_id().as_ref().map(|s| s.as_str()),
        Some(sent.id.as_str())
    );
    assert_eq!(
        properties.kind().as_ref().map(|s| s.as_str()),
        Some("test.pinged")
    );
    assert_eq!(
        properties.app_id().as_ref().map(|s| s.as_str()),
        Some("/test")
    );
    assert_eq!(
        properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/cloudevents+json")
    );
    assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        text(header(&properties, "cloudEvents:subject")).as_deref(),
        Some("order-7")
    );
    assert_eq!(
        text(header(&properties, "traceparent")).as_deref(),
        Some(TRACEPARENT)
    );
}

#[tokio::test]
async fn unroutable_publish_is_an_error() {
    let Some(vhost) = TestVhost::create().await else {
        return;
    };
    let options = Options {
        stream: None,
        ..Options::default()
    };
    let bus = vhost.connect_with(options).await;

    let error = bus
        .publish(&[event("test.unbound", "a")])
        .await
        .expect_err("no queue is bound");

    let message = format!("{error:#}");
    assert!(message.contains("unroutable"), "{message}");
    assert!(message.contains("test.unbound"), "{message}");
}

#[tokio::test]
async fn dead_letter_keeps_the_reason() {
    let Some(vhost) = TestVhost::create().await else {
        return;
    };
    let bus = vhost.connect().await;
    let mut receiver = bus.queue(&spec("kitchen")).await.expect("subscribe");
    bus.publish(&[event("test.pinged", "a")])
        .await
        .expect("publish");
    let message = fetch_one(&mut receiver, Duration::from_secs(5))
        .await
        .expect("delivered");

    message
        .dead_letter("cannot cook it")
        .await
        .expect("dead letter");
    let (properties, _) = get_raw(&vhost, "kitchen.dead").await;

    assert_eq!(
        text(header(&properties, "tiffin-dead-letter-reason")).as_deref(),
        Some("cannot cook it")
    );
    assert!(
        fetch_one(&mut receiver, Duration::from_secs(1))
            .await
            .is_none(),
        "the original left the queue"
    );
}

#[tokio::test]
async fn bus_recovers_after_connection_closed() {
    let Some(vhost) = TestVhost::create().await else {
        return;
    };
    let bus = vhost.connect().await;
    let mut receiver = bus.queue(&spec("kitchen")).await.expect("subscribe");

    vhost.close_connections();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut published = false;
    while !published && tokio::time::Instant::now() < deadline {
        published = bus.publish(&[event("test.pinged", "a")]).await.is_ok();
        if !published {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let message = fetch_one(&mut receiver, Duration::from_secs(15)).await;

    assert!(published, "publish works again after reconnecting");
    let message = message.expect("fetch works again after reconnecting");
    assert_eq!(message.envelope.subject, "a");
    message.ack().await.expect("ack");
}

fn stream_spec(group: &str, pattern: &str) -> StreamSpec {
    StreamSpec {
        group: group.to_owned(),
        event_types: vec![pattern.to_owned()],
        start: StartPosition::Beginning,
    }
}

/// Reads the routing keys of everything in stream queue `stream` with a bare AMQP
/// connection, from the first message until none comes for a second.
async fn read_raw_stream(vhost: &TestVhost, stream: &str) -> Vec<String> {
    let connection = Connection::connect(&vhost.url, ConnectionProperties::default())
        .await
        .expect("connects");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .basic_qos(100, BasicQosOptions::default())
        .await
        .expect("basic.qos");
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = channel
        .basic_consume(
            stream.into(),
            "".into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
        .expect("consume the stream");
    let mut keys = Vec::new();
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_secs(1), consumer.next()).await
    {
        keys.push(delivery.routing_key.to_string());
    }
    keys
}

/// Fetches from a stream until `count` messages arrived or 10 s passed.
async fn fetch_stream(receiver: &mut Box<dyn StreamReceiver>, count: usize) -> Vec<String> {
    let mut types = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while types.len() < count && tokio::time::Instant::now() < deadline {
        let batch = receiver
            .fetch(count, Duration::from_millis(500))
            .await
            .expect("fetch");
        types.extend(batch.into_iter().map(|m| m.envelope.event_type));
    }
    types
}

#[tokio::test]
async fn each_event_family_has_its_own_stream() {
    let Some(vhost) = TestVhost::create().await else {
        return;
    };
    let bus = vhost.connect().await;
    let mut reader = bus
        .stream(&stream_spec("beta-reader", "beta.*"))
        .await
        .expect("open a reader");

    bus.publish(&[
        event("alpha.one", "a"),
        event("beta.one", "a"),
        event("alpha.two", "a"),
        event("alpha.three", "b"),
        event("beta.two", "b"),
    ])
    .await
    .expect("publish");
    let alpha = read_raw_stream(&vhost, "tiffin.stream.alpha").await;
    let beta = read_raw_stream(&vhost, "tiffin.stream.beta").await;
    let read = fetch_stream(&mut reader, 2).await;

    assert_eq!(alpha, ["alpha.one", "alpha.two", "alpha.three"]);
    assert_eq!(beta, ["beta.one", "beta.two"]);
    assert_eq!(read, ["beta.one", "beta.two"]);
}

#[tokio::test]
async fn stream_reader_across_families_is_rejected() {
    let Some(vhost) = TestVhost::create().await else {
        return;
    };
    let bus = vhost.connect().await;

    let error = bus
        .stream(&StreamSpec {
            group: "mixed".to_owned(),
            event_types: vec!["alpha.*".to_owned(), "beta.one".to_owned()],
            start: StartPosition::Beginning,
        })
        .await
        .expect_err("two families are rejected");

    let message = format!("{error:#}");
    assert!(message.contains("mixed"), "{message}");
    assert!(
        message.contains("one stream reader per family"),
        "{message}"
    );
}

#[tokio::test]
async fn commit_of_another_stream_is_not_applied() {
    let Some(vhost) = TestVhost::create().await else {
        return;
    };
    let bus = vhost.connect().await;
    bus.publish(&[event("alpha.one", "a"), event("alpha.two", "a")])
        .await
        .expect("publish");
    // A bare offset, as committed when one stream kept every family.
    drop(
        bus.stream(&stream_spec("upgraded", "alpha.*"))
            .await
            .expect("declare the group's queues"),
    );
    let connection = Connection::connect(&vhost.url, ConnectionProperties::default())
        .await
        .expect("connects");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .basic_publish(
            "".into(),
            "upgraded.offset".into(),
            BasicPublishOptions::default(),
            b"1",
            BasicProperties::default(),
        )
        .await
        .expect("publish a legacy commit")
        .await
        .expect("sent");

    let mut reader = bus
        .stream(&stream_spec("upgraded", "alpha.*"))
        .await
        .expect("reopen");
    let read = fetch_stream(&mut reader, 2).await;
    reader.commit(1).await.expect("commit");
    drop(reader);
    bus.publish(&[event("alpha.three", "a")])
        .await
        .expect("publish");
    let mut reopened = bus
        .stream(&stream_spec("upgraded", "alpha.*"))
        .await
        .expect("reopen after a commit");
    let after_commit = fetch_stream(&mut reopened, 1).await;

    assert_eq!(
        read,
        ["alpha.one", "alpha.two"],
        "the legacy commit is ignored"
    );
    assert_eq!(after_commit, ["alpha.three"], "the new commit applies");
}

#[tokio::test]
#[ignore = "restarts the machine's shared broker, which breaks every other test using it"]
async fn bus_recovers_after_broker_restart() {
    let Some(vhost) = TestVhost::create().await else {
        return;
    };
    let bus = vhost.connect().await;
    let mut receiver = bus.queue(&spec("kitchen")).await.expect("subscribe");

    support::rabbitmqctl(&["stop_app"]);
    let failed = bus.publish(&[event("test.pinged", "lost")]).await;
    support::rabbitmqctl(&["start_app"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut published = false;
    while !published && tokio::time::Instant::now() < deadline {
        published = bus.publish(&[event("test.pinged", "a")]).await.is_ok();
        if !published {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let message = fetch_one(&mut receiver, Duration::from_secs(30)).await;

    assert!(failed.is_err(), "publish fails while the broker is down");
    assert!(published, "publish works again after the restart");
    assert!(message.is_some(), "fetch works again after the restart");
}

#[tokio::test]
async fn ready_messages_counts_without_declaring() {
    let Some(vhost) = TestVhost::create().await else {
        return;
    };
    let bus = vhost.connect().await;

    assert_eq!(bus.ready_messages("kitchen").await.expect("checked"), None);
    assert_eq!(
        bus.ready_messages("kitchen").await.expect("checked again"),
        None
    );
    drop(bus.queue(&spec("kitchen")).await.expect("subscribe"));
    bus.publish(&[event("test.pinged", "order-8")])
        .await
        .expect("publish");
    assert_eq!(
        bus.ready_messages("kitchen").await.expect("checked"),
        Some(1)
    );
}
