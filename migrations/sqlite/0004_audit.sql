-- The audit trail: append-only events, each carrying the SHA-256 of the
-- previous event's hash and its own fields (the encoding is in
-- host/src/audit/chain.rs), the head of that chain, and the checkpoints
-- that retention leaves behind when it deletes the oldest events.
--
-- The triggers below reject edits and deletions. In SQLite they guard
-- against the application's own mistakes only: whoever can write the file
-- can drop them. `botserver audit verify` is what detects tampering.

CREATE TABLE audit_events (
    -- Position in the chain: 1, 2, 3, ... with no gaps.
    seq INTEGER PRIMARY KEY NOT NULL,
    -- Unix milliseconds.
    occurred_at_ms INTEGER NOT NULL,
    -- A user id, `visitor:<uuid>`, `anonymous` or `system`.
    actor TEXT NOT NULL,
    -- No foreign key: deleting a tenant keeps its audit trail.
    tenant_id TEXT,
    -- A stable dotted name such as `auth.login.success`.
    action TEXT NOT NULL,
    target TEXT,
    -- `success`, `failure` or `denied`.
    outcome TEXT NOT NULL,
    request_id TEXT,
    -- The client's IP address.
    source TEXT,
    -- A JSON object, hashed as stored.
    details TEXT NOT NULL,
    -- Hex SHA-256 over the previous hash and this row's other columns.
    hash TEXT NOT NULL
);

CREATE INDEX audit_events_by_tenant ON audit_events (tenant_id, seq);
CREATE INDEX audit_events_by_actor ON audit_events (actor, seq);
CREATE INDEX audit_events_by_action ON audit_events (action, seq);
CREATE INDEX audit_events_by_time ON audit_events (occurred_at_ms);

-- The newest event's number and hash. Appends lock this row, so events
-- from concurrent writers and several processes form one line.
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    last_seq INTEGER NOT NULL,
    last_hash TEXT NOT NULL
);

INSERT INTO audit_head (id, last_seq, last_hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Where retention cut the chain: events up to `seq` were deleted, and the
-- next event links to `hash`.
CREATE TABLE audit_checkpoints (
    seq INTEGER PRIMARY KEY NOT NULL,
    hash TEXT NOT NULL,
    occurred_at_ms INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;

CREATE TRIGGER audit_events_delete_checkpointed BEFORE DELETE ON audit_events
WHEN OLD.seq > COALESCE((SELECT MAX(seq) FROM audit_checkpoints), 0)
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only: only events covered by a checkpoint may be deleted');
END;

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit checkpoints are append-only');
END;

CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit checkpoints are append-only');
END;

-- A checkpoint names an existing event after the last checkpoint, and that
-- event and every one before it must be at least 30 days old. So pruning
-- never removes recent events, even when a backdated event was appended.
CREATE TRIGGER audit_checkpoints_checked BEFORE INSERT ON audit_checkpoints
WHEN NEW.seq <= COALESCE((SELECT MAX(seq) FROM audit_checkpoints), 0)
    OR NOT EXISTS (
        SELECT 1 FROM audit_events
        WHERE seq = NEW.seq AND hash = NEW.hash AND occurred_at_ms = NEW.occurred_at_ms
    )
    OR EXISTS (
        SELECT 1 FROM audit_events
        WHERE seq <= NEW.seq
            AND occurred_at_ms > (CAST(strftime('%s', 'now') AS INTEGER) - 30 * 86400) * 1000
    )
BEGIN
    SELECT RAISE(ABORT, 'invalid audit checkpoint: expected an event after the last checkpoint, with it and all before it at least 30 days old');
END;

CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head
BEGIN
    SELECT RAISE(ABORT, 'the audit head cannot be deleted');
END;

CREATE TRIGGER audit_head_forward_only BEFORE UPDATE ON audit_head
WHEN NEW.last_seq < OLD.last_seq OR NEW.id <> OLD.id
BEGIN
    SELECT RAISE(ABORT, 'the audit head only moves forward');
END;
