-- Positions of the catalog's restaurants, copied from restaurant.upserted events.
-- A row changes only for a higher revision, so replaying the stream is harmless.
CREATE TABLE restaurants (
    restaurant_id TEXT             PRIMARY KEY,
    lat           DOUBLE PRECISION NOT NULL,
    lon           DOUBLE PRECISION NOT NULL,
    revision      BIGINT           NOT NULL
);

-- The courier fleet, created once. A courier is free, or busy with the delivery of
-- order_id. lat and lon are where the courier waits between deliveries.
CREATE TABLE couriers (
    courier_id TEXT             PRIMARY KEY,
    status     TEXT             NOT NULL CHECK (status IN ('free', 'busy')),
    order_id   TEXT             UNIQUE,
    lat        DOUBLE PRECISION NOT NULL,
    lon        DOUBLE PRECISION NOT NULL,
    created_at BIGINT           NOT NULL,
    CHECK ((status = 'free' AND order_id IS NULL) OR (status = 'busy' AND order_id IS NOT NULL))
);

CREATE INDEX couriers_by_status ON couriers (status, courier_id);

-- One delivery per order. status is one of:
--   waiting    the food is ready but no courier is free yet;
--   assigned   a courier rides to the restaurant, due there at pickup_due;
--   picked_up  the courier rides to the customer, due there at delivered_due;
--   delivered  the customer has the food;
--   cancelled  the order was cancelled before pickup. A row cancelled before its
--              order.ready arrived has no courier_share_ms, and keeps a later
--              order.ready from creating a delivery.
-- courier_share_ms is the courier's simulated share of the journey, before the time
-- scale is applied. traceparent is the W3C trace context of order.ready, so that
-- order.picked_up and order.delivered continue the order's trace. All times are Unix
-- milliseconds.
CREATE TABLE deliveries (
    delivery_id      TEXT   PRIMARY KEY,
    order_id         TEXT   NOT NULL UNIQUE,
    restaurant_id    TEXT   NOT NULL,
    status           TEXT   NOT NULL
        CHECK (status IN ('waiting', 'assigned', 'picked_up', 'delivered', 'cancelled')),
    courier_id       TEXT,
    courier_share_ms BIGINT,
    traceparent      TEXT,
    created_at       BIGINT NOT NULL,
    assigned_at      BIGINT,
    pickup_due       BIGINT,
    picked_up_at     BIGINT,
    delivered_due    BIGINT,
    delivered_at     BIGINT,
    cancelled_at     BIGINT
);

-- The delivery timer looks up assigned deliveries by pickup time, picked-up ones by
-- delivery time, and waiting ones oldest first.
CREATE INDEX deliveries_pickup_due ON deliveries (status, pickup_due);
CREATE INDEX deliveries_delivered_due ON deliveries (status, delivered_due);
CREATE INDEX deliveries_waiting ON deliveries (status, created_at);

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
