//! The whole system on Kafka, and the distributed topology on PostgreSQL through a
//! restart of the server and with two replicas of each worker service.

use std::time::Duration;

use crate::brokers::{Distributed, RABBITMQ, Vhost, engine_available, replay_and_audit};
use crate::helpers::{TestSystem, count_rows};
use crate::postgres::{POSTGRES, TestDatabases, admin};

const KAFKA_HINT: &str = "tansu broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/";

/// A Kafka topic for one test, deleted on drop, also when the test fails.
struct KafkaTopic(tiffin_bus_kafka::KafkaOptions);

impl KafkaTopic {
    fn new() -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        Self(tiffin_bus_kafka::KafkaOptions {
            topic: format!("tiffin-e2e.{}", &id[id.len() - 12..]),
            ..Default::default()
        })
    }

    fn url(&self) -> String {
        format!("kafka://127.0.0.1:9092?topic={}", self.0.topic)
    }
}

impl Drop for KafkaTopic {
    fn drop(&mut self) {
        // Drop cannot await, so the deletion runs on a thread with a runtime of its
        // own. A failure is ignored: the name is unique to the test, so a topic left
        // behind disturbs no other test.
        let options = self.0.clone();
        let deleted = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(bus) = tiffin_bus_kafka::connect("127.0.0.1:9092", options).await {
                    let _ = bus.delete_topics().await;
                }
            });
        });
        let _ = deleted.join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queues_on_rabbitmq_stream_on_kafka() {
    let _shared = RABBITMQ.read().await;
    let rabbitmq =
        engine_available("RabbitMQ", "127.0.0.1:5672", "rabbitmq-server -detached").await;
    let kafka = engine_available("Kafka", "127.0.0.1:9092", KAFKA_HINT).await;
    if !(rabbitmq && kafka) {
        return;
    }
    let vhost = Vhost::create();
    let topic = KafkaTopic::new();
    let (queue_url, stream_url) = (vhost.url(), topic.url());
    let system = TestSystem::start_with(|settings| {
        settings.queue_bus = queue_url.clone();
        settings.stream_bus = stream_url.clone();
        settings.reject_rate = 0.1;
    })
    .await;

    replay_and_audit(&system).await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_system_on_kafka() {
    if !engine_available("Kafka", "127.0.0.1:9092", KAFKA_HINT).await {
        return;
    }
    let topic = KafkaTopic::new();
    let url = topic.url();
    let system = TestSystem::start_with(|settings| {
        settings.queue_bus = url.clone();
        settings.stream_bus = url.clone();
    })
    .await;

    replay_and_audit(&system).await;
    system.stop().await;
}

/// Returns fresh per-service databases when PostgreSQL and RabbitMQ are both
/// reachable. Otherwise prints why the test is skipped and returns `None`; under
/// CI a missing engine fails the test instead.
async fn postgres_and_rabbitmq() -> Option<TestDatabases> {
    let (server, _admin) = match admin().await {
        Ok(found) => found,
        Err(reason) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("PostgreSQL is required on CI: {reason}; .ci/run starts it")
        }
        Err(reason) => {
            eprintln!("skipped: PostgreSQL is not available: {reason}");
            return None;
        }
    };
    if !engine_available("RabbitMQ", "127.0.0.1:5672", "rabbitmq-server -detached").await {
        return None;
    }
    Some(TestDatabases::new(&server))
}

/// Restarts the machine's PostgreSQL cluster, the way `.ci/run` started it.
fn restart_postgres() -> Result<(), String> {
    let versions = std::fs::read_dir("/etc/postgresql")
        .map_err(|error| format!("no /etc/postgresql ({error})"))?;
    let version = versions
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .max()
        .ok_or("no cluster under /etc/postgresql")?;
    let status = std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|error| format!("pg_ctlcluster did not run: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("pg_ctlcluster {version} main restart failed"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_survives_postgres_restart() {
    let _exclusive = POSTGRES.write().await;
    let _shared = RABBITMQ.read().await;
    let Some(test_databases) = postgres_and_rabbitmq().await else {
        return;
    };
    let base = test_databases.base_url();
    let vhost = Vhost::create();
    let dir = tempfile::tempdir().unwrap();
    let system = Distributed::start(
        dir.path(),
        &vhost.url(),
        &["--database", &base],
        "pg-restart@test.tiffin.dev",
    )
    .await;
    let mut orders = system.place(10, "before").await;

    if let Err(reason) = restart_postgres() {
        system.cluster.stop().await;
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "cannot restart PostgreSQL: {reason}"
        );
        eprintln!("skipped: cannot restart PostgreSQL: {reason}");
        return;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    orders.extend(system.place(10, "after").await);
    system.finish(&orders, "the PostgreSQL restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_replicas_double_nothing() {
    let _shared = POSTGRES.read().await;
    let _rabbitmq = RABBITMQ.read().await;
    let Some(test_databases) = postgres_and_rabbitmq().await else {
        return;
    };
    let base = test_databases.base_url();
    let vhost = Vhost::create();
    let dir = tempfile::tempdir().unwrap();
    let mut system = Distributed::start(
        dir.path(),
        &vhost.url(),
        &["--database", &base],
        "replicas@test.tiffin.dev",
    )
    .await;
    let databases = system.cluster.databases().clone();
    for service in [
        "orders",
        "kitchen",
        "delivery",
        "notifications",
        "analytics",
    ] {
        system
            .cluster
            .add_replica(service)
            .unwrap_or_else(|error| panic!("second {service} starts: {error:#}"));
    }
    // The replicas join their groups while the first orders are under way.
    let orders = system.place(20, "replicas").await;
    system
        .cluster
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("every process, replicas included, is still running");

    system.finish(&orders, "two replicas of each worker").await;
    let tickets = count_rows(databases.clone(), "kitchen", "SELECT COUNT(*) FROM tickets").await;
    let deliveries = count_rows(
        databases.clone(),
        "delivery",
        "SELECT COUNT(*) FROM deliveries",
    )
    .await;
    let analytics = count_rows(
        databases.clone(),
        "analytics",
        "SELECT COUNT(*) FROM order_facts",
    )
    .await;

    assert_eq!(tickets, 20, "one ticket per order");
    assert_eq!(deliveries, 20, "one delivery per order");
    assert_eq!(analytics, 20, "analytics counted each order once");
}
