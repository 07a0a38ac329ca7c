-- The kitchen now decides every order: a ticket records a rejection or a cancellation
-- as well as an acceptance. A rejected ticket, or one cancelled before its order
-- arrived, was never accepted, so accepted_at and ready_at become nullable. Columns
-- cannot drop NOT NULL portably, so the table is rebuilt and its rows copied. The new
-- table is built beside the old one and renamed only after the old one is dropped,
-- because PostgreSQL keeps constraint and index names (tickets_pkey, tickets_due) on a
-- renamed table, and a second table named tickets would collide with them.
--
-- status is one of:
--   accepted   the kitchen is preparing the order;
--   ready      the food is ready for pickup, and ready_at_actual is set;
--   rejected   the kitchen refused the order: reject_reason and reject_detail say why;
--   cancelled  the customer cancelled the order, and cancelled_at is set. accepted_at
--              is null when the cancellation arrived before the order.
-- created_at is when the kitchen decided the order or recorded its cancellation.
-- stock_taken is the JSON object {menu_item_id: quantity} of the stock rows that
-- acceptance decremented, so that a cancellation returns exactly that.
CREATE TABLE tickets_0002 (
    ticket_id               TEXT   PRIMARY KEY,
    order_id                TEXT   NOT NULL UNIQUE,
    restaurant_id           TEXT   NOT NULL,
    status                  TEXT   NOT NULL
        CHECK (status IN ('accepted', 'ready', 'rejected', 'cancelled')),
    reject_reason           TEXT
        CHECK (reject_reason IN ('closed', 'sold_out', 'at_capacity', 'kitchen_declined')),
    reject_detail           TEXT,
    lines                   TEXT   NOT NULL,
    stock_taken             TEXT,
    traceparent             TEXT,
    replay_delivery_minutes BIGINT,
    created_at              BIGINT NOT NULL,
    accepted_at             BIGINT,
    ready_at                BIGINT,
    ready_at_actual         BIGINT,
    cancelled_at            BIGINT
);

INSERT INTO tickets_0002 (ticket_id, order_id, restaurant_id, status, lines, traceparent,
                          created_at, accepted_at, ready_at, ready_at_actual)
SELECT ticket_id, order_id, restaurant_id, status, lines, traceparent,
       accepted_at, accepted_at, ready_at, ready_at_actual
FROM tickets;

DROP TABLE tickets;

ALTER TABLE tickets_0002 RENAME TO tickets;

-- The ticket timer looks up accepted tickets by planned ready time.
CREATE INDEX tickets_due ON tickets (status, ready_at);

-- Capacity counts a restaurant's accepted tickets.
CREATE INDEX tickets_open ON tickets (restaurant_id, status);

-- The restaurant replica: the latest revision of every restaurant.upserted event.
-- opening_hours is the raw OpenStreetMap value, parsed when an order is decided.
CREATE TABLE restaurants (
    restaurant_id TEXT   PRIMARY KEY,
    amenity       TEXT   NOT NULL,
    opening_hours TEXT,
    revision      BIGINT NOT NULL
);

-- Stock limits set by staff. An item without a row has no limit.
CREATE TABLE stock (
    restaurant_id TEXT   NOT NULL,
    menu_item_id  TEXT   NOT NULL,
    quantity      BIGINT NOT NULL CHECK (quantity >= 0),
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (restaurant_id, menu_item_id)
);
