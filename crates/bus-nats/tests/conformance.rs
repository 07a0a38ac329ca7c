//! The bus contract and the JetStream specifics, run against a real nats-server.
//!
//! The server URL comes from `TIFFIN_TEST_NATS_URL` (default
//! `nats://127.0.0.1:4222`). Each test uses its own stream and subject prefix and
//! deletes both streams at the end, so tests run in parallel on a shared server.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tiffin_bus::api::{Bus, Publisher, QueueSpec, Subscriber};
use tiffin_bus::conformance::{self, Case, Connector, Features};
use tiffin_bus::envelope::Envelope;
use tiffin_bus_nats::{DEAD_REASON_HEADER, NatsBus, NatsOptions, connect};
use tokio::net::TcpListener;

const START_HINT: &str = "start it with: start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log";

fn server_url() -> String {
    std::env::var("TIFFIN_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// Options with a stream and prefix of their own.
fn unique_options() -> NatsOptions {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let id = &id[id.len() - 12..];
    NatsOptions {
        stream: format!("TIFFIN_TEST_{id}"),
        subject_prefix: format!("tiffin-test.{id}"),
        request_timeout: Duration::from_secs(2),
        ..NatsOptions::default()
    }
}

/// Connects a bus with unique names, or returns `None` after printing why the test
/// is skipped. With `CI=true` an unreachable server fails the test instead.
async fn test_bus(url: &str) -> Option<NatsBus> {
    match connect(url, unique_options()).await {
        Ok(bus) => Some(bus),
        Err(error) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("nats not reachable at {url}: {error}; {START_HINT}")
        }
        Err(error) => {
            eprintln!("skipped: nats not reachable at {url} ({error}): {START_HINT}");
            None
        }
    }
}

/// Runs `test` with a fresh bus, then deletes its streams whether or not it passed.
async fn with_bus<F, Fut>(test: F)
where
    F: FnOnce(NatsBus) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(bus) = test_bus(&server_url()).await else {
        return;
    };

    let outcome = tokio::spawn(test(bus.clone())).await;

    bus.delete_streams().await.expect("streams deleted");
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// Opens a new connection per call, as a restarted process would, on the same
/// stream and prefix.
struct Nats {
    url: String,
    options: NatsOptions,
}

#[async_trait]
impl Connector for Nats {
    async fn connect(&self) -> Arc<dyn Bus> {
        connect(&self.url, self.options.clone())
            .await
            .expect("connects")
            .shared()
    }
}

/// Acked messages leave at once and nacks wait their delay. A member that vanishes
/// gets its messages redelivered once their ack wait (the lease) runs out. The
/// server's start time is millisecond-precise.
const FEATURES: Features = Features {
    redelivers_after_member_loss: true,
    honours_nack_delay: true,
    replays_from_time: true,
    counts_attempts_across_members: true,
};

async fn run(case: Case) {
    with_bus(|bus| async move {
        let connector = Nats {
            url: server_url(),
            options: bus.options().clone(),
        };
        conformance::run_case(case, &connector, FEATURES).await;
    })
    .await;
}

tiffin_bus::conformance_tests!(run);

// === JetStream specifics ===

fn event(event_type: &str, subject: &str) -> Envelope {
    Envelope {
        specversion: "1.0".to_owned(),
        id: uuid::Uuid::now_v7().to_string(),
        source: "/test".to_owned(),
        event_type: event_type.to_owned(),
        subject: subject.to_owned(),
        time: "2025-01-01T00:00:00Z".to_owned(),
        datacontenttype: "application/json".to_owned(),
        dataschema: "https://tiffin.dev/contracts/test.v1.json".to_owned(),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned()),
        tracestate: None,
        data: serde_json::json!({ "n": 1 }),
    }
}

fn queue_spec(group: &str, pattern: &str) -> QueueSpec {
    QueueSpec {
        group: group.to_owned(),
        event_types: vec![pattern.to_owned()],
        lease: Duration::from_secs(5),
    }
}

async fn stream_of(bus: &NatsBus, name: &str) -> async_nats::jetstream::stream::Stream {
    bus.jetstream()
        .get_stream(name)
        .await
        .expect("stream exists")
}

#[tokio::test]
async fn headers_carry_cloudevents_attributes() {
    with_bus(|bus| async move {
        let sent = event("order.placed", "order-17");
        bus.publish(std::slice::from_ref(&sent))
            .await
            .expect("publish");

        let stored = stream_of(&bus, &bus.options().stream)
            .await
            .get_raw_message(1)
            .await
            .expect("first message");

        let header = |name: &str| stored.headers.get(name).map(|v| v.as_str().to_owned());
        let prefix = &bus.options().subject_prefix;
        assert_eq!(stored.subject.as_str(), format!("{prefix}.order.placed"));
        assert_eq!(header("Nats-Msg-Id"), Some(sent.id.clone()));
        assert_eq!(header("ce-type").as_deref(), Some("order.placed"));
        assert_eq!(header("ce-subject").as_deref(), Some("order-17"));
        assert_eq!(header("traceparent"), sent.traceparent);
        assert_eq!(
            header("Content-Type").as_deref(),
            Some("application/cloudevents+json")
        );
        assert_eq!(
            Envelope::from_bytes(&stored.payload).expect("envelope"),
            sent
        );
    })
    .await;
}

#[tokio::test]
async fn repeated_event_id_stored_once() {
    with_bus(|bus| async move {
        let sent = event("order.placed", "order-1");

        bus.publish(&[sent.clone(), sent.clone()])
            .await
            .expect("publish");
        bus.publish(&[sent]).await.expect("publish again");

        let mut stream = stream_of(&bus, &bus.options().stream).await;
        let info = stream.info().await.expect("stream info");
        assert_eq!(info.state.messages, 1);
    })
    .await;
}

#[tokio::test]
async fn invalid_event_type_is_rejected() {
    with_bus(|bus| async move {
        let error = bus
            .publish(&[event("order placed", "order-1")])
            .await
            .expect_err("a space cannot be in a subject");

        assert!(
            format!("{error:#}").contains("invalid event type"),
            "{error:#}"
        );
    })
    .await;
}

#[tokio::test]
async fn publish_without_stream_fails() {
    with_bus(|bus| async move {
        bus.delete_streams().await.expect("streams deleted");

        let outcome = bus.publish(&[event("order.placed", "order-1")]).await;

        assert!(outcome.is_err(), "nothing stores the subject");
    })
    .await;
}

#[tokio::test]
async fn dead_letter_keeps_reason() {
    with_bus(|bus| async move {
        let mut queue = bus
            .queue(&queue_spec("kitchen", "order.*"))
            .await
            .expect("subscribe");
        bus.publish(&[event("order.placed", "order-1")])
            .await
            .expect("publish");
        let message = queue
            .fetch(1, Duration::from_secs(5))
            .await
            .expect("fetch")
            .remove(0);

        message
            .dead_letter("kitchen closed")
            .await
            .expect("dead letter");

        let dead = stream_of(&bus, &bus.options().dead_stream())
            .await
            .get_raw_message(1)
            .await
            .expect("dead letter stored");
        let reason = dead
            .headers
            .get(DEAD_REASON_HEADER)
            .map(|v| v.as_str().to_owned());
        assert_eq!(reason.as_deref(), Some("kitchen closed"));
        assert_eq!(dead.subject.as_str(), bus.options().dead_subject("kitchen"));
        let left = queue
            .fetch(1, Duration::from_millis(500))
            .await
            .expect("fetch");
        assert!(left.is_empty(), "the original left the queue");
    })
    .await;
}

#[tokio::test]
async fn queue_merges_several_patterns() {
    with_bus(|bus| async move {
        let spec = QueueSpec {
            event_types: vec!["order.*".to_owned(), "menu.item.upserted".to_owned()],
            ..queue_spec("mailer", "")
        };
        let mut queue = bus.queue(&spec).await.expect("subscribe");
        bus.publish(&[
            event("order.placed", "o"),
            event("menu.item.upserted", "m"),
            event("menu.item.deleted", "m"),
        ])
        .await
        .expect("publish");

        let mut types = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while types.len() < 2 && tokio::time::Instant::now() < deadline {
            for message in queue
                .fetch(10, Duration::from_millis(500))
                .await
                .expect("fetch")
            {
                types.push(message.envelope.event_type.clone());
                message.ack().await.expect("ack");
            }
        }

        types.sort();
        assert_eq!(types, vec!["menu.item.upserted", "order.placed"]);
    })
    .await;
}

#[tokio::test]
async fn forced_reconnect_keeps_working() {
    with_bus(|bus| async move {
        let mut queue = bus
            .queue(&queue_spec("kitchen", "order.*"))
            .await
            .expect("subscribe");

        bus.client()
            .force_reconnect()
            .await
            .expect("reconnect requested");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while bus
            .publish(&[event("order.placed", "order-1")])
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "publish never recovered"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let fetched = queue.fetch(1, Duration::from_secs(5)).await.expect("fetch");
        assert_eq!(fetched.len(), 1);
    })
    .await;
}

/// Forwards connections from a loopback port to the NATS server until it is
/// dropped, so a test can cut the connection without touching the shared server.
struct Proxy {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(port: u16, upstream: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("proxy binds");
        let port = listener.local_addr().expect("bound").port();
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                links.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self { port, task }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every link.
        self.task.abort();
    }
}

#[tokio::test]
async fn lost_connection_fails_fast_then_recovers() {
    let url = server_url();
    let Some(upstream) = url
        .strip_prefix("nats://")
        .and_then(|rest| rest.rsplit('@').next())
        .and_then(|host| host.parse::<std::net::SocketAddr>().ok())
    else {
        eprintln!("skipped: the proxy test needs a nats://IP:PORT URL, got {url}");
        return;
    };
    let Some(probe) = test_bus(&url).await else {
        return;
    };
    let options = probe.options().clone();
    let proxy = Proxy::start(0, upstream).await;
    let port = proxy.port;
    let bus = connect(&format!("nats://127.0.0.1:{port}"), options)
        .await
        .expect("connects");
    let mut queue = bus
        .queue(&queue_spec("kitchen", "order.*"))
        .await
        .expect("subscribe");

    drop(proxy);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = tokio::time::Instant::now();
    let published = bus.publish(&[event("order.placed", "order-1")]).await;
    let fetched = queue.fetch(1, Duration::from_millis(200)).await;
    let failed_within = started.elapsed();
    let _proxy = Proxy::start(port, upstream).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while bus
        .publish(&[event("order.placed", "order-2")])
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publish never recovered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovered = queue.fetch(1, Duration::from_secs(5)).await;
    probe.delete_streams().await.expect("streams deleted");

    assert!(published.is_err(), "publish fails while disconnected");
    assert!(fetched.is_err(), "fetch fails while disconnected");
    assert!(
        failed_within < Duration::from_secs(5),
        "failed after {failed_within:?}"
    );
    assert_eq!(recovered.expect("fetch after reconnect").len(), 1);
}

#[tokio::test]
async fn unreachable_server_names_url() {
    let error = connect("nats://tiffin:secret@127.0.0.1:1", NatsOptions::default())
        .await
        .expect_err("nothing listens on port 1");

    let message = error.to_string();
    assert!(
        message.contains("nats://tiffin:***@127.0.0.1:1"),
        "{message}"
    );
    assert!(!message.contains("secret"), "{message}");
}

#[tokio::test]
async fn uncommitted_reads_return_on_reopen() {
    with_bus(|bus| async move {
        let events: Vec<Envelope> = (0..6).map(|_| event("order.placed", "o")).collect();
        bus.publish(&events).await.expect("publish");
        let spec = tiffin_bus::api::StreamSpec {
            group: "analytics".to_owned(),
            event_types: vec!["order.*".to_owned()],
            start: tiffin_bus::api::StartPosition::Beginning,
        };
        let mut reader = bus.stream(&spec).await.expect("subscribe");
        let read = reader
            .fetch(6, Duration::from_secs(5))
            .await
            .expect("fetch");
        reader.commit(read[2].offset).await.expect("commit");
        drop(reader);

        let mut reader = bus.stream(&spec).await.expect("subscribe again");
        let next = reader
            .fetch(1, Duration::from_secs(2))
            .await
            .expect("fetch");

        assert_eq!(read.len(), 6);
        assert_eq!(next.len(), 1, "resumed without waiting for the ack wait");
        assert_eq!(next[0].envelope.id, events[3].id);
    })
    .await;
}
