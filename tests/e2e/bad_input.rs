//! Every kind of bad request gets a problem document with the right status and a
//! detail naming the field, and leaves nothing stored or charged.

use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tiffin_runtime::token::{Claims, ISSUER, Role};

use crate::helpers::{TestSystem, count_rows, order_body};

/// The PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410), followed by the seed.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn ed25519_token(seed: &[u8; 32], kid: &str, claims: &Claims) -> String {
    let mut der = PKCS8_PREFIX.to_vec();
    der.extend_from_slice(seed);
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&der)).unwrap()
}

fn claims(sub: &str, exp_offset_secs: i64) -> Claims {
    let now = tiffin_runtime::time::now_millis() / 1000;
    Claims {
        sub: sub.to_owned(),
        role: Role::Customer,
        exp: u64::try_from(now + exp_offset_secs).unwrap(),
        iat: u64::try_from(now).unwrap(),
        iss: ISSUER.to_owned(),
    }
}

/// Reads auth's signing key from its database, as only a test may.
async fn auth_key(dir: &std::path::Path) -> ([u8; 32], String) {
    let url = format!("sqlite://{}/auth.db?mode=ro", dir.display());
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let (kid, seed): (String, String) =
        sqlx::query_as("SELECT kid, seed FROM signing_keys LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(seed)
        .unwrap();
    (bytes.try_into().unwrap(), kid)
}

async fn expect_problem(
    response: reqwest::Response,
    status: StatusCode,
    field: Option<&str>,
    words: &str,
    case: &str,
) {
    assert_eq!(response.status(), status, "{case}: status");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "{case}: content type"
    );
    let problem: Value = response.json().await.unwrap();
    if let Some(field) = field {
        assert_eq!(problem["field"], field, "{case}: field in {problem}");
    }
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(words),
        "{case}: detail `{detail}` lacks `{words}`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_orders_are_rejected_and_store_nothing() {
    let system = TestSystem::start().await;
    let customer = system.customer("careless").await;
    let (restaurant, items) = system.restaurant_with_menu(0).await;
    let (other_restaurant, other_items) = system.restaurant_with_menu(1).await;
    assert_ne!(restaurant, other_restaurant);
    let valid = order_body(&restaurant, &[&items[0]]);
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut body = valid.clone();
        edit(&mut body);
        body
    };

    let cases: Vec<(&str, Value, StatusCode, Option<&str>, &str)> = vec![
        (
            "empty items",
            with(&|b| b["items"] = json!([])),
            StatusCode::BAD_REQUEST,
            Some("items"),
            "at least one",
        ),
        (
            "quantity 0",
            with(&|b| b["items"][0]["quantity"] = json!(0)),
            StatusCode::BAD_REQUEST,
            Some("items[0].quantity"),
            "between 1 and 50",
        ),
        (
            "quantity 51",
            with(&|b| b["items"][0]["quantity"] = json!(51)),
            StatusCode::BAD_REQUEST,
            Some("items[0].quantity"),
            "between 1 and 50",
        ),
        (
            "negative quantity",
            with(&|b| b["items"][0]["quantity"] = json!(-1)),
            StatusCode::BAD_REQUEST,
            None,
            "items[0].quantity",
        ),
        (
            "missing address",
            with(&|b| {
                b.as_object_mut().unwrap().remove("delivery_address");
            }),
            StatusCode::BAD_REQUEST,
            None,
            "delivery_address",
        ),
        (
            "unknown restaurant",
            with(&|b| b["restaurant_id"] = json!("node-0")),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("restaurant_id"),
            "node-0",
        ),
        (
            "unknown item",
            with(&|b| b["items"][0]["menu_item_id"] = json!("no-such-item")),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("items[0].menu_item_id"),
            "no-such-item",
        ),
        (
            "item of another restaurant",
            with(&|b| b["items"][0]["menu_item_id"] = json!(other_items[0])),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("items[0].menu_item_id"),
            "belongs to restaurant",
        ),
    ];
    for (case, body, status, field, words) in cases {
        let response = system
            .place(&customer.token, Some(&format!("key-{case}")), &body)
            .await;
        expect_problem(response, status, field, words, case).await;
    }

    let malformed = system
        .http
        .post(system.url("/v1/orders"))
        .bearer_auth(&customer.token)
        .header("Idempotency-Key", "malformed")
        .header("content-type", "application/json")
        .body("{\"restaurant_id\": ")
        .send()
        .await
        .unwrap();
    expect_problem(
        malformed,
        StatusCode::BAD_REQUEST,
        None,
        "not valid JSON",
        "malformed JSON",
    )
    .await;

    let no_key = system.place(&customer.token, None, &valid).await;
    expect_problem(
        no_key,
        StatusCode::BAD_REQUEST,
        Some("Idempotency-Key"),
        "missing Idempotency-Key",
        "missing key",
    )
    .await;

    let huge = with(&|b| b["delivery_address"]["line1"] = json!("x".repeat(70 * 1024)));
    let too_large = system.place(&customer.token, Some("huge"), &huge).await;
    assert_eq!(
        too_large.status(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "body over 64 KiB"
    );

    assert_eq!(
        count_rows(system.dir.path(), "orders", "SELECT COUNT(*) FROM orders").await,
        0
    );
    assert_eq!(
        count_rows(
            system.dir.path(),
            "payments",
            "SELECT COUNT(*) FROM payments"
        )
        .await,
        0
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_tokens_are_rejected() {
    let system = TestSystem::start().await;
    let customer = system.customer("intruder").await;
    let (restaurant, items) = system.restaurant_with_menu(0).await;
    let body = order_body(&restaurant, &[&items[0]]);
    let (seed, kid) = auth_key(system.dir.path()).await;
    let mut other_seed = [7u8; 32];
    other_seed[0] = seed[0].wrapping_add(1);

    let expired = ed25519_token(&seed, &kid, &claims(&customer.id, -3600));
    let forged = ed25519_token(&other_seed, &kid, &claims(&customer.id, 3600));
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(&customer.id, 3600),
        &EncodingKey::from_secret(b"guessed secret").unwrap(),
    )
    .unwrap();

    let cases = [
        ("expired", Some(expired.as_str()), "expired"),
        ("forged", Some(forged.as_str()), "signature is invalid"),
        ("wrong algorithm", Some(hs256.as_str()), "EdDSA"),
        ("garbage", Some("not-a-token"), "malformed"),
        ("missing", None, "missing access token"),
    ];
    for (case, token, words) in cases {
        let mut request = system
            .http
            .post(system.url("/v1/orders"))
            .header("Idempotency-Key", case)
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        expect_problem(response, StatusCode::UNAUTHORIZED, None, words, case).await;
    }

    let valid = ed25519_token(&seed, &kid, &claims(&customer.id, 3600));
    let accepted = system
        .place(&valid, Some("valid-forged-by-test"), &body)
        .await;
    assert_eq!(
        accepted.status(),
        StatusCode::CREATED,
        "a token made with auth's key is accepted"
    );
    assert_eq!(
        count_rows(system.dir.path(), "orders", "SELECT COUNT(*) FROM orders").await,
        1
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_customers_order_is_forbidden() {
    let system = TestSystem::start().await;
    let owner = system.customer("owner").await;
    let stranger = system.customer("stranger").await;
    let (restaurant, items) = system.restaurant_with_menu(0).await;
    let placed = system
        .place(
            &owner.token,
            Some("mine"),
            &order_body(&restaurant, &[&items[0]]),
        )
        .await;
    let order_id = placed.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let peek = system
        .get(&format!("/v1/orders/{order_id}"), Some(&stranger.token))
        .await;
    let list = system
        .get(
            &format!("/v1/users/{}/orders", owner.id),
            Some(&stranger.token),
        )
        .await;
    let missing = system
        .get(
            "/v1/orders/00000000-0000-0000-0000-000000000000",
            Some(&owner.token),
        )
        .await;

    assert_eq!(peek.status(), StatusCode::FORBIDDEN);
    assert_eq!(list.status(), StatusCode::FORBIDDEN);
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn declined_card_gives_402_and_no_order() {
    let system = TestSystem::start_with(|settings| settings.processor.decline_rate = 1.0).await;
    let customer = system.customer("broke").await;
    let (restaurant, items) = system.restaurant_with_menu(0).await;
    let body = order_body(&restaurant, &[&items[0]]);

    let response = system.place(&customer.token, Some("declined"), &body).await;
    let retry = system.place(&customer.token, Some("declined"), &body).await;

    expect_problem(
        response,
        StatusCode::PAYMENT_REQUIRED,
        None,
        "declined",
        "declined card",
    )
    .await;
    expect_problem(
        retry,
        StatusCode::PAYMENT_REQUIRED,
        None,
        "declined",
        "retried declined card",
    )
    .await;
    let orders = |sql| count_rows(system.dir.path(), "orders", sql);
    assert_eq!(
        orders("SELECT COUNT(*) FROM orders").await,
        1,
        "kept so a retry gets the same answer"
    );
    assert_eq!(
        orders("SELECT COUNT(*) FROM orders WHERE status = 'payment_declined'").await,
        1
    );
    assert_eq!(
        count_rows(
            system.dir.path(),
            "payments",
            "SELECT COUNT(*) FROM payments"
        )
        .await,
        1,
        "the retry did not try the card again"
    );
    assert_eq!(
        count_rows(
            system.dir.path(),
            "payments",
            "SELECT COUNT(*) FROM payments WHERE status = 'DECLINED'"
        )
        .await,
        1
    );
    system
        .system
        .wait_quiet(Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        count_rows(system.dir.path(), "kitchen", "SELECT COUNT(*) FROM tickets").await,
        0,
        "the kitchen never hears of it"
    );
    system.stop().await;
}
