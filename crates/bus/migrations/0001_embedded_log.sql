-- The embedded event log. Every published event is stored once in `events`; a work
-- queue holds one row per event it has yet to settle; a stream group holds only its
-- committed offset.

CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT    NOT NULL UNIQUE,
    event_type TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    time_ms    INTEGER NOT NULL,
    envelope   BLOB    NOT NULL
);

CREATE INDEX events_time ON events (time_ms);

CREATE TABLE queues (
    name        TEXT    PRIMARY KEY,
    event_types TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);

-- attempts counts deliveries so far. A message is ready when available_at has passed
-- and no member holds a lease on it (leased_until is NULL or past).
CREATE TABLE queue_messages (
    queue        TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    available_at INTEGER NOT NULL,
    leased_until INTEGER,
    last_error   TEXT,
    PRIMARY KEY (queue, seq)
);

CREATE INDEX queue_messages_ready ON queue_messages (queue, available_at);

-- queue is the work queue or stream group that gave up on the event.
CREATE TABLE dead_letters (
    queue     TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    event_id  TEXT    NOT NULL,
    attempts  INTEGER NOT NULL,
    reason    TEXT    NOT NULL,
    dead_at   INTEGER NOT NULL,
    PRIMARY KEY (queue, seq)
);

CREATE TABLE stream_offsets (
    group_name TEXT    PRIMARY KEY,
    last_seq   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
