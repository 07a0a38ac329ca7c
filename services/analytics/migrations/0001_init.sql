-- One row per order seen on the stream. The figures are aggregates over these rows,
-- computed from event data only, so replaying the stream gives the same figures.

CREATE TABLE order_facts (
    order_id       TEXT   PRIMARY KEY,
    restaurant_id  TEXT,
    total_cents    BIGINT,
    currency       TEXT,
    placed_at      BIGINT,
    accepted_at    BIGINT,
    ready_at       BIGINT,
    preparation_ms BIGINT
);

CREATE INDEX order_facts_by_restaurant ON order_facts (restaurant_id);

CREATE TABLE inbox (
    consumer   TEXT   NOT NULL,
    event_id   TEXT   NOT NULL,
    handled_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
