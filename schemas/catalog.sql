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
    status      TEXT NOT NULL,                 -- running | ok | failed | interrupted | killed
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

-- migration: 4
-- The hash-chained ledger (see mailvault/ledger.py): every ingest, every deletion the server
-- confirmed, every purge and hold change.  Append-only: the triggers refuse edits.
CREATE TABLE ledger (
    seq        INTEGER PRIMARY KEY,
    at         TEXT NOT NULL,
    kind       TEXT NOT NULL,
    account    TEXT,
    uidl       TEXT,
    sha256     TEXT,
    size       INTEGER,
    detail     TEXT,
    prev_hash  TEXT NOT NULL,
    entry_hash TEXT NOT NULL UNIQUE
);
CREATE INDEX ledger_sha256 ON ledger(sha256);
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;

-- The audit trail: who searched, showed or exported what.  Same chain rules.
CREATE TABLE audit (
    seq        INTEGER PRIMARY KEY,
    at         TEXT NOT NULL,
    os_user    TEXT NOT NULL,
    command    TEXT NOT NULL,
    query      TEXT,
    results    INTEGER NOT NULL,
    detail     TEXT,
    prev_hash  TEXT NOT NULL,
    entry_hash TEXT NOT NULL UNIQUE
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

-- Retention: a purged message keeps this tombstone row (so its UIDL is never fetched again)
-- while its blob, parse rows and index document are removed; the ledger has a "purge" entry.
ALTER TABLE messages ADD COLUMN purged_at TEXT;

-- Legal holds: a hold protects every message matching its query when a purge runs.
CREATE TABLE holds (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    query       TEXT NOT NULL,
    reason      TEXT,
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    released_at TEXT
);
CREATE UNIQUE INDEX holds_active ON holds(name) WHERE released_at IS NULL;

-- migration: 2
-- The parse stage (mailvault/parse, written by mailvault/parse_store.py).  One message_meta row
-- per parsed message; addresses and parts are replaced with it when a message is re-parsed.
CREATE TABLE message_meta (
    sha256           TEXT PRIMARY KEY REFERENCES messages(sha256),
    message_id       TEXT NOT NULL DEFAULT '',     -- without <>, '' if none
    subject          TEXT NOT NULL DEFAULT '',     -- decoded (RFC 2047)
    date             TEXT NOT NULL,                -- UTC ISO 8601; the ingest time if date_fallback
    date_raw         TEXT NOT NULL DEFAULT '',     -- the Date header as written
    date_fallback    INTEGER NOT NULL DEFAULT 0,   -- 1: Date missing or unparsable
    from_addr        TEXT NOT NULL DEFAULT '',     -- first From mailbox, lower-case
    from_name        TEXT NOT NULL DEFAULT '',
    list_id          TEXT NOT NULL DEFAULT '',
    in_reply_to      TEXT NOT NULL DEFAULT '',
    thread_id        TEXT NOT NULL DEFAULT '',     -- first References id, else In-Reply-To, else own
    has_attachment   INTEGER NOT NULL DEFAULT 0,
    attachment_count INTEGER NOT NULL DEFAULT 0,
    unreadable       INTEGER NOT NULL DEFAULT 0,   -- 1: the MIME parser could not read it
    defects          TEXT NOT NULL DEFAULT '[]',   -- JSON list of strings
    parsed_at        TEXT NOT NULL,
    indexed_at       TEXT                          -- set by the indexer; NULL: not yet indexed
);
CREATE INDEX message_meta_message_id ON message_meta(message_id);
CREATE INDEX message_meta_date ON message_meta(date);
CREATE INDEX message_meta_thread_id ON message_meta(thread_id);
CREATE INDEX message_meta_unindexed ON message_meta(sha256) WHERE indexed_at IS NULL;

-- Every mailbox of the address headers, in header order (position from 0 within a role).
CREATE TABLE addresses (
    sha256   TEXT NOT NULL REFERENCES message_meta(sha256) ON DELETE CASCADE,
    role     TEXT NOT NULL CHECK (role IN ('from', 'to', 'cc', 'bcc', 'reply-to', 'sender')),
    position INTEGER NOT NULL,
    name     TEXT NOT NULL DEFAULT '',             -- display name, decoded
    addr     TEXT NOT NULL DEFAULT '',             -- lower-case
    PRIMARY KEY (sha256, role, position)
);
CREATE INDEX addresses_addr ON addresses(addr);

-- Attachments (and inline non-body parts).  idx is the depth-first part number, as in
-- `mailvault show ID --part N`.
CREATE TABLE parts (
    sha256       TEXT NOT NULL REFERENCES message_meta(sha256) ON DELETE CASCADE,
    idx          INTEGER NOT NULL,
    content_type TEXT NOT NULL,                    -- lower-case type/subtype
    filename     TEXT NOT NULL DEFAULT '',         -- decoded (RFC 2047 / RFC 2231)
    size         INTEGER NOT NULL,                 -- decoded bytes
    part_sha256  TEXT NOT NULL,                    -- of the decoded bytes
    text_chars   INTEGER NOT NULL DEFAULT 0,       -- characters of text extracted for the index
    PRIMARY KEY (sha256, idx)
);
CREATE INDEX parts_part_sha256 ON parts(part_sha256);

-- migration: 3
-- Provenance of `mailvault import`: one row per message read from a source, duplicates included
-- (the content may have come earlier from a server or another file).  `export --account NAME`
-- selects messages whose uidls.account or imports.account is NAME.
CREATE TABLE imports (
    id            INTEGER PRIMARY KEY,
    sha256        TEXT NOT NULL REFERENCES messages(sha256),
    account       TEXT,                        -- `import --account NAME`, else NULL
    source        TEXT NOT NULL,               -- absolute path of the file that was read (a
                                               -- name not UTF-8: escaped, see docs/sql.md)
    source_kind   TEXT NOT NULL CHECK (source_kind IN ('maildir', 'mbox', 'eml')),
    source_offset INTEGER,                     -- mbox: offset of the message's first byte
    imported_at   TEXT NOT NULL
);
CREATE INDEX imports_sha256 ON imports(sha256);
CREATE INDEX imports_account ON imports(account, sha256) WHERE account IS NOT NULL;

-- migration: 5
-- The size LIST gave for a UIDL when its message was committed (NULL for rows from before this
-- migration).  A committed UIDL listed later at another size is not the committed message any
-- more (a server that reused the UIDL): fetch downloads it to check instead of deleting it
-- unread or ignoring new mail.  Compared with LIST's own earlier answer, not with the stored
-- size, so a server that misreports sizes consistently never looks like it reused a UIDL.
ALTER TABLE uidls ADD COLUMN listed_size INTEGER;

-- migration: 6
-- How many messages are purged (tombstones), kept by triggers, so that `mailvault search` can
-- tell how many live messages the index lacks from max(rowid) and this one row, instead of
-- counting the live rows (a scan of the whole table once anything is purged).
CREATE TABLE message_counts (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    purged INTEGER NOT NULL
);
INSERT INTO message_counts(id, purged) SELECT 1, count(*) FROM messages WHERE purged_at IS NOT NULL;
CREATE TRIGGER messages_purged_insert AFTER INSERT ON messages WHEN NEW.purged_at IS NOT NULL
BEGIN
    UPDATE message_counts SET purged = purged + 1 WHERE id = 1;
END;
CREATE TRIGGER messages_purged_update AFTER UPDATE OF purged_at ON messages
WHEN (OLD.purged_at IS NULL) != (NEW.purged_at IS NULL)
BEGIN
    UPDATE message_counts SET purged = purged + (CASE WHEN NEW.purged_at IS NULL THEN -1 ELSE 1 END)
    WHERE id = 1;
END;

-- migration: 7
-- The version of the query language a hold was placed under (mailvault/search/query.py SYNTAX).
-- A hold is read under it at every retention run, so a change of the language never changes
-- what it protects.  Holds placed before this column existed are read in version 1 (and, or,
-- not in lower case are words), the language of every release before it; their hold-add
-- ledger entries carry no "syntax", which means 1 as well (docs/compliance.md).
ALTER TABLE holds ADD COLUMN syntax INTEGER NOT NULL DEFAULT 1;

-- migration: 8
-- How many messages are indexed (message_meta.indexed_at set), kept by triggers beside the
-- purged count, so that `mailvault search` tells the live messages the index lacks from the
-- documents of purged ones it may still hold (a retention run stopped before it updated the
-- index), each on its own: from the index's number of documents alone, 380 unindexed messages
-- hid 2620 purged documents, whose text was then shown.
ALTER TABLE message_counts ADD COLUMN indexed INTEGER NOT NULL DEFAULT 0;
UPDATE message_counts SET indexed = (SELECT count(*) FROM message_meta WHERE indexed_at IS NOT NULL)
WHERE id = 1;
CREATE TRIGGER message_meta_indexed_insert AFTER INSERT ON message_meta
WHEN NEW.indexed_at IS NOT NULL
BEGIN
    UPDATE message_counts SET indexed = indexed + 1 WHERE id = 1;
END;
CREATE TRIGGER message_meta_indexed_update AFTER UPDATE OF indexed_at ON message_meta
WHEN (OLD.indexed_at IS NULL) != (NEW.indexed_at IS NULL)
BEGIN
    UPDATE message_counts SET indexed = indexed + (CASE WHEN NEW.indexed_at IS NULL THEN -1 ELSE 1 END)
    WHERE id = 1;
END;
CREATE TRIGGER message_meta_indexed_delete AFTER DELETE ON message_meta
WHEN OLD.indexed_at IS NOT NULL
BEGIN
    UPDATE message_counts SET indexed = indexed - 1 WHERE id = 1;
END;
