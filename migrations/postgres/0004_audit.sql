-- The audit trail: append-only events, each carrying the SHA-256 of the
-- previous event's hash and its own fields (the encoding is in
-- host/src/audit/chain.rs), the head of that chain, and the checkpoints
-- that retention leaves behind when it deletes the oldest events.
--
-- The triggers below reject UPDATE, TRUNCATE and DELETE for every role, the
-- owner included. Only the owner can disable them, so a server connecting
-- as a role that does not own these tables cannot (docs/server.md).

CREATE TABLE audit_events (
    -- Position in the chain: 1, 2, 3, ... with no gaps.
    seq BIGINT PRIMARY KEY NOT NULL,
    -- Unix milliseconds.
    occurred_at_ms BIGINT NOT NULL,
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
    -- A JSON object, hashed as stored; TEXT so that it stays byte for byte.
    details TEXT NOT NULL,
    -- Hex SHA-256 over the previous hash and this row's other columns.
    hash TEXT NOT NULL
);

CREATE INDEX audit_events_by_tenant ON audit_events (tenant_id, seq);
CREATE INDEX audit_events_by_actor ON audit_events (actor, seq);
CREATE INDEX audit_events_by_action ON audit_events (action, seq);
CREATE INDEX audit_events_by_time ON audit_events (occurred_at_ms);

-- The newest event's number and hash. Appends lock this row, so events
-- from concurrent writers and several nodes form one line.
CREATE TABLE audit_head (
    id BIGINT PRIMARY KEY NOT NULL CHECK (id = 1),
    last_seq BIGINT NOT NULL,
    last_hash TEXT NOT NULL
);

INSERT INTO audit_head (id, last_seq, last_hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Where retention cut the chain: events up to `seq` were deleted, and the
-- next event links to `hash`.
CREATE TABLE audit_checkpoints (
    seq BIGINT PRIMARY KEY NOT NULL,
    hash TEXT NOT NULL,
    occurred_at_ms BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE FUNCTION audit_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % rejected: the audit trail is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE FUNCTION audit_events_check_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.seq > COALESCE((SELECT MAX(seq) FROM audit_checkpoints), 0) THEN
        RAISE EXCEPTION 'DELETE of audit event % rejected: the audit trail is append-only, and only events covered by a checkpoint may be deleted', OLD.seq
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN OLD;
END
$$;

-- A checkpoint names an existing event after the last checkpoint, and that
-- event and every one before it must be at least 30 days old. So pruning
-- never removes recent events, even when a backdated event was appended.
CREATE FUNCTION audit_checkpoints_check_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq <= COALESCE((SELECT MAX(seq) FROM audit_checkpoints), 0)
        OR NOT EXISTS (
            SELECT 1 FROM audit_events
            WHERE seq = NEW.seq AND hash = NEW.hash AND occurred_at_ms = NEW.occurred_at_ms
        )
        OR EXISTS (
            SELECT 1 FROM audit_events
            WHERE seq <= NEW.seq
                AND occurred_at_ms > (EXTRACT(EPOCH FROM now())::BIGINT - 30 * 86400) * 1000
        )
    THEN
        RAISE EXCEPTION 'invalid audit checkpoint: expected an event after the last checkpoint, with it and all before it at least 30 days old'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE FUNCTION audit_head_check_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.last_seq < OLD.last_seq OR NEW.id <> OLD.id THEN
        RAISE EXCEPTION 'the audit head only moves forward'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_events_delete_checkpointed BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_check_delete();

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_checkpoints_checked BEFORE INSERT ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_checkpoints_check_insert();

CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_head_forward_only BEFORE UPDATE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION audit_head_check_update();
