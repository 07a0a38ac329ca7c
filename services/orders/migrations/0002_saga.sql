-- The order saga: reasons in the timeline, and the payment steps (void or capture)
-- that a status change makes necessary. A step is written in the same transaction as
-- the status change and done later by a worker, retried until payments confirms it.

ALTER TABLE order_status_history ADD COLUMN reason TEXT;

CREATE TABLE payment_actions (
    order_id        TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    payment_id      TEXT    NOT NULL,
    amount_cents    BIGINT  NOT NULL,
    reason          TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at BIGINT  NOT NULL,
    last_error      TEXT,
    created_at      BIGINT  NOT NULL,
    done_at         BIGINT,
    PRIMARY KEY (order_id, action)
);

CREATE INDEX payment_actions_due ON payment_actions (status, next_attempt_at);
