-- Chat conversations and their messages, and the last failure of each bot. A conversation belongs to one bot
-- and either to one account (`owner_id`) or to one anonymous visitor
-- (`visitor_id`); deleting the bot or the account deletes it.

CREATE TABLE conversations (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    bot_name TEXT NOT NULL,
    owner_id TEXT REFERENCES users (id) ON DELETE CASCADE,
    visitor_id TEXT,
    -- Messages stored so far; the next message takes this as its `seq`.
    message_count INTEGER NOT NULL DEFAULT 0,
    -- The plugin's saved dialog state, sealed; NULL when it saved none.
    state_sealed BLOB,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    FOREIGN KEY (tenant_id, bot_name) REFERENCES bots (tenant_id, name) ON DELETE CASCADE
);

CREATE INDEX conversations_by_owner ON conversations (owner_id, updated_at);

CREATE TABLE messages (
    -- Random id, bound into the ciphertext's associated data.
    id TEXT PRIMARY KEY NOT NULL,
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    tenant_id TEXT NOT NULL,
    -- `user` or `bot`.
    role TEXT NOT NULL,
    -- AES-256-GCM ciphertext sealed with the tenant's data key.
    content_sealed BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (conversation_id, seq)
);

-- Why the bot's last failed event failed, for its admin: the error and any
-- host calls the policy denied on the way.
ALTER TABLE bots ADD COLUMN last_failure TEXT;
ALTER TABLE bots ADD COLUMN last_failure_at INTEGER;
