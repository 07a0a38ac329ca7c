-- One kitchen ticket per order. status is one of:
--   accepted   the kitchen is preparing the order;
--   ready      the food is ready for pickup, and ready_at_actual is set;
--   rejected   reserved for a kitchen that refuses an order (not produced yet);
--   cancelled  reserved for an order cancelled before it was ready (not produced yet).
-- ready_at is when the food is planned to be ready. All times are Unix milliseconds.
-- lines is the order's lines as JSON, and traceparent is the W3C trace context of the
-- order.placed event, so that order.ready continues the order's trace.
CREATE TABLE tickets (
    ticket_id       TEXT   PRIMARY KEY,
    order_id        TEXT   NOT NULL UNIQUE,
    restaurant_id   TEXT   NOT NULL,
    status          TEXT   NOT NULL
        CHECK (status IN ('accepted', 'ready', 'rejected', 'cancelled')),
    lines           TEXT   NOT NULL,
    traceparent     TEXT,
    accepted_at     BIGINT NOT NULL,
    ready_at        BIGINT NOT NULL,
    ready_at_actual BIGINT
);

-- The ticket timer looks up accepted tickets by planned ready time.
CREATE INDEX tickets_due ON tickets (status, ready_at);

CREATE TABLE outbox (
    event_id   TEXT   PRIMARY KEY,
    envelope   TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE inbox (
    consumer   TEXT   NOT NULL,
    event_id   TEXT   NOT NULL,
    handled_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
