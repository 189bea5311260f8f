-- Initial schema of the keyd database.
--
-- Every secret column holds AES-256-GCM ciphertext; scope, path, issuer and
-- serial are plain text so that rows can be found and listed while sealed
-- data stays encrypted.

-- The seal configuration: one row, written by init.
CREATE TABLE seal_config (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    format_version INTEGER NOT NULL,
    salt BLOB NOT NULL,
    argon2_time_cost INTEGER NOT NULL,
    argon2_memory_kib INTEGER NOT NULL,
    argon2_parallelism INTEGER NOT NULL,
    -- The MEK wrapped by the key-wrapping key derived from the seal password.
    wrapped_mek BLOB NOT NULL,
    mek_nonce BLOB NOT NULL,
    -- Unix time in seconds.
    created_at INTEGER NOT NULL
);

-- Data encryption keys, one active key per scope, each wrapped by the MEK.
CREATE TABLE keyring (
    dek_id INTEGER PRIMARY KEY,
    scope TEXT NOT NULL,
    wrapped_dek BLOB NOT NULL,
    nonce BLOB NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'destroyed')),
    created_at INTEGER NOT NULL
);

CREATE UNIQUE INDEX keyring_one_active_key_per_scope
    ON keyring (scope) WHERE state = 'active';

-- Barrier entries, each encrypted under a DEK of its scope.
CREATE TABLE barrier_entries (
    scope TEXT NOT NULL,
    path TEXT NOT NULL,
    dek_id INTEGER NOT NULL REFERENCES keyring (dek_id),
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    -- Unix time in seconds.
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (scope, path)
) WITHOUT ROWID;

-- Serial numbers of the certificates each CA mount has signed. issuer is the
-- name of the signing issuer for leaves, or '@root' for the root itself and
-- the issuers, which the root signs. The primary key makes a serial unique
-- per signer.
CREATE TABLE ca_cert_serials (
    scope TEXT NOT NULL,
    issuer TEXT NOT NULL,
    serial TEXT NOT NULL,
    -- Unix time in seconds.
    not_after INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (scope, issuer, serial)
) WITHOUT ROWID;
