-- Plugins, their grants, bots, bot status, key-value entries and secrets.
-- Every row belongs to one tenant, and every key starts with `tenant_id`.

CREATE TABLE plugins (
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- SHA-256 of the component, lower-case hex.
    digest TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    size INTEGER NOT NULL,
    wit_version TEXT NOT NULL,
    -- JSON array of capability names the component imports.
    requested TEXT NOT NULL,
    -- JSON object in the form of `GrantSet`; `{}` grants nothing.
    grants TEXT NOT NULL,
    component BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, digest)
);

CREATE TABLE bots (
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    plugin_digest TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    visibility TEXT NOT NULL,
    -- JSON in the form of `InvocationLimits`.
    limits TEXT NOT NULL,
    -- JSON object of string values.
    config TEXT NOT NULL,
    invocations INTEGER NOT NULL DEFAULT 0,
    breaker_tripped_at INTEGER,
    breaker_reason TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name),
    FOREIGN KEY (tenant_id, plugin_digest) REFERENCES plugins (tenant_id, digest)
);

CREATE TABLE bot_traps (
    tenant_id TEXT NOT NULL,
    bot_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, bot_name, kind),
    FOREIGN KEY (tenant_id, bot_name) REFERENCES bots (tenant_id, name) ON DELETE CASCADE
);

CREATE TABLE kv_entries (
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    bot_name TEXT NOT NULL,
    -- `bot` or `user`; `user_id` is empty in the bot scope.
    scope TEXT NOT NULL,
    user_id TEXT NOT NULL,
    key TEXT NOT NULL,
    -- AES-256-GCM ciphertext sealed with the tenant's data key.
    value_sealed BLOB NOT NULL,
    -- Plaintext key plus value bytes, counted against the bot's quota.
    size INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, bot_name, scope, user_id, key)
);

CREATE TABLE secrets (
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    -- AES-256-GCM ciphertext sealed with the tenant's data key.
    value_sealed BLOB NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name)
);
