-- Second factors: one TOTP secret per user and single-use recovery codes.
-- Rows go with their user through the foreign keys.

CREATE TABLE mfa_totp (
    user_id TEXT PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- The shared secret, AES-256-GCM sealed with the tenant's data key.
    secret_sealed BYTEA NOT NULL,
    -- NULL while enrolment waits for its first code; logins ignore the row
    -- until then.
    confirmed_at BIGINT,
    -- The newest RFC 6238 time step accepted, so no code is accepted twice.
    last_step BIGINT,
    created_at BIGINT NOT NULL
);

CREATE TABLE mfa_recovery_codes (
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- SHA-256 of the code, hex; the code itself is shown once and never
    -- stored. A used code's row is deleted.
    code_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, code_hash)
);
