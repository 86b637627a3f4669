-- Per-user data keys, each wrapped by a version of its tenant's data key.
-- A user's conversations, dialog state and e-mail are sealed with it, so
-- deleting this row makes every copy of those values unreadable.

CREATE TABLE user_keys (
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL,
    -- Version of the tenant data key that wraps this key.
    tenant_key_version INTEGER NOT NULL,
    wrapped_key BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
