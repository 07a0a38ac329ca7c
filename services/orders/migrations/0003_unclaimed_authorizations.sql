-- Authorizations that may exist without an order. When the payment service does not
-- answer within the deadline the client gets 503, but payments may still complete
-- the authorization. Unless a retry with the same Idempotency-Key stores the order
-- first (status `claimed`), the payment worker asks for the authorization again
-- under the same key, which finds the late one, and voids it (`releasing`, then
-- `released`).
CREATE TABLE unclaimed_authorizations (
    order_id        TEXT    PRIMARY KEY,
    customer_id     TEXT    NOT NULL,
    amount_cents    BIGINT  NOT NULL,
    currency        TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at BIGINT  NOT NULL,
    created_at      BIGINT  NOT NULL
);

CREATE INDEX unclaimed_authorizations_due ON unclaimed_authorizations (status, next_attempt_at);
