-- One row per authorization attempt that reached the card processor. The row
-- changes state at most once after it is written (AUTHORIZED to CAPTURED or VOIDED),
-- and every change adds a row to ledger_entries in the same transaction.
CREATE TABLE payments (
    payment_id      TEXT   PRIMARY KEY,
    idempotency_key TEXT   NOT NULL UNIQUE,
    customer_id     TEXT   NOT NULL,
    reference       TEXT   NOT NULL,
    amount_cents    BIGINT NOT NULL CHECK (amount_cents > 0),
    currency        TEXT   NOT NULL,
    status          TEXT   NOT NULL
        CHECK (status IN ('AUTHORIZED', 'DECLINED', 'CAPTURED', 'VOIDED')),
    decline_reason  TEXT,
    void_reason     TEXT,
    captured_cents  BIGINT NOT NULL CHECK (captured_cents >= 0 AND captured_cents <= amount_cents),
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

CREATE INDEX payments_by_reference ON payments (reference);

-- Append-only history of what happened to each payment's money.
CREATE TABLE ledger_entries (
    entry_id     TEXT   PRIMARY KEY,
    payment_id   TEXT   NOT NULL REFERENCES payments (payment_id),
    kind         TEXT   NOT NULL CHECK (kind IN ('authorize', 'decline', 'capture', 'void')),
    amount_cents BIGINT NOT NULL,
    created_at   BIGINT NOT NULL
);

CREATE INDEX ledger_entries_by_payment ON ledger_entries (payment_id);
