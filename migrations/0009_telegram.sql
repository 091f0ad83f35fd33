-- Telegram (F-26, B-11). Times are unix milliseconds.

-- One live card per task: the message that shows it, and what it last
-- showed. `text_hash` is the hash of the last text and buttons Telegram
-- accepted, so an unchanged card is not sent again; `final` marks a card of
-- a terminal task that shows its end (nothing will change it any more).
CREATE TABLE telegram_cards (
    task_id     INTEGER PRIMARY KEY REFERENCES tasks (id),
    chat_id     TEXT    NOT NULL,
    message_id  INTEGER,
    text_hash   TEXT    NOT NULL DEFAULT '',
    final       INTEGER NOT NULL DEFAULT 0,
    sends       INTEGER NOT NULL DEFAULT 0,
    edits       INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    updated_at  INTEGER NOT NULL
);

-- Every update from Telegram, stored before it acts (B-11): the primary key
-- deduplicates a redelivered update, the getUpdates offset is derived from
-- the largest stored id (so it advances only after the store), and an update
-- stored but not processed when the daemon died is processed at the next
-- start, once.
CREATE TABLE telegram_updates (
    update_id    INTEGER PRIMARY KEY,
    body         TEXT    NOT NULL,
    received_at  INTEGER NOT NULL,
    processed_at INTEGER,
    outcome      TEXT
);
CREATE INDEX telegram_updates_unprocessed ON telegram_updates (update_id) WHERE processed_at IS NULL;
