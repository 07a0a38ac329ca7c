-- One notification per handled event: event_id is unique. status is one of:
--   pending  not sent yet, because the first send is under way, failed or was cut off;
--   sent     the channel accepted it at sent_at;
--   failed   the sender gave up after its last attempt, and last_error says why.
-- attempts counts finished sends. The sender loop tries a pending notification once
-- next_attempt_at has passed; while a send is under way, next_attempt_at lies past
-- the send timeout so that no second send starts. customer_id is empty when the
-- order's order.placed has not been handled. All times are Unix milliseconds.
CREATE TABLE notifications (
    notification_id TEXT   PRIMARY KEY,
    event_id        TEXT   NOT NULL UNIQUE,
    order_id        TEXT   NOT NULL,
    customer_id     TEXT   NOT NULL,
    event_type      TEXT   NOT NULL,
    channel         TEXT   NOT NULL,
    subject         TEXT   NOT NULL,
    body            TEXT   NOT NULL,
    status          TEXT   NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        BIGINT NOT NULL,
    last_error      TEXT,
    next_attempt_at BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    sent_at         BIGINT
);

CREATE INDEX notifications_order ON notifications (order_id);
CREATE INDEX notifications_due ON notifications (status, next_attempt_at);

CREATE TABLE inbox (
    consumer   TEXT   NOT NULL,
    event_id   TEXT   NOT NULL,
    handled_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
