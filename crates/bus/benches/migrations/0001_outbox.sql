CREATE TABLE outbox (
    event_id   TEXT   PRIMARY KEY,
    envelope   TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
