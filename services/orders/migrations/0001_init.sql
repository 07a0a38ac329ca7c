-- Orders own their orders, a replica of the menus (fed by the catalog's events), the
-- idempotency keys of order requests, and the outbox and inbox.

CREATE TABLE orders (
    order_id        TEXT    PRIMARY KEY,
    customer_id     TEXT    NOT NULL,
    restaurant_id   TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    total_cents     BIGINT  NOT NULL,
    currency        TEXT    NOT NULL,
    payment_id      TEXT    NOT NULL,
    address_line1   TEXT    NOT NULL,
    address_city    TEXT    NOT NULL,
    address_lat     DOUBLE PRECISION NOT NULL,
    address_lon     DOUBLE PRECISION NOT NULL,
    replay_delivery_minutes INTEGER,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL
);

CREATE INDEX orders_by_customer ON orders (customer_id, created_at);

CREATE TABLE order_lines (
    order_id         TEXT    NOT NULL,
    line_no          INTEGER NOT NULL,
    menu_item_id     TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    quantity         INTEGER NOT NULL,
    unit_price_cents BIGINT  NOT NULL,
    PRIMARY KEY (order_id, line_no)
);

-- One row per status change, the order's visible timeline.
CREATE TABLE order_status_history (
    order_id   TEXT   NOT NULL,
    status     TEXT   NOT NULL,
    changed_at BIGINT NOT NULL,
    event_id   TEXT,
    PRIMARY KEY (order_id, status)
);

-- request_hash is the SHA-256 of the canonical JSON of the request, so a retry with
-- the same key and body returns the first order and a different body is rejected.
CREATE TABLE idempotency_keys (
    customer_id     TEXT   NOT NULL,
    idempotency_key TEXT   NOT NULL,
    request_hash    TEXT   NOT NULL,
    order_id        TEXT   NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (customer_id, idempotency_key)
);

CREATE TABLE menu_replica (
    menu_item_id    TEXT    PRIMARY KEY,
    restaurant_id   TEXT    NOT NULL,
    restaurant_name TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    price_cents     BIGINT  NOT NULL,
    currency        TEXT    NOT NULL,
    available       INTEGER NOT NULL,
    revision        BIGINT  NOT NULL
);

CREATE INDEX menu_replica_by_restaurant ON menu_replica (restaurant_id);

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
