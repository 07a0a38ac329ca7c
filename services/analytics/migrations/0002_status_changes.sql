-- Delivery times from order.delivered, kept on the order's row like the preparation
-- time from order.ready.
ALTER TABLE order_facts ADD COLUMN delivered_at BIGINT;
ALTER TABLE order_facts ADD COLUMN delivery_ms BIGINT;

-- One row per order and status that order.status_changed reported. The first event
-- for an order and status is kept and a repeat changes nothing, so every change counts
-- once. stage is the furthest step of the happy path that the status proves the order
-- reached: 0 placed, 1 accepted, 2 ready, 3 picked_up, 4 delivered. A rejection or a
-- cancellation proves placement (0); a declined payment proves nothing (NULL). reason
-- is set for rejected, cancelled and payment_declined when the event gives one.
-- changed_at is in Unix milliseconds.
CREATE TABLE status_changes (
    order_id      TEXT   NOT NULL,
    status        TEXT   NOT NULL,
    stage         BIGINT,
    reason        TEXT,
    restaurant_id TEXT   NOT NULL,
    total_cents   BIGINT NOT NULL,
    currency      TEXT   NOT NULL,
    changed_at    BIGINT NOT NULL,
    PRIMARY KEY (order_id, status)
);
