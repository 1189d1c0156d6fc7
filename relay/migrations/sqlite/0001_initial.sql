-- Upstream hosts (PDSes) the relay subscribes to.
CREATE TABLE hosts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hostname TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL DEFAULT 'active',
    last_seq BIGINT NOT NULL DEFAULT 0,
    account_limit BIGINT NOT NULL,
    trusted BIGINT NOT NULL DEFAULT 0, -- 0/1: sqlx Any has no portable boolean
    ssl BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Accounts seen by the relay and the last accepted state of their repos.
CREATE TABLE accounts (
    did TEXT PRIMARY KEY,
    host_id BIGINT,
    local_status TEXT NOT NULL DEFAULT 'active',
    upstream_status TEXT NOT NULL DEFAULT 'active',
    rev TEXT,
    data_cid TEXT,
    commit_cid TEXT,
    updated_at BIGINT NOT NULL
);
CREATE INDEX accounts_host ON accounts (host_id);

CREATE TABLE domain_bans (
    domain TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);

-- Events of a DID with seq below before_seq are not replayed (takedown purge).
CREATE TABLE purges (
    did TEXT PRIMARY KEY,
    before_seq BIGINT NOT NULL
);
