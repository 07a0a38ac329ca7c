//! The payments service over real gRPC on 127.0.0.1, with a SQLite file in a
//! temporary directory per test, and the main path once more on a fresh PostgreSQL
//! database. Set `TEST_LOG=1` to see the service's logs.

use std::time::{Duration, Instant};

use tiffin_payments::{EntryKind, ProcessorSettings, ReferenceCount, Reports, Service, Settings};
use tiffin_proto::payments::v1::payments_client::PaymentsClient;
use tiffin_proto::payments::v1::{
    AuthorizeRequest, CaptureRequest, GetPaymentRequest, Payment, PaymentStatus, VoidRequest,
};
use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::Database;
use tiffin_runtime::telemetry::{self, LogFormat};
use tiffin_runtime::testing::TestDatabase;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

struct TestApp {
    client: PaymentsClient<Channel>,
    reports: Reports,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    async fn spawn(processor: ProcessorSettings) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let database_url = Database::sqlite_url(dir.path(), "payments");
        Self::spawn_on(processor, database_url, dir).await
    }

    /// Starts the service on the database at `database_url`; `dir` lives as long as
    /// the service.
    async fn spawn_on(
        processor: ProcessorSettings,
        database_url: String,
        dir: tempfile::TempDir,
    ) -> Self {
        if std::env::var_os("TEST_LOG").is_some() {
            telemetry::init(LogFormat::Pretty, "debug", std::io::stdout);
        }
        let settings = Settings {
            grpc_addr: "127.0.0.1:0".parse().expect("valid address"),
            database_url,
            pool: tiffin_runtime::db::PoolSettings::default(),
            processor,
        };
        let service = Service::build(settings).await.expect("service builds");
        let addr = service.grpc_addr();
        let reports = service.reports();

        let shutdown = CancellationToken::new();
        let server = tokio::spawn(service.run(shutdown.clone()));
        let client = PaymentsClient::connect(format!("http://{addr}"))
            .await
            .expect("client connects");

        Self {
            client,
            reports,
            shutdown,
            server,
            _dir: dir,
        }
    }

    async fn start() -> Self {
        Self::spawn(ProcessorSettings::default()).await
    }

    async fn authorize(&self, request: AuthorizeRequest) -> Result<Payment, Status> {
        let response = self.client.clone().authorize(request).await?;
        Ok(response.into_inner())
    }

    async fn capture(&self, payment_id: &str, amount_cents: i64) -> Result<Payment, Status> {
        let request = CaptureRequest {
            payment_id: payment_id.to_owned(),
            amount_cents,
        };
        let response = self.client.clone().capture(request).await?;
        Ok(response.into_inner())
    }

    async fn void(&self, payment_id: &str) -> Result<Payment, Status> {
        let request = VoidRequest {
            payment_id: payment_id.to_owned(),
            reason: "order cancelled".to_owned(),
        };
        let response = self.client.clone().void(request).await?;
        Ok(response.into_inner())
    }

    async fn get(&self, payment_id: &str) -> Result<Payment, Status> {
        let request = GetPaymentRequest {
            payment_id: payment_id.to_owned(),
        };
        let response = self.client.clone().get_payment(request).await?;
        Ok(response.into_inner())
    }

    /// Authorizes a fresh payment of 2,500 cents and expects it to succeed.
    async fn authorized_payment(&self) -> Payment {
        self.authorize(authorize_request("key-authorized", 2_500))
            .await
            .expect("authorization succeeds")
    }

    async fn entry_kinds(&self, payment_id: &str) -> Vec<EntryKind> {
        let entries = self
            .reports
            .ledger_entries(payment_id)
            .await
            .expect("ledger reads");
        entries.into_iter().map(|entry| entry.kind).collect()
    }

    /// Cancels the server and waits until `run` returns, which includes detached
    /// authorizations. The database stays readable through `reports`.
    async fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        (&mut self.server)
            .await
            .expect("server task does not panic")
    }
}

fn authorize_request(key: &str, amount_cents: i64) -> AuthorizeRequest {
    AuthorizeRequest {
        idempotency_key: key.to_owned(),
        customer_id: "customer-1".to_owned(),
        reference: "order-1".to_owned(),
        amount_cents,
        currency: "EUR".to_owned(),
    }
}

fn status_of(payment: &Payment) -> PaymentStatus {
    PaymentStatus::try_from(payment.status).expect("known status")
}

// === Authorize ===

#[tokio::test]
async fn authorize_then_get() {
    let app = TestApp::start().await;

    let authorized = app
        .authorize(authorize_request("key-1", 2_500))
        .await
        .unwrap();
    let fetched = app.get(&authorized.payment_id).await.unwrap();

    assert_eq!(status_of(&authorized), PaymentStatus::Authorized);
    assert_eq!(authorized.amount_cents, 2_500);
    assert_eq!(authorized.currency, "EUR");
    assert_eq!(authorized.reference, "order-1");
    assert_eq!(authorized.captured_cents, 0);
    assert_eq!(authorized.decline_reason, "");
    assert_eq!(fetched, authorized);
}

#[tokio::test]
async fn same_key_stores_one_payment() {
    let app = TestApp::start().await;

    let first = app
        .authorize(authorize_request("key-1", 2_500))
        .await
        .unwrap();
    let second = app
        .authorize(authorize_request("key-1", 2_500))
        .await
        .unwrap();

    assert_eq!(second, first);
    assert_eq!(app.reports.count_by_status().await.unwrap().total(), 1);
    assert_eq!(
        app.entry_kinds(&first.payment_id).await,
        [EntryKind::Authorize]
    );
}

#[tokio::test]
async fn same_key_other_amount_returns_first() {
    let app = TestApp::start().await;
    let first = app
        .authorize(authorize_request("key-1", 2_500))
        .await
        .unwrap();

    let second = app
        .authorize(authorize_request("key-1", 9_999))
        .await
        .unwrap();

    assert_eq!(second, first);
    assert_eq!(second.amount_cents, 2_500);
}

/// Sends `calls` authorizations with the same key at once and returns their
/// payments.
async fn authorize_concurrently(app: &TestApp, calls: usize) -> Vec<Payment> {
    let mut pending = tokio::task::JoinSet::new();
    for _ in 0..calls {
        let client = app.client.clone();
        pending.spawn(async move {
            client
                .clone()
                .authorize(authorize_request("key-1", 2_500))
                .await
        });
    }
    pending
        .join_all()
        .await
        .into_iter()
        .map(|result| result.expect("authorization succeeds").into_inner())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_same_key_stores_one_payment() {
    let app = TestApp::start().await;
    let payments = authorize_concurrently(&app, 8).await;

    assert!(
        payments.iter().all(|payment| payment == &payments[0]),
        "{payments:?}"
    );
    assert_eq!(app.reports.count_by_status().await.unwrap().total(), 1);
    assert_eq!(
        app.entry_kinds(&payments[0].payment_id).await,
        [EntryKind::Authorize]
    );
}

#[tokio::test]
async fn declined_card_is_recorded() {
    let app = TestApp::spawn(ProcessorSettings {
        decline_rate: 1.0,
        ..ProcessorSettings::default()
    })
    .await;

    let first = app
        .authorize(authorize_request("key-1", 2_500))
        .await
        .unwrap();
    let retry = app
        .authorize(authorize_request("key-1", 2_500))
        .await
        .unwrap();

    assert_eq!(status_of(&first), PaymentStatus::Declined);
    assert!(
        ["insufficient_funds", "card_declined"].contains(&first.decline_reason.as_str()),
        "unexpected reason {:?}",
        first.decline_reason
    );
    assert_eq!(retry, first);
    assert_eq!(
        app.entry_kinds(&first.payment_id).await,
        [EntryKind::Decline]
    );
}

#[tokio::test]
async fn processor_failure_stores_nothing() {
    let app = TestApp::spawn(ProcessorSettings {
        error_rate: 1.0,
        ..ProcessorSettings::default()
    })
    .await;

    let status = app
        .authorize(authorize_request("key-1", 2_500))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("idempotency_key"), "{status:?}");
    assert_eq!(app.reports.count_by_status().await.unwrap().total(), 0);
}

#[tokio::test]
async fn invalid_authorize_names_field() {
    let app = TestApp::start().await;
    let valid = authorize_request("key-1", 2_500);
    let cases = [
        (
            "empty key",
            AuthorizeRequest {
                idempotency_key: String::new(),
                ..valid.clone()
            },
            "idempotency_key",
        ),
        (
            "long key",
            AuthorizeRequest {
                idempotency_key: "k".repeat(201),
                ..valid.clone()
            },
            "idempotency_key",
        ),
        (
            "empty customer",
            AuthorizeRequest {
                customer_id: String::new(),
                ..valid.clone()
            },
            "customer_id",
        ),
        (
            "zero amount",
            AuthorizeRequest {
                amount_cents: 0,
                ..valid.clone()
            },
            "amount_cents",
        ),
        (
            "negative amount",
            AuthorizeRequest {
                amount_cents: -100,
                ..valid.clone()
            },
            "amount_cents",
        ),
        (
            "amount over limit",
            AuthorizeRequest {
                amount_cents: 10_000_001,
                ..valid.clone()
            },
            "amount_cents",
        ),
        (
            "lowercase currency",
            AuthorizeRequest {
                currency: "eur".into(),
                ..valid.clone()
            },
            "currency",
        ),
        (
            "four-letter currency",
            AuthorizeRequest {
                currency: "EURO".into(),
                ..valid.clone()
            },
            "currency",
        ),
        (
            "empty currency",
            AuthorizeRequest {
                currency: String::new(),
                ..valid.clone()
            },
            "currency",
        ),
    ];

    for (case, request, field) in cases {
        let status = app.authorize(request).await.unwrap_err();

        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(status.message().contains(field), "{case}: {status:?}");
    }
    assert_eq!(app.reports.count_by_status().await.unwrap().total(), 0);
}

#[tokio::test]
async fn amount_limit_is_accepted() {
    let app = TestApp::start().await;

    let payment = app
        .authorize(authorize_request("key-1", 10_000_000))
        .await
        .unwrap();

    assert_eq!(status_of(&payment), PaymentStatus::Authorized);
}

// === Deadlines ===

// NOTE: tonic's client channel enforces the same `grpc-timeout` as the server, so
// this test shows that the call ends at the deadline but not which side ended it.
// The server side is tonic's `GrpcTimeout` layer, which `Server` puts on every
// connection (tonic 0.14).
#[tokio::test]
async fn short_deadline_then_retry_stores_one() {
    let latency = Duration::from_secs(1);
    let mut app = TestApp::spawn(ProcessorSettings {
        latency,
        latency_jitter: Duration::ZERO,
        ..ProcessorSettings::default()
    })
    .await;
    let mut hurried = Request::new(authorize_request("key-1", 2_500));
    hurried.set_timeout(Duration::from_millis(50));
    let mut patient = Request::new(authorize_request("key-1", 2_500));
    patient.set_timeout(Duration::from_secs(10));

    let started = Instant::now();
    let timed_out = app.client.clone().authorize(hurried).await.unwrap_err();
    let waited = started.elapsed();
    let retried = app
        .client
        .clone()
        .authorize(patient)
        .await
        .unwrap()
        .into_inner();
    app.stop().await.unwrap();

    assert!(
        matches!(timed_out.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{timed_out:?}"
    );
    assert!(
        waited < latency,
        "the call waited {waited:?}, past the deadline"
    );
    assert_eq!(status_of(&retried), PaymentStatus::Authorized);
    assert_eq!(app.reports.count_by_status().await.unwrap().total(), 1);
    assert_eq!(
        app.entry_kinds(&retried.payment_id).await,
        [EntryKind::Authorize]
    );
}

// === Capture and void ===

#[tokio::test]
async fn capture_authorized_payment() {
    let app = TestApp::start().await;
    let payment = app.authorized_payment().await;

    let captured = app.capture(&payment.payment_id, 2_000).await.unwrap();

    assert_eq!(status_of(&captured), PaymentStatus::Captured);
    assert_eq!(captured.captured_cents, 2_000);
    assert_eq!(
        app.entry_kinds(&payment.payment_id).await,
        [EntryKind::Authorize, EntryKind::Capture]
    );
}

#[tokio::test]
async fn capture_twice_returns_unchanged() {
    let app = TestApp::start().await;
    let payment = app.authorized_payment().await;
    let first = app.capture(&payment.payment_id, 2_000).await.unwrap();

    let second = app.capture(&payment.payment_id, 2_500).await.unwrap();

    assert_eq!(second, first);
    assert_eq!(
        app.entry_kinds(&payment.payment_id).await,
        [EntryKind::Authorize, EntryKind::Capture]
    );
}

#[tokio::test]
async fn capture_over_authorized_is_rejected() {
    let app = TestApp::start().await;
    let payment = app.authorized_payment().await;

    let status = app.capture(&payment.payment_id, 2_501).await.unwrap_err();

    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("amount_cents"), "{status:?}");
    assert_eq!(
        status_of(&app.get(&payment.payment_id).await.unwrap()),
        PaymentStatus::Authorized
    );
}

#[tokio::test]
async fn capture_voided_fails_precondition() {
    let app = TestApp::start().await;
    let payment = app.authorized_payment().await;
    app.void(&payment.payment_id).await.unwrap();

    let status = app.capture(&payment.payment_id, 2_500).await.unwrap_err();

    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("VOIDED"), "{status:?}");
}

#[tokio::test]
async fn capture_declined_fails_precondition() {
    let app = TestApp::spawn(ProcessorSettings {
        decline_rate: 1.0,
        ..ProcessorSettings::default()
    })
    .await;
    let payment = app
        .authorize(authorize_request("key-1", 2_500))
        .await
        .unwrap();

    let status = app.capture(&payment.payment_id, 2_500).await.unwrap_err();

    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("DECLINED"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_captures_write_one_entry() {
    let app = TestApp::start().await;
    let payment = app.authorized_payment().await;
    let mut captures = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let client = app.client.clone();
        let request = CaptureRequest {
            payment_id: payment.payment_id.clone(),
            amount_cents: 2_500,
        };
        captures.spawn(async move { client.clone().capture(request).await });
    }

    let results = captures.join_all().await;

    for result in results {
        let captured = result.expect("capture succeeds").into_inner();
        assert_eq!(status_of(&captured), PaymentStatus::Captured);
    }
    assert_eq!(
        app.entry_kinds(&payment.payment_id).await,
        [EntryKind::Authorize, EntryKind::Capture]
    );
}

#[tokio::test]
async fn void_authorized_payment() {
    let app = TestApp::start().await;
    let payment = app.authorized_payment().await;

    let voided = app.void(&payment.payment_id).await.unwrap();

    assert_eq!(status_of(&voided), PaymentStatus::Voided);
    assert_eq!(voided.captured_cents, 0);
    assert_eq!(
        app.entry_kinds(&payment.payment_id).await,
        [EntryKind::Authorize, EntryKind::Void]
    );
}

#[tokio::test]
async fn void_twice_returns_unchanged() {
    let app = TestApp::start().await;
    let payment = app.authorized_payment().await;
    let first = app.void(&payment.payment_id).await.unwrap();

    let second = app.void(&payment.payment_id).await.unwrap();

    assert_eq!(second, first);
    assert_eq!(
        app.entry_kinds(&payment.payment_id).await,
        [EntryKind::Authorize, EntryKind::Void]
    );
}

#[tokio::test]
async fn void_captured_fails_precondition() {
    let app = TestApp::start().await;
    let payment = app.authorized_payment().await;
    app.capture(&payment.payment_id, 2_500).await.unwrap();

    let status = app.void(&payment.payment_id).await.unwrap_err();

    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("CAPTURED"), "{status:?}");
}

#[tokio::test]
async fn void_declined_fails_precondition() {
    let app = TestApp::spawn(ProcessorSettings {
        decline_rate: 1.0,
        ..ProcessorSettings::default()
    })
    .await;
    let payment = app
        .authorize(authorize_request("key-1", 2_500))
        .await
        .unwrap();

    let status = app.void(&payment.payment_id).await.unwrap_err();

    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("DECLINED"), "{status:?}");
}

#[tokio::test]
async fn unknown_payment_is_not_found() {
    let app = TestApp::start().await;

    let get = app.get("no-such-payment").await.unwrap_err();
    let capture = app.capture("no-such-payment", 100).await.unwrap_err();
    let void = app.void("no-such-payment").await.unwrap_err();

    for (rpc, status) in [("get", get), ("capture", capture), ("void", void)] {
        assert_eq!(status.code(), Code::NotFound, "{rpc}: {status:?}");
        assert!(
            status.message().contains("no-such-payment"),
            "{rpc}: {status:?}"
        );
    }
}

#[tokio::test]
async fn empty_payment_id_names_field() {
    let app = TestApp::start().await;

    let status = app.get("").await.unwrap_err();

    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("payment_id"), "{status:?}");
}

// === Reports, settings and lifecycle ===

#[tokio::test]
async fn reports_find_duplicate_references() {
    let app = TestApp::start().await;
    app.authorize(authorize_request("key-1", 2_500))
        .await
        .unwrap();
    app.authorize(authorize_request("key-2", 2_500))
        .await
        .unwrap();
    let single = AuthorizeRequest {
        reference: "order-2".to_owned(),
        ..authorize_request("key-3", 2_500)
    };
    app.authorize(single).await.unwrap();

    let duplicates = app.reports.duplicate_authorizations().await.unwrap();
    let counts = app.reports.count_by_status().await.unwrap();

    assert_eq!(
        duplicates,
        [ReferenceCount {
            reference: "order-1".to_owned(),
            authorizations: 2
        }]
    );
    assert_eq!(counts.authorized, 3);
}

#[tokio::test]
async fn rate_out_of_range_fails_build() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        database_url: Database::sqlite_url(dir.path(), "payments"),
        pool: tiffin_runtime::db::PoolSettings::default(),
        processor: ProcessorSettings {
            decline_rate: 1.5,
            ..ProcessorSettings::default()
        },
    };

    let error = Service::build(settings).await.unwrap_err();

    assert!(
        error.to_string().contains("processor.decline_rate"),
        "{error:#}"
    );
}

#[tokio::test]
async fn traceparent_is_accepted() {
    let app = TestApp::start().await;
    let mut request = Request::new(authorize_request("key-1", 2_500));
    request.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );

    let payment = app
        .client
        .clone()
        .authorize(request)
        .await
        .unwrap()
        .into_inner();

    assert_eq!(status_of(&payment), PaymentStatus::Authorized);
}

#[tokio::test]
async fn shutdown_stops_run() {
    let mut app = TestApp::start().await;
    app.authorized_payment().await;

    let stopped = tokio::time::timeout(Duration::from_secs(10), app.stop()).await;

    assert!(matches!(stopped, Ok(Ok(()))), "{stopped:?}");
}

#[tokio::test]
async fn postgres_authorize_then_capture() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut app = TestApp::spawn_on(ProcessorSettings::default(), db.url().to_owned(), dir).await;
    let payment = app.authorized_payment().await;

    let captured = app.capture(&payment.payment_id, 2_000).await.unwrap();

    assert_eq!(status_of(&captured), PaymentStatus::Captured);
    assert_eq!(
        app.entry_kinds(&payment.payment_id).await,
        [EntryKind::Authorize, EntryKind::Capture]
    );
    app.stop().await.expect("service stops cleanly");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_same_key_one_entry() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut app = TestApp::spawn_on(ProcessorSettings::default(), db.url().to_owned(), dir).await;
    let payments = authorize_concurrently(&app, 8).await;

    assert!(
        payments.iter().all(|payment| payment == &payments[0]),
        "{payments:?}"
    );
    assert_eq!(app.reports.count_by_status().await.unwrap().total(), 1);
    assert_eq!(
        app.entry_kinds(&payments[0].payment_id).await,
        [EntryKind::Authorize]
    );
    app.stop().await.expect("service stops cleanly");
    db.close().await;
}

#[tokio::test]
async fn postgres_declined_card_is_recorded() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let processor = ProcessorSettings {
        decline_rate: 1.0,
        ..ProcessorSettings::default()
    };
    let mut app = TestApp::spawn_on(processor, db.url().to_owned(), dir).await;

    let first = app
        .authorize(authorize_request("key-1", 2_500))
        .await
        .unwrap();
    let retry = app
        .authorize(authorize_request("key-1", 2_500))
        .await
        .unwrap();

    assert_eq!(status_of(&first), PaymentStatus::Declined);
    assert_eq!(retry, first);
    assert_eq!(
        app.entry_kinds(&first.payment_id).await,
        [EntryKind::Decline]
    );
    app.stop().await.expect("service stops cleanly");
    db.close().await;
}
