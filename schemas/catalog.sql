-- The mailvault catalog (SQLite, WAL).  Migrations are applied in order: each section starts
-- with a "-- migration: N" line and runs once, when PRAGMA user_version < N.  Sections are never
-- edited after they land; a change is a new section.
--
-- Times are UTC ISO 8601 strings ("2026-11-28T20:39:55.123456+00:00").

-- migration: 1
CREATE TABLE accounts (
    name        TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    port        INTEGER NOT NULL,
    user        TEXT NOT NULL,
    tls         TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

-- One row per distinct content.  The blob in objects/ is named by sha256.
CREATE TABLE messages (
    sha256          TEXT PRIMARY KEY,
    size            INTEGER NOT NULL,          -- bytes as received (uncompressed)
    first_ingest_at TEXT NOT NULL,
    first_source    TEXT NOT NULL              -- "pop3:<account>" or "import:<path>"
);

-- The UIDL map.  A (account, uidl) pair is "live" while deleted_confirmed_at is NULL; a UIDL
-- the server reuses after a confirmed deletion gets a new row.
CREATE TABLE uidls (
    id                   INTEGER PRIMARY KEY,
    account              TEXT NOT NULL REFERENCES accounts(name),
    uidl                 TEXT NOT NULL,
    sha256               TEXT NOT NULL REFERENCES messages(sha256),
    size                 INTEGER NOT NULL,
    first_seen           TEXT NOT NULL,
    committed_at         TEXT NOT NULL,
    dele_sent_at         TEXT,
    deleted_confirmed_at TEXT,
    run_id               INTEGER REFERENCES runs(id)
);
CREATE UNIQUE INDEX uidls_live ON uidls(account, uidl) WHERE deleted_confirmed_at IS NULL;
CREATE INDEX uidls_sha256 ON uidls(sha256);

-- One row per `mailvault fetch` of one account.
CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    account     TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    status      TEXT NOT NULL,                 -- running | ok | failed
    listed      INTEGER NOT NULL DEFAULT 0,
    new         INTEGER NOT NULL DEFAULT 0,
    fetched     INTEGER NOT NULL DEFAULT 0,
    duplicates  INTEGER NOT NULL DEFAULT 0,
    deleted     INTEGER NOT NULL DEFAULT 0,
    bytes       INTEGER NOT NULL DEFAULT 0,
    retries     INTEGER NOT NULL DEFAULT 0,
    errors      TEXT NOT NULL DEFAULT '[]'     -- JSON list of one-line messages
);

-- Provenance: what the server said about itself, per POP3 session.
CREATE TABLE sessions (
    id               INTEGER PRIMARY KEY,
    run_id           INTEGER NOT NULL REFERENCES runs(id),
    started_at       TEXT NOT NULL,
    host             TEXT NOT NULL,
    port             INTEGER NOT NULL,
    tls              TEXT NOT NULL,
    tls_version      TEXT,
    tls_cert_sha256  TEXT,
    greeting         TEXT,
    capabilities     TEXT                      -- JSON list of CAPA lines
);
