-- Relay seq up to which repo-state updates from the event log are applied to `accounts`.
-- On start, events after it are replayed from the log into `accounts`, so the SQL state
-- never lags the log after a crash.
CREATE TABLE state_checkpoint (
    id BIGINT PRIMARY KEY,
    seq BIGINT NOT NULL
);
INSERT INTO state_checkpoint (id, seq) VALUES (1, 0);
