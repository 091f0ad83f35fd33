-- F-27: alert deduplication (notify::Dedup). Times are unix milliseconds.
-- One row per dedup key: the alert's kind, its work item and an optional
-- explicit key. `window_start` is when the last alert of the key was sent;
-- repeats before `window_start + ORCH_ALERT_DEDUP_WINDOW_S` are counted in
-- `suppressed` instead of sent, and the first repeat after it is sent with
-- that count. Kept in the database so a restart does not re-send what the
-- previous run already sent.
CREATE TABLE alert_dedup (
    dedup_key        TEXT    PRIMARY KEY,
    kind             TEXT    NOT NULL,
    work_item        TEXT,
    alert_key        TEXT,
    window_start     INTEGER NOT NULL,
    suppressed       INTEGER NOT NULL DEFAULT 0,
    sent_total       INTEGER NOT NULL DEFAULT 0,
    suppressed_total INTEGER NOT NULL DEFAULT 0,
    last_message     TEXT    NOT NULL,
    last_seen        INTEGER NOT NULL
);
CREATE INDEX alert_dedup_last_seen ON alert_dedup (last_seen);
