//! The contract every bus backend must meet, as tests that run against a real
//! engine.
//!
//! A backend's test crate implements [`Connector`] and declares the cases as tests
//! with [`conformance_tests!`](crate::conformance_tests), or calls [`run_all`]. Every case uses its own event types, queues and stream groups (named
//! after a fresh UUID), so cases run in parallel against one shared engine and leave
//! nothing that a later run would read. Where backends legitimately differ, the
//! backend declares what it guarantees in [`Features`] and the cases check that.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tiffin_runtime::CancellationToken;
use tiffin_runtime::time::{now_millis, rfc3339};

use crate::api::{Bus, QueueMessage, QueueSpec, StartPosition, StreamSpec};
use crate::consumer::{Handler, HandlerError, RetryPolicy, run_queue};
use crate::envelope::Envelope;

/// Connects to the backend under test.
#[async_trait]
pub trait Connector: Send + Sync {
    /// Opens a new connection (a new client of the same engine). The cases call it
    /// again to simulate a consumer process that died and restarted.
    async fn connect(&self) -> Arc<dyn Bus>;
}

/// What a backend guarantees beyond the common contract.
#[derive(Debug, Clone, Copy)]
pub struct Features {
    /// A message whose member vanished (connection closed, lease expired) is
    /// delivered again to another member without any restart of the engine.
    pub redelivers_after_member_loss: bool,
    /// A nacked message comes back only after the requested delay.
    pub honours_nack_delay: bool,
    /// Stream subscriptions can start at a time.
    pub replays_from_time: bool,
    /// A message redelivered because its member vanished counts as a further
    /// attempt. Without it the attempt count starts again in the next member, so
    /// only the attempts made within one member lead to dead-lettering.
    pub counts_attempts_across_members: bool,
}

/// One case of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// [`publish_reaches_every_group`]
    PublishReachesEveryGroup,
    /// [`competing_members_share_the_queue`]
    CompetingMembersShareTheQueue,
    /// [`nack_redelivers`]
    NackRedelivers,
    /// [`unacked_message_is_redelivered`]
    UnackedMessageIsRedelivered,
    /// [`later_ack_keeps_earlier_message`]
    LaterAckKeepsEarlierMessage,
    /// [`acks_in_any_order_settle_every_message`]
    AcksInAnyOrderSettleEveryMessage,
    /// [`poison_message_is_dead_lettered`]
    PoisonMessageIsDeadLettered,
    /// [`stream_keeps_per_key_order`]
    StreamKeepsPerKeyOrder,
    /// [`stream_replays_from_start_offset_and_time`]
    StreamReplaysFromStartOffsetAndTime,
    /// [`stream_position_survives_reconnect`]
    StreamPositionSurvivesReconnect,
}

impl Case {
    /// Every case, in the order [`run_all`] runs them.
    pub const ALL: [Case; 10] = [
        Case::PublishReachesEveryGroup,
        Case::CompetingMembersShareTheQueue,
        Case::NackRedelivers,
        Case::UnackedMessageIsRedelivered,
        Case::LaterAckKeepsEarlierMessage,
        Case::AcksInAnyOrderSettleEveryMessage,
        Case::PoisonMessageIsDeadLettered,
        Case::StreamKeepsPerKeyOrder,
        Case::StreamReplaysFromStartOffsetAndTime,
        Case::StreamPositionSurvivesReconnect,
    ];
}

/// Runs one case against `connector`.
pub async fn run_case(case: Case, connector: &dyn Connector, features: Features) {
    match case {
        Case::PublishReachesEveryGroup => publish_reaches_every_group(connector).await,
        Case::CompetingMembersShareTheQueue => competing_members_share_the_queue(connector).await,
        Case::NackRedelivers => nack_redelivers(connector, features).await,
        Case::UnackedMessageIsRedelivered => {
            unacked_message_is_redelivered(connector, features).await;
        }
        Case::LaterAckKeepsEarlierMessage => {
            later_ack_keeps_earlier_message(connector, features).await;
        }
        Case::AcksInAnyOrderSettleEveryMessage => {
            acks_in_any_order_settle_every_message(connector).await;
        }
        Case::PoisonMessageIsDeadLettered => poison_message_is_dead_lettered(connector).await,
        Case::StreamKeepsPerKeyOrder => stream_keeps_per_key_order(connector).await,
        Case::StreamReplaysFromStartOffsetAndTime => {
            stream_replays_from_start_offset_and_time(connector, features).await;
        }
        Case::StreamPositionSurvivesReconnect => {
            stream_position_survives_reconnect(connector).await;
        }
    }
}

/// Runs every case, one after another.
pub async fn run_all(connector: &dyn Connector, features: Features) {
    for case in Case::ALL {
        run_case(case, connector, features).await;
    }
}

/// Declares one `#[tokio::test]` per [`Case`], each calling `$run(case).await`, where
/// `$run` is the backend's `async fn(Case)` that connects, calls [`run_case`] and
/// cleans up.
#[macro_export]
macro_rules! conformance_tests {
    ($run:path) => {
        $crate::conformance_tests!(@case $run, publish_reaches_every_group, PublishReachesEveryGroup);
        $crate::conformance_tests!(@case $run, competing_members_share_the_queue, CompetingMembersShareTheQueue);
        $crate::conformance_tests!(@case $run, nack_redelivers, NackRedelivers);
        $crate::conformance_tests!(@case $run, unacked_message_is_redelivered, UnackedMessageIsRedelivered);
        $crate::conformance_tests!(@case $run, later_ack_keeps_earlier_message, LaterAckKeepsEarlierMessage);
        $crate::conformance_tests!(@case $run, acks_in_any_order_settle_every_message, AcksInAnyOrderSettleEveryMessage);
        $crate::conformance_tests!(@case $run, poison_message_is_dead_lettered, PoisonMessageIsDeadLettered);
        $crate::conformance_tests!(@case $run, stream_keeps_per_key_order, StreamKeepsPerKeyOrder);
        $crate::conformance_tests!(@case $run, stream_replays_from_start_offset_and_time, StreamReplaysFromStartOffsetAndTime);
        $crate::conformance_tests!(@case $run, stream_position_survives_reconnect, StreamPositionSurvivesReconnect);
    };
    (@case $run:path, $name:ident, $case:ident) => {
        #[tokio::test]
        async fn $name() {
            $run($crate::conformance::Case::$case).await;
        }
    };
}

/// Names unique to one case.
struct Names {
    prefix: String,
}

impl Names {
    fn new() -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        Self {
            prefix: format!("conformance.{}", &id[id.len() - 12..]),
        }
    }

    fn event_type(&self) -> String {
        format!("{}.pinged", self.prefix)
    }

    fn pattern(&self) -> String {
        format!("{}.*", self.prefix)
    }

    fn group(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix.replace('.', "-"))
    }

    fn event(&self, subject: &str, n: u32) -> Envelope {
        Envelope {
            specversion: "1.0".to_owned(),
            id: uuid::Uuid::now_v7().to_string(),
            source: "/conformance".to_owned(),
            event_type: self.event_type(),
            subject: subject.to_owned(),
            time: rfc3339(now_millis()),
            datacontenttype: "application/json".to_owned(),
            dataschema: "https://tiffin.dev/contracts/conformance.v1.json".to_owned(),
            traceparent: None,
            tracestate: None,
            data: serde_json::json!({ "n": n }),
        }
    }

    fn queue(&self, group: &str) -> QueueSpec {
        QueueSpec {
            group: self.group(group),
            event_types: vec![self.pattern()],
            lease: Duration::from_secs(2),
        }
    }

    fn stream(&self, group: &str, start: StartPosition) -> StreamSpec {
        StreamSpec {
            group: self.group(group),
            event_types: vec![self.pattern()],
            start,
        }
    }
}

fn number(envelope: &Envelope) -> u32 {
    envelope.data["n"]
        .as_u64()
        .expect("conformance events carry n") as u32
}

/// Fetches from a queue until `count` messages arrived or 10 s passed, acking each.
async fn drain_queue(receiver: &mut Box<dyn crate::api::QueueReceiver>, count: usize) -> Vec<u32> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < count && tokio::time::Instant::now() < deadline {
        for message in receiver
            .fetch(count - seen.len(), Duration::from_millis(500))
            .await
            .expect("fetch")
        {
            seen.push(number(&message.envelope));
            message.ack().await.expect("ack");
        }
    }
    seen
}

/// Checks that every group bound to a type receives every event of it.
pub async fn publish_reaches_every_group(connector: &dyn Connector) {
    let names = Names::new();
    let bus = connector.connect().await;
    let mut kitchen = bus.queue(&names.queue("kitchen")).await.expect("subscribe");
    let mut mailer = bus.queue(&names.queue("mailer")).await.expect("subscribe");

    bus.publish(&[names.event("a", 1), names.event("b", 2)])
        .await
        .expect("confirmed publish");

    for (group, receiver) in [("kitchen", &mut kitchen), ("mailer", &mut mailer)] {
        let mut seen = drain_queue(receiver, 2).await;
        seen.sort_unstable();
        assert_eq!(seen, vec![1, 2], "group {group} gets every event");
        let extra = receiver
            .fetch(10, Duration::from_millis(300))
            .await
            .expect("fetch");
        assert!(extra.is_empty(), "group {group}: acked messages are gone");
    }
}

/// Members of one group split the messages: each goes to exactly one of them.
pub async fn competing_members_share_the_queue(connector: &dyn Connector) {
    let names = Names::new();
    let bus = connector.connect().await;
    let mut first = bus.queue(&names.queue("kitchen")).await.expect("subscribe");
    let mut second = connector
        .connect()
        .await
        .queue(&names.queue("kitchen"))
        .await
        .expect("subscribe");
    let events: Vec<Envelope> = (0..40).map(|n| names.event("k", n)).collect();
    bus.publish(&events).await.expect("publish");

    let (a, b) = tokio::join!(drain_queue(&mut first, 40), drain_queue(&mut second, 40));

    let all: Vec<u32> = a.iter().chain(&b).copied().collect();
    let unique: HashSet<u32> = all.iter().copied().collect();
    assert_eq!(
        all.len(),
        40,
        "every message delivered once (a: {}, b: {})",
        a.len(),
        b.len()
    );
    assert_eq!(unique.len(), 40, "no message went to both members");
}

/// Checks that a nacked message is delivered again, counted as a new attempt.
pub async fn nack_redelivers(connector: &dyn Connector, features: Features) {
    let names = Names::new();
    let bus = connector.connect().await;
    let mut queue = bus.queue(&names.queue("kitchen")).await.expect("subscribe");
    bus.publish(&[names.event("a", 1)]).await.expect("publish");

    let first = queue
        .fetch(1, Duration::from_secs(5))
        .await
        .expect("fetch")
        .remove(0);
    assert_eq!(first.attempt, 1);
    first
        .nack(Duration::from_millis(700), "busy")
        .await
        .expect("nack");
    if features.honours_nack_delay {
        let early = queue
            .fetch(1, Duration::from_millis(200))
            .await
            .expect("fetch");
        assert!(early.is_empty(), "redelivered before its delay");
    }
    let later = queue
        .fetch(1, Duration::from_secs(10))
        .await
        .expect("fetch");

    assert_eq!(later.len(), 1, "the nacked message came back");
    assert_eq!(later[0].attempt, 2);
    later.into_iter().next().unwrap().ack().await.expect("ack");
}

/// Returns how long a new member waits for a message whose member went away
/// without settling it.
fn redelivery_wait(features: Features) -> Duration {
    if features.redelivers_after_member_loss {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(5)
    }
}

/// Checks that a message whose member dies before acking reaches a member that
/// reconnects.
pub async fn unacked_message_is_redelivered(connector: &dyn Connector, features: Features) {
    let names = Names::new();
    let bus = connector.connect().await;
    let mut queue = bus.queue(&names.queue("kitchen")).await.expect("subscribe");
    bus.publish(&[names.event("a", 1)]).await.expect("publish");
    let taken = queue.fetch(1, Duration::from_secs(5)).await.expect("fetch");
    assert_eq!(taken.len(), 1);

    drop(taken);
    drop(queue);
    drop(bus);
    let wait = redelivery_wait(features);
    let bus = connector.connect().await;
    let mut queue = bus.queue(&names.queue("kitchen")).await.expect("subscribe");
    let again = queue.fetch(1, wait).await.expect("fetch");

    assert_eq!(again.len(), 1, "the message came back");
    assert_eq!(number(&again[0].envelope), 1);
    if features.counts_attempts_across_members {
        assert!(
            again[0].attempt >= 2,
            "counted as a redelivery, attempt {}",
            again[0].attempt
        );
    }
    again.into_iter().next().unwrap().ack().await.expect("ack");
}

/// Fetches until `count` messages arrived or 10 s passed, without settling them.
async fn take(
    receiver: &mut Box<dyn crate::api::QueueReceiver>,
    count: usize,
) -> Vec<QueueMessage> {
    let mut fetched = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fetched.len() < count && tokio::time::Instant::now() < deadline {
        let batch = receiver
            .fetch(count - fetched.len(), Duration::from_millis(500))
            .await
            .expect("fetch");
        fetched.extend(batch);
    }
    assert_eq!(fetched.len(), count, "every published message arrived");
    fetched
}

/// Checks that acking later deliveries does not settle an earlier one still being
/// handled: a backend that batches acks (a cumulative ack, a committed offset) must
/// not let them cover it. The unsettled message reaches the next member; the acked
/// ones may come back too, since redelivery is allowed.
pub async fn later_ack_keeps_earlier_message(connector: &dyn Connector, features: Features) {
    let names = Names::new();
    let bus = connector.connect().await;
    let mut queue = bus.queue(&names.queue("kitchen")).await.expect("subscribe");
    let events: Vec<Envelope> = (1..=3).map(|n| names.event("k", n)).collect();
    bus.publish(&events).await.expect("publish");
    let mut fetched = take(&mut queue, 3).await;
    let first = fetched.remove(0);
    let unsettled = number(&first.envelope);
    for message in fetched.into_iter().rev() {
        message.ack().await.expect("ack");
    }

    drop(first);
    drop(queue);
    drop(bus);
    let wait = redelivery_wait(features);
    let bus = connector.connect().await;
    let mut queue = bus.queue(&names.queue("kitchen")).await.expect("subscribe");
    let mut again = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while !again.contains(&unsettled) && tokio::time::Instant::now() < deadline {
        for message in queue
            .fetch(3, Duration::from_millis(500))
            .await
            .expect("fetch")
        {
            again.push(number(&message.envelope));
            message.ack().await.expect("ack");
        }
    }

    assert!(
        again.contains(&unsettled),
        "message {unsettled} was never settled and must come back, got {again:?}"
    );
    assert!(again.iter().all(|n| (1..=3).contains(n)), "got {again:?}");
}

/// Checks that messages acked in the reverse of their delivery order are all gone:
/// a backend that delays an ack until earlier deliveries settle must send it once
/// they do.
pub async fn acks_in_any_order_settle_every_message(connector: &dyn Connector) {
    let names = Names::new();
    let bus = connector.connect().await;
    let mut queue = bus.queue(&names.queue("kitchen")).await.expect("subscribe");
    let events: Vec<Envelope> = (1..=4).map(|n| names.event("k", n)).collect();
    bus.publish(&events).await.expect("publish");
    for message in take(&mut queue, 4).await.into_iter().rev() {
        message.ack().await.expect("ack");
    }
    // Acks travel asynchronously on some backends; let them reach the engine
    // before the connection goes.
    tokio::time::sleep(Duration::from_millis(300)).await;

    drop(queue);
    drop(bus);
    let bus = connector.connect().await;
    let mut queue = bus.queue(&names.queue("kitchen")).await.expect("subscribe");
    // Longer than the 2 s lease, after which an unacked message would come back.
    let again = queue.fetch(4, Duration::from_secs(3)).await.expect("fetch");

    let numbers: Vec<u32> = again.iter().map(|m| number(&m.envelope)).collect();
    assert!(numbers.is_empty(), "acked messages came back: {numbers:?}");
}

struct Recorder {
    seen: Mutex<Vec<u32>>,
    poison: u32,
    calls: AtomicU32,
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let n = number(event);
        if n == self.poison {
            return Err(HandlerError::transient(anyhow::anyhow!("poison {n}")));
        }
        self.seen.lock().expect("not poisoned").push(n);
        Ok(())
    }
}

/// A handler that always fails moves its message to the dead letters after the
/// bounded attempts, while the other messages keep flowing.
pub async fn poison_message_is_dead_lettered(connector: &dyn Connector) {
    let names = Names::new();
    let bus = connector.connect().await;
    let receiver = bus.queue(&names.queue("kitchen")).await.expect("subscribe");
    let recorder = Arc::new(Recorder {
        seen: Mutex::new(Vec::new()),
        poison: 3,
        calls: AtomicU32::new(0),
    });
    let policy = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        multiplier: 2.0,
        handler_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(5),
    };
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(run_queue(
        "conformance",
        receiver,
        recorder.clone(),
        policy,
        4,
        stop.clone(),
    ));

    bus.publish(&(1..=6).map(|n| names.event("k", n)).collect::<Vec<_>>())
        .await
        .expect("publish");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while recorder.seen.lock().expect("not poisoned").len() < 5
        || recorder.calls.load(Ordering::SeqCst) < 8
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the good messages were not all handled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    consumer.await.expect("consumer ends");

    let mut seen = recorder.seen.lock().expect("not poisoned").clone();
    seen.sort_unstable();
    assert_eq!(seen, vec![1, 2, 4, 5, 6], "the other messages were handled");
    assert_eq!(
        recorder.calls.load(Ordering::SeqCst),
        5 + 3,
        "the poison message was tried three times"
    );
    let mut queue = bus.queue(&names.queue("kitchen")).await.expect("subscribe");
    let left = queue
        .fetch(10, Duration::from_secs(1))
        .await
        .expect("fetch");
    assert!(left.is_empty(), "the poison message left the queue");
}

async fn read_stream(
    bus: &Arc<dyn Bus>,
    spec: &StreamSpec,
    count: usize,
) -> Vec<(u64, u32, String)> {
    let mut reader = bus.stream(spec).await.expect("subscribe");
    let mut read = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while read.len() < count && tokio::time::Instant::now() < deadline {
        for message in reader
            .fetch(256, Duration::from_millis(300))
            .await
            .expect("fetch")
        {
            read.push((
                message.offset,
                number(&message.envelope),
                message.envelope.subject.clone(),
            ));
        }
    }
    read
}

/// Events of one subject reach a stream reader in publish order.
pub async fn stream_keeps_per_key_order(connector: &dyn Connector) {
    let names = Names::new();
    let bus = connector.connect().await;
    let mut events = Vec::new();
    for n in 0..60 {
        events.push(names.event(&format!("order-{}", n % 3), n));
    }
    for chunk in events.chunks(7) {
        bus.publish(chunk).await.expect("publish");
    }

    let read = read_stream(
        &bus,
        &names.stream("analytics", StartPosition::Beginning),
        60,
    )
    .await;

    assert_eq!(read.len(), 60, "every event read once");
    for key in ["order-0", "order-1", "order-2"] {
        let of_key: Vec<u32> = read
            .iter()
            .filter(|(_, _, s)| s == key)
            .map(|(_, n, _)| *n)
            .collect();
        let mut sorted = of_key.clone();
        sorted.sort_unstable();
        assert_eq!(of_key, sorted, "events of {key} in publish order");
    }
}

/// Checks that a new group reads from the start, after an offset, or from a time.
pub async fn stream_replays_from_start_offset_and_time(
    connector: &dyn Connector,
    features: Features,
) {
    let names = Names::new();
    let bus = connector.connect().await;
    bus.publish(&(0..5).map(|n| names.event("k", n)).collect::<Vec<_>>())
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = now_millis();
    tokio::time::sleep(Duration::from_millis(50)).await;
    bus.publish(&[names.event("k", 5)]).await.expect("publish");

    let from_start = read_stream(&bus, &names.stream("start", StartPosition::Beginning), 6).await;
    let numbers: Vec<u32> = from_start.iter().map(|(_, n, _)| *n).collect();
    assert_eq!(numbers, vec![0, 1, 2, 3, 4, 5], "replay from the start");

    let third = from_start[2].0;
    let after = read_stream(
        &bus,
        &names.stream("offset", StartPosition::After(third)),
        3,
    )
    .await;
    let numbers: Vec<u32> = after.iter().map(|(_, n, _)| *n).collect();
    assert_eq!(numbers, vec![3, 4, 5], "replay after an offset");

    if features.replays_from_time {
        let recent = read_stream(&bus, &names.stream("time", StartPosition::Time(later)), 1).await;
        let numbers: Vec<u32> = recent.iter().map(|(_, n, _)| *n).collect();
        assert_eq!(numbers, vec![5], "replay from a time");
    }
}

/// Checks that a group that committed an offset resumes after it on a new
/// connection.
pub async fn stream_position_survives_reconnect(connector: &dyn Connector) {
    let names = Names::new();
    let bus = connector.connect().await;
    bus.publish(&(0..10).map(|n| names.event("k", n)).collect::<Vec<_>>())
        .await
        .expect("publish");
    let spec = names.stream("analytics", StartPosition::Beginning);
    let mut reader = bus.stream(&spec).await.expect("subscribe");
    let mut read = Vec::new();
    while read.len() < 4 {
        read.extend(
            reader
                .fetch(4 - read.len(), Duration::from_secs(2))
                .await
                .expect("fetch"),
        );
    }
    reader.commit(read[3].offset).await.expect("commit");
    drop(reader);
    drop(bus);

    let bus = connector.connect().await;
    let mut reader = bus.stream(&spec).await.expect("subscribe");
    let next = reader
        .fetch(1, Duration::from_secs(5))
        .await
        .expect("fetch");

    assert_eq!(next.len(), 1);
    assert_eq!(
        number(&next[0].envelope),
        4,
        "resumed after the committed offset"
    );
}
