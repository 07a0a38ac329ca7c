//! Placing an order: the steps between the validated request and the stored order.
//!
//! 1. An idempotency key seen before returns its order (same body) or 422 (another
//!    body), without calling payments.
//! 2. The items are priced from the menu replica.
//! 3. Payments authorizes the total over gRPC, with a deadline. The authorization's
//!    key is derived from the customer and the idempotency key, so a retry after a
//!    crash reuses the first authorization instead of charging again.
//! 4. One transaction writes the order, its lines, its timeline, the idempotency key
//!    and the `order.placed` outbox row.
//!
//! A failed call leaves nothing in the order database. A declined card leaves the
//! order in `payment_declined`, so a retry gets 402 again without calling payments;
//! the kitchen never hears of it.

use axum::http::StatusCode;
use sha2::{Digest, Sha256};
use tiffin_bus::envelope::Envelope;
use tiffin_events::order::{OrderLine, OrderPlaced};
use tiffin_runtime::db::is_unique_violation;
use tiffin_runtime::problem::{Problem, internal_error};
use tiffin_runtime::time::now_millis;
use tiffin_runtime::trace::TraceContext;

use crate::domain::{self, OrderStatus, PlaceOrderRequest, PricedOrder};
use crate::payments::{Authorization, PaymentError};
use crate::storage::{self, NewOrder, OrderRecord, OrderSummary, StoredAddress};
use crate::unclaimed::{self, Claim, Unclaimed};
use crate::{AppState, SOURCE, saga};

/// The result of a successful placement.
#[derive(Debug)]
pub struct Placed {
    /// The order.
    pub order: OrderRecord,
    /// True when an earlier request with the same key created it.
    pub replayed: bool,
}

/// Places an order for `customer_id`.
///
/// # Errors
///
/// A problem document for the client: 400 or 422 for a bad request, 402 for a
/// declined card, 503 when payments did not answer, 500 otherwise.
pub async fn place_order(
    state: &AppState,
    customer_id: &str,
    idempotency_key: &str,
    request: &PlaceOrderRequest,
    trace: TraceContext,
) -> Result<Placed, Problem> {
    domain::validate(request)?;
    let request_hash = hash_request(request);

    if let Some(found) = replay(state, customer_id, idempotency_key, &request_hash).await? {
        return Ok(found);
    }

    let ids: Vec<&str> = request
        .items
        .iter()
        .map(|i| i.menu_item_id.as_str())
        .collect();
    let menu = storage::menu_items(&state.db, &ids)
        .await
        .map_err(internal_error)?;
    // An ordered item of the restaurant already shows that the replica contains it,
    // which saves a statement on every valid order.
    let known = menu
        .values()
        .any(|item| item.restaurant_id == request.restaurant_id)
        || storage::restaurant_known(&state.db, &request.restaurant_id)
            .await
            .map_err(internal_error)?;
    let priced = domain::price(request, known, &menu)?;

    let order_id = domain::order_id_for(customer_id, idempotency_key);
    tracing::Span::current().record("order_id", order_id.as_str());
    let payment_key = payment_key(&order_id);
    let authorization = match state
        .payments
        .authorize(
            &payment_key,
            customer_id,
            &order_id,
            priced.total_cents,
            &priced.currency,
            trace,
        )
        .await
    {
        Ok(authorization) => authorization,
        Err(error) => {
            if matches!(
                error,
                PaymentError::DeadlineExceeded(_) | PaymentError::Unavailable(_)
            ) {
                let attempt = Unclaimed {
                    order_id: order_id.clone(),
                    customer_id: customer_id.to_owned(),
                    amount_cents: priced.total_cents,
                    currency: priced.currency.clone(),
                    attempts: 0,
                };
                let now = now_millis();
                let after =
                    i64::try_from(state.release_unclaimed_after.as_millis()).unwrap_or(i64::MAX);
                unclaimed::record(&state.db, &attempt, now.saturating_add(after), now)
                    .await
                    .map_err(internal_error)?;
            }
            return Err(payment_problem(&error));
        }
    };
    let (payment_id, decline_reason) = match authorization {
        Authorization::Authorized { payment_id } => (payment_id, None),
        Authorization::Declined { payment_id, reason } => {
            tracing::info!(%payment_id, %reason, "payment declined");
            (payment_id, Some(reason))
        }
    };
    let status = if decline_reason.is_some() {
        OrderStatus::PaymentDeclined
    } else {
        OrderStatus::Placed
    };

    let now = now_millis();
    let address = &request.delivery_address;
    let new_order = NewOrder {
        id: &order_id,
        status,
        reason: decline_reason.as_deref(),
        customer_id,
        restaurant_id: &request.restaurant_id,
        total_cents: priced.total_cents,
        currency: &priced.currency,
        payment_id: &payment_id,
        lines: &priced.lines,
        address: StoredAddress {
            line1: address.line1.clone(),
            city: address.city.clone(),
            lat: address.lat,
            lon: address.lon,
        },
        replay_delivery_minutes: request.replay_delivery_minutes,
        now,
    };
    let summary = OrderSummary {
        status,
        customer_id: customer_id.to_owned(),
        restaurant_id: request.restaurant_id.clone(),
        total_cents: priced.total_cents,
        currency: priced.currency.clone(),
        payment_id: payment_id.clone(),
    };
    let mut events = vec![Envelope::new(
        SOURCE,
        &saga::status_changed(&order_id, &summary, status, decline_reason.as_deref(), now),
        Some(trace.child()),
    )];
    // A declined order is stored so that a retry answers the same, but the kitchen
    // never hears of it.
    if decline_reason.is_none() {
        events.insert(
            0,
            placed_event(
                &order_id,
                customer_id,
                request,
                &priced,
                &payment_id,
                now,
                trace,
            ),
        );
    }

    let written = async {
        let mut tx = state.db.begin_write_for(&[&order_id]).await?;
        if unclaimed::claim(&mut tx, &order_id).await? == Claim::Released {
            return Ok(false);
        }
        storage::insert_placement(
            &mut tx,
            state.db.engine(),
            &new_order,
            idempotency_key,
            &request_hash,
            &events,
        )
        .await?;
        tx.commit().await.map(|()| true)
    }
    .await;
    match written {
        Ok(false) => return Err(released()),
        Ok(true) => {
            state.relay_waker.notify_one();
            tracing::info!(total_cents = priced.total_cents, %payment_id, %status, "order stored");
        }
        Err(error) if is_unique_violation(&error) => {
            // A concurrent request with the same key committed first; answer as it did.
            return match replay(state, customer_id, idempotency_key, &request_hash).await? {
                Some(found) => Ok(found),
                None => Err(internal_error(error)),
            };
        }
        Err(error) => return Err(internal_error(error)),
    }
    if let Some(reason) = decline_reason {
        return Err(declined(&reason));
    }

    // The response shows the order as committed. The lifecycle may have moved it
    // on since, which a GET shows.
    Ok(Placed {
        order: new_order.record(),
        replayed: false,
    })
}

fn placed_event(
    order_id: &str,
    customer_id: &str,
    request: &PlaceOrderRequest,
    priced: &PricedOrder,
    payment_id: &str,
    now: i64,
    trace: TraceContext,
) -> Envelope {
    let placed = OrderPlaced {
        order_id: order_id.to_owned(),
        customer_id: customer_id.to_owned(),
        restaurant_id: request.restaurant_id.clone(),
        lines: priced
            .lines
            .iter()
            .map(|line| OrderLine {
                menu_item_id: line.menu_item_id.clone(),
                name: line.name.clone(),
                quantity: line.quantity,
                unit_price_cents: line.unit_price_cents,
            })
            .collect(),
        total_cents: priced.total_cents,
        currency: priced.currency.clone(),
        payment_id: payment_id.to_owned(),
        placed_at: now,
        replay_delivery_minutes: request.replay_delivery_minutes,
        replay_local_time: request.replay_local_time.clone(),
    };
    Envelope::new(SOURCE, &placed, Some(trace.child()))
}

fn declined(reason: &str) -> Problem {
    Problem::new(
        StatusCode::PAYMENT_REQUIRED,
        "payment-declined",
        format!(
            "the card was declined ({reason}); the order was not placed and nothing was charged"
        ),
    )
}

/// Returns the order an idempotency key created, or 422 when the body differs.
async fn replay(
    state: &AppState,
    customer_id: &str,
    idempotency_key: &str,
    request_hash: &str,
) -> Result<Option<Placed>, Problem> {
    let Some((order_id, stored_hash)) =
        storage::find_idempotency_key(&state.db, customer_id, idempotency_key)
            .await
            .map_err(internal_error)?
    else {
        return Ok(None);
    };
    if stored_hash != request_hash {
        return Err(Problem::unprocessable(
            "idempotency-key-reused",
            format!(
                "Idempotency-Key `{idempotency_key}` was already used for order {order_id} with a different request body; use a new key for a new order"
            ),
        )
        .with_field("Idempotency-Key"));
    }
    tracing::Span::current().record("order_id", order_id.as_str());
    let order = storage::find_order(&state.db, &order_id)
        .await
        .map_err(internal_error)?
        .ok_or_else(|| {
            internal_error(anyhow::anyhow!(
                "idempotency key points to missing order {order_id}"
            ))
        })?;
    if order.status == OrderStatus::PaymentDeclined {
        let reason = order
            .timeline
            .iter()
            .find_map(|entry| entry.reason.clone())
            .unwrap_or_else(|| "declined".to_owned());
        return Err(declined(&reason));
    }
    Ok(Some(Placed {
        order,
        replayed: true,
    }))
}

/// Hashes the canonical JSON of the request, so whitespace and key order in the
/// client's body do not matter.
fn hash_request(request: &PlaceOrderRequest) -> String {
    let canonical = serde_json::to_vec(request).expect("a request always serializes");
    let digest = Sha256::digest(&canonical);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Returns the payment idempotency key of an order, which retries of one placement
/// share.
pub fn payment_key(order_id: &str) -> String {
    format!("order:{order_id}")
}

/// Returns the 409 problem for a retry whose timed-out authorization was voided.
fn released() -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "attempt-released",
        "an earlier attempt with this Idempotency-Key timed out waiting for the payment, and its authorization was released; place the order again with a new Idempotency-Key",
    )
}

fn payment_problem(error: &PaymentError) -> Problem {
    match error {
        PaymentError::DeadlineExceeded(_) | PaymentError::Unavailable(_) => {
            tracing::warn!(error = %error, "payment authorization failed");
            Problem::unavailable(
                format!("{error}; no order was placed: retry with the same Idempotency-Key"),
                1,
            )
        }
        PaymentError::Failed(status) => {
            internal_error(anyhow::anyhow!("payment call failed: {status}"))
        }
    }
}
