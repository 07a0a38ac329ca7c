//! The bus contract, run against the embedded backend on a real SQLite file.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tiffin_bus::api::{Publisher, QueueSpec, StartPosition, StreamSpec, Subscriber};
use tiffin_bus::consumer::{run_queue, run_stream};
use tiffin_bus::embedded::EmbeddedBus;
use tiffin_bus::envelope::EventData;
use tiffin_bus::{Envelope, Handler, HandlerError, RetryPolicy};
use tiffin_runtime::CancellationToken;

#[derive(Debug, Serialize, Deserialize)]
struct Pinged {
    key: String,
    n: u32,
}

impl EventData for Pinged {
    const TYPE: &'static str = "test.pinged";
    const VERSION: u32 = 1;

    fn subject(&self) -> String {
        self.key.clone()
    }
}

fn ping(key: &str, n: u32) -> Envelope {
    Envelope::new(
        "/test",
        &Pinged {
            key: key.to_owned(),
            n,
        },
        None,
    )
}

fn queue_spec(group: &str) -> QueueSpec {
    QueueSpec {
        group: group.to_owned(),
        event_types: vec!["test.*".to_owned()],
        lease: Duration::from_secs(30),
    }
}

async fn open(dir: &tempfile::TempDir) -> EmbeddedBus {
    EmbeddedBus::open(&dir.path().join("bus.db"))
        .await
        .expect("bus opens")
}

fn fast_policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        multiplier: 2.0,
        handler_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(5),
    }
}

/// Records every event it sees; fails forever on events whose `n` is in `poison`.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<u32>>,
    poison: HashSet<u32>,
    calls: AtomicU32,
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let data: Pinged = event.decode().map_err(HandlerError::permanent)?;
        if self.poison.contains(&data.n) {
            return Err(HandlerError::transient(anyhow::anyhow!(
                "poison {}",
                data.n
            )));
        }
        self.seen.lock().unwrap().push(data.n);
        Ok(())
    }
}

/// Applies batches all or nothing, as a handler with one transaction per batch
/// does: a batch containing a poison event records none of its events.
#[derive(Default)]
struct BatchRecorder {
    seen: Mutex<Vec<u32>>,
    poison: HashSet<u32>,
    batches: Mutex<Vec<usize>>,
}

#[async_trait]
impl Handler for BatchRecorder {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        self.handle_batch(std::slice::from_ref(event)).await
    }

    fn applies_batches(&self) -> bool {
        true
    }

    async fn handle_batch(&self, events: &[Envelope]) -> Result<(), HandlerError> {
        let mut numbers = Vec::with_capacity(events.len());
        for event in events {
            let data: Pinged = event.decode().map_err(HandlerError::permanent)?;
            if self.poison.contains(&data.n) {
                return Err(HandlerError::transient(anyhow::anyhow!(
                    "poison {}",
                    data.n
                )));
            }
            numbers.push(data.n);
        }
        self.batches.lock().unwrap().push(events.len());
        self.seen.lock().unwrap().extend(numbers);
        Ok(())
    }
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn queue_delivers_each_message_once_per_group() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir).await;
    let mut kitchen = bus.queue(&queue_spec("kitchen")).await.unwrap();
    let mut mailer = bus.queue(&queue_spec("mailer")).await.unwrap();

    bus.publish(&[ping("a", 1), ping("b", 2)]).await.unwrap();

    for receiver in [&mut kitchen, &mut mailer] {
        let batch = receiver.fetch(10, Duration::from_secs(1)).await.unwrap();
        assert_eq!(batch.len(), 2, "each group gets every message");
        for message in batch {
            assert_eq!(message.attempt, 1);
            message.ack().await.unwrap();
        }
        let again = receiver.fetch(10, Duration::from_millis(50)).await.unwrap();
        assert!(again.is_empty(), "acked messages are gone");
    }
}

#[tokio::test]
async fn competing_members_split_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir).await;
    let mut first = bus.queue(&queue_spec("kitchen")).await.unwrap();
    let mut second = bus.queue(&queue_spec("kitchen")).await.unwrap();
    let events: Vec<Envelope> = (0..20).map(|n| ping("k", n)).collect();
    bus.publish(&events).await.unwrap();

    let a = first.fetch(10, Duration::from_secs(1)).await.unwrap();
    let b = second.fetch(20, Duration::from_secs(1)).await.unwrap();

    let ids: HashSet<String> = a.iter().chain(&b).map(|m| m.envelope.id.clone()).collect();
    assert_eq!(a.len(), 10);
    assert_eq!(b.len(), 10);
    assert_eq!(ids.len(), 20, "no message went to both members");
}

#[tokio::test]
async fn nacked_message_returns_after_delay() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir).await;
    let mut queue = bus.queue(&queue_spec("kitchen")).await.unwrap();
    bus.publish(&[ping("a", 1)]).await.unwrap();

    let first = queue
        .fetch(1, Duration::from_secs(1))
        .await
        .unwrap()
        .remove(0);
    first
        .nack(Duration::from_millis(200), "busy")
        .await
        .unwrap();
    let early = queue.fetch(1, Duration::from_millis(50)).await.unwrap();
    let later = queue.fetch(1, Duration::from_secs(2)).await.unwrap();

    assert!(early.is_empty(), "redelivered before its delay");
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].attempt, 2);
}

#[tokio::test]
async fn unacked_message_is_redelivered_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir).await;
    let mut queue = bus.queue(&queue_spec("kitchen")).await.unwrap();
    bus.publish(&[ping("a", 1)]).await.unwrap();
    let taken = queue.fetch(1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(taken.len(), 1);

    // The member dies holding the message: drop it unsettled and reopen the file.
    drop(taken);
    drop(queue);
    bus.close().await;
    let bus = open(&dir).await;
    let mut queue = bus.queue(&queue_spec("kitchen")).await.unwrap();
    let again = queue.fetch(1, Duration::from_secs(1)).await.unwrap();

    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
}

#[tokio::test]
async fn repeated_event_id_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir).await;
    let mut queue = bus.queue(&queue_spec("kitchen")).await.unwrap();
    let event = ping("a", 1);

    bus.publish(std::slice::from_ref(&event)).await.unwrap();
    bus.publish(std::slice::from_ref(&event)).await.unwrap();

    let batch = queue.fetch(10, Duration::from_millis(200)).await.unwrap();
    assert_eq!(batch.len(), 1);
    assert_eq!(bus.event_count().await.unwrap(), 1);
}

#[tokio::test]
async fn poison_message_is_dead_lettered_while_others_flow() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir).await;
    let receiver = bus.queue(&queue_spec("kitchen")).await.unwrap();
    let recorder = Arc::new(Recorder {
        poison: HashSet::from([3]),
        ..Recorder::default()
    });
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(run_queue(
        "kitchen",
        receiver,
        recorder.clone(),
        fast_policy(4),
        4,
        stop.clone(),
    ));

    let events: Vec<Envelope> = (1..=6).map(|n| ping("k", n)).collect();
    bus.publish(&events).await.unwrap();
    eventually("the poison message is dead-lettered", async || {
        !bus.dead_letters().await.unwrap().is_empty()
    })
    .await;
    stop.cancel();
    consumer.await.unwrap();

    let mut seen = recorder.seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, vec![1, 2, 4, 5, 6], "the other messages were handled");
    let letters = bus.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].attempts, 4,
        "dead-lettered after the bounded attempts"
    );
    assert!(
        letters[0].reason.contains("poison 3"),
        "reason kept: {}",
        letters[0].reason
    );
    assert_eq!(bus.queue_depth("kitchen").await.unwrap(), 0);
}

#[tokio::test]
async fn dead_letters_replay_onto_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir).await;
    let mut queue = bus.queue(&queue_spec("kitchen")).await.unwrap();
    bus.publish(&[ping("a", 1)]).await.unwrap();
    let message = queue
        .fetch(1, Duration::from_secs(1))
        .await
        .unwrap()
        .remove(0);
    message.dead_letter("handler gave up").await.unwrap();

    let moved = bus.replay_dead_letters("kitchen").await.unwrap();
    let again = queue.fetch(1, Duration::from_secs(1)).await.unwrap();

    assert_eq!(moved, 1);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 1, "attempts start over");
    assert!(bus.dead_letters().await.unwrap().is_empty());
}

#[tokio::test]
async fn stream_replays_from_start_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir).await;
    let events: Vec<Envelope> = (0..300).map(|n| ping("k", n)).collect();
    bus.publish(&events).await.unwrap();
    let spec = StreamSpec {
        group: "analytics".to_owned(),
        event_types: vec!["test.pinged".to_owned()],
        start: StartPosition::Beginning,
    };

    let mut reader = bus.stream(&spec).await.unwrap();
    let mut read = Vec::new();
    loop {
        let batch = reader.fetch(128, Duration::from_millis(50)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        read.extend(
            batch
                .into_iter()
                .map(|m| m.envelope.decode::<Pinged>().unwrap().n),
        );
    }

    assert_eq!(read, (0..300).collect::<Vec<_>>());
}

#[tokio::test]
async fn stream_position_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir).await;
    bus.publish(&(0..10).map(|n| ping("k", n)).collect::<Vec<_>>())
        .await
        .unwrap();
    let spec = StreamSpec {
        group: "analytics".to_owned(),
        event_types: vec!["test.*".to_owned()],
        start: StartPosition::Beginning,
    };
    let mut reader = bus.stream(&spec).await.unwrap();
    let batch = reader.fetch(4, Duration::from_secs(1)).await.unwrap();
    reader.commit(batch.last().unwrap().offset).await.unwrap();
    drop(reader);
    bus.close().await;

    let bus = open(&dir).await;
    let mut reader = bus.stream(&spec).await.unwrap();
    let next = reader.fetch(1, Duration::from_secs(1)).await.unwrap();

    assert_eq!(next[0].envelope.decode::<Pinged>().unwrap().n, 4);
}

#[tokio::test]
async fn stream_starts_at_offset_or_latest() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir).await;
    bus.publish(&(0..5).map(|n| ping("k", n)).collect::<Vec<_>>())
        .await
        .unwrap();
    let spec = |group: &str, start| StreamSpec {
        group: group.to_owned(),
        event_types: vec!["test.*".to_owned()],
        start,
    };

    let mut from_offset = bus
        .stream(&spec("a", StartPosition::After(2)))
        .await
        .unwrap();
    let mut from_latest = bus.stream(&spec("b", StartPosition::Latest)).await.unwrap();
    let mut from_time = bus
        .stream(&spec("c", StartPosition::Time(i64::MAX)))
        .await
        .unwrap();
    bus.publish(&[ping("k", 5)]).await.unwrap();

    let offset_batch = from_offset.fetch(10, Duration::from_secs(1)).await.unwrap();
    let latest_batch = from_latest.fetch(10, Duration::from_secs(1)).await.unwrap();
    let time_batch = from_time.fetch(10, Duration::from_secs(1)).await.unwrap();
    let ns = |batch: &[tiffin_bus::StreamMessage]| -> Vec<u32> {
        batch
            .iter()
            .map(|m| m.envelope.decode::<Pinged>().unwrap().n)
            .collect()
    };
    assert_eq!(ns(&offset_batch), vec![2, 3, 4, 5]);
    assert_eq!(ns(&latest_batch), vec![5]);
    assert_eq!(ns(&time_batch), vec![5]);
}

#[tokio::test]
async fn stream_runner_dead_letters_and_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir).await;
    bus.publish(&(1..=4).map(|n| ping("k", n)).collect::<Vec<_>>())
        .await
        .unwrap();
    let reader = bus
        .stream(&StreamSpec {
            group: "analytics".to_owned(),
            event_types: vec!["test.*".to_owned()],
            start: StartPosition::Beginning,
        })
        .await
        .unwrap();
    let recorder = Arc::new(Recorder {
        poison: HashSet::from([2]),
        ..Recorder::default()
    });
    let (caught_up, mut idle) = tokio::sync::watch::channel(false);
    let stop = CancellationToken::new();
    let runner = tokio::spawn(run_stream(
        "analytics",
        reader,
        recorder.clone(),
        fast_policy(3),
        Some(caught_up),
        stop.clone(),
    ));

    tokio::time::timeout(Duration::from_secs(10), idle.wait_for(|done| *done))
        .await
        .unwrap()
        .unwrap();
    stop.cancel();
    runner.await.unwrap();

    assert_eq!(
        *recorder.seen.lock().unwrap(),
        vec![1, 3, 4],
        "order kept around the bad event"
    );
    let letters = bus.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].reason.contains("attempt 3 of 3"),
        "reason: {}",
        letters[0].reason
    );
}

#[tokio::test]
async fn queue_batches_ack_together_and_isolate_poison() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir).await;
    let receiver = bus.queue(&queue_spec("orders")).await.unwrap();
    // Published before the consumer starts, so its first fetch takes a batch.
    let events: Vec<Envelope> = (1..=12).map(|n| ping("k", n)).collect();
    bus.publish(&events).await.unwrap();

    let handler = Arc::new(BatchRecorder {
        poison: HashSet::from([7]),
        ..BatchRecorder::default()
    });
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(run_queue(
        "orders",
        receiver,
        handler.clone(),
        fast_policy(3),
        16,
        stop.clone(),
    ));
    eventually("every message is settled", async || {
        bus.queue_depth("orders").await.unwrap() == 0
    })
    .await;
    stop.cancel();
    consumer.await.unwrap();

    let mut seen = handler.seen.lock().unwrap().clone();
    seen.sort_unstable();
    let expected: Vec<u32> = (1..=12).filter(|n| *n != 7).collect();
    assert_eq!(seen, expected, "each good message handled once");
    let letters = bus.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].reason.contains("poison 7"),
        "reason kept: {}",
        letters[0].reason
    );
    assert_eq!(
        letters[0].attempts, 3,
        "the poison message used its attempts"
    );
}

#[tokio::test]
async fn queue_batch_is_handled_in_one_call() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir).await;
    let receiver = bus.queue(&queue_spec("notifications")).await.unwrap();
    let events: Vec<Envelope> = (1..=10).map(|n| ping("k", n)).collect();
    bus.publish(&events).await.unwrap();

    let handler = Arc::new(BatchRecorder::default());
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(run_queue(
        "notifications",
        receiver,
        handler.clone(),
        fast_policy(3),
        16,
        stop.clone(),
    ));
    eventually("every message is acked", async || {
        bus.queue_depth("notifications").await.unwrap() == 0
    })
    .await;
    stop.cancel();
    consumer.await.unwrap();

    assert_eq!(*handler.batches.lock().unwrap(), vec![10]);
    assert_eq!(handler.seen.lock().unwrap().len(), 10);
}

/// A batch handler that takes a while and records how many of its batches ran at
/// once.
#[derive(Default)]
struct SlowBatches {
    running: AtomicUsize,
    max_running: AtomicUsize,
    batches: Mutex<Vec<usize>>,
}

#[async_trait]
impl Handler for SlowBatches {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        self.handle_batch(std::slice::from_ref(event)).await
    }

    fn applies_batches(&self) -> bool {
        true
    }

    async fn handle_batch(&self, events: &[Envelope]) -> Result<(), HandlerError> {
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(running, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(40)).await;
        self.batches.lock().unwrap().push(events.len());
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn busy_queue_gathers_messages_into_few_batches() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir).await;
    let receiver = bus.queue(&queue_spec("analytics")).await.unwrap();
    let handler = Arc::new(SlowBatches::default());
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(run_queue(
        "analytics",
        receiver,
        handler.clone(),
        fast_policy(3),
        64,
        stop.clone(),
    ));

    // One message per publish, while the consumer runs: without a limit on
    // batches each would start a batch of its own beside the others.
    for n in 1..=40 {
        bus.publish(&[ping("k", n)]).await.unwrap();
    }
    eventually("every message is acked", async || {
        bus.queue_depth("analytics").await.unwrap() == 0
    })
    .await;
    stop.cancel();
    consumer.await.unwrap();

    let batches = handler.batches.lock().unwrap().clone();
    assert_eq!(batches.iter().sum::<usize>(), 40, "batches: {batches:?}");
    assert!(
        handler.max_running.load(Ordering::SeqCst) <= 2,
        "{} batches ran at once",
        handler.max_running.load(Ordering::SeqCst)
    );
    assert!(
        batches.iter().any(|&size| size > 1),
        "messages that arrived while batches ran were gathered: {batches:?}"
    );
}
