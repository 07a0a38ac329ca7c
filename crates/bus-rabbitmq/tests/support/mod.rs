//! A throwaway RabbitMQ virtual host per test, so tests share the machine's broker
//! without seeing each other's queues.

use std::process::Command;

use tiffin_bus_rabbitmq::{Options, RabbitBus};

/// How to start the broker, for the skip and failure messages.
const HOW_TO_START: &str = "start it with `rabbitmq-server -detached` (install it with `apt-get install -y rabbitmq-server`)";

/// A virtual host that is deleted when dropped.
pub(crate) struct TestVhost {
    pub(crate) name: String,
    pub(crate) url: String,
}

impl TestVhost {
    /// Creates a virtual host for one test, or returns `None` (after printing why)
    /// when the broker is not reachable and CI is not "true".
    pub(crate) async fn create() -> Option<Self> {
        let base = std::env::var("TIFFIN_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
        // A bare connection, because the bus would declare its topology in the
        // shared virtual host.
        let probe = lapin::Connection::connect(&base, lapin::ConnectionProperties::default()).await;
        if let Err(error) = probe {
            let message = format!(
                "rabbitmq not reachable at {}: {HOW_TO_START}",
                tiffin_runtime::db::redact(&base)
            );
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{message}: {error}");
            }
            println!("skipped: {message}");
            return None;
        }

        let id = uuid::Uuid::now_v7().simple().to_string();
        let name = format!("tiffin-test-{}", &id[id.len() - 16..]);
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        let (prefix, _) = base
            .rsplit_once('/')
            .expect("an AMQP URL has a path with the virtual host");
        let url = format!("{prefix}/{name}");
        Some(Self { name, url })
    }

    /// Connects a new bus to this virtual host.
    #[allow(dead_code, reason = "the classic-queue tests always pass options")]
    pub(crate) async fn connect(&self) -> RabbitBus {
        self.connect_with(Options::default()).await
    }

    /// Connects a new bus to this virtual host with `options`.
    pub(crate) async fn connect_with(&self, options: Options) -> RabbitBus {
        tiffin_bus_rabbitmq::connect(&self.url, options)
            .await
            .expect("connects to the test virtual host")
    }

    /// Makes the broker close every connection to this virtual host, as a network
    /// drop or a broker shutdown would.
    #[allow(dead_code, reason = "only some test binaries close connections")]
    pub(crate) fn close_connections(&self) {
        rabbitmqctl(&[
            "close_all_connections",
            "--vhost",
            &self.name,
            "closed by a reconnect test",
        ]);
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        // Best effort: no other test reads the queues of a leftover virtual host.
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .output();
    }
}

/// Runs `rabbitmqctl` and panics with its output when it fails.
pub(crate) fn rabbitmqctl(args: &[&str]) {
    let output = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (install rabbitmq-server)");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
