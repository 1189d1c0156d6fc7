-- Collection-directory backfill progress, so a restarted relay resumes where it stopped.

-- One row per backfill job (kind 'import' with an upstream source, or 'crawl').
CREATE TABLE backfill_runs (
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    state TEXT NOT NULL,            -- running, stopped, done
    started_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (kind, source)
);

-- Import: the upstream's listReposByCollection cursor per collection, saved after each page.
CREATE TABLE backfill_imports (
    source TEXT NOT NULL,
    collection TEXT NOT NULL,
    cursor TEXT,
    imported BIGINT NOT NULL DEFAULT 0,
    pages BIGINT NOT NULL DEFAULT 0,
    done BIGINT NOT NULL DEFAULT 0, -- 0/1
    error TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (source, collection)
);

-- Crawl: the host's listRepos cursor, saved after each page.
CREATE TABLE backfill_crawl (
    hostname TEXT PRIMARY KEY,
    cursor TEXT,
    repos BIGINT NOT NULL DEFAULT 0,
    done BIGINT NOT NULL DEFAULT 0, -- 0/1
    error TEXT,
    updated_at BIGINT NOT NULL
);
