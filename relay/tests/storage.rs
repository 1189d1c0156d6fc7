//! The SQL store: the same behaviour on SQLite and PostgreSQL (same queries, one
//! migration set per backend).

mod common;

use relay::storage::{AccountStatus, HostStatus};
use relay::storage::{RepoStateUpdate, Store};

async fn exercise(url: &str) {
    let store = Store::connect(url, 4).await.expect("connect and migrate");
    // Migrations are idempotent: connecting again works.
    let store2 = Store::connect(url, 4).await.expect("reconnect");
    store2.ping().await.expect("ping");

    // Hosts.
    let a = store.upsert_host("pds-a.example.com", true, 100, false).await.expect("insert");
    let again = store.upsert_host("pds-a.example.com", false, 5, true).await.expect("upsert");
    assert_eq!(a, again, "upsert keeps the existing row");
    let b = store.upsert_host("pds-b.example.com", true, 10_000_000, true).await.expect("insert");
    assert!(b.id > a.id && b.trusted && b.ssl);
    assert_eq!(store.list_hosts(0, 10).await.expect("list").len(), 2);
    assert_eq!(store.list_hosts(a.id, 10).await.expect("list"), vec![b.clone()]);
    store.save_host_cursors(&[(a.id, 50)]).await.expect("cursor");
    store.save_host_cursors(&[(a.id, 40)]).await.expect("cursor");
    assert_eq!(
        store.host_by_id(a.id).await.expect("get").expect("row").last_seq,
        50,
        "cursor never goes back"
    );
    store.set_host_status(a.id, HostStatus::Banned).await.expect("status");
    assert_eq!(
        store.host_by_name("pds-a.example.com").await.expect("get").expect("row").status,
        HostStatus::Banned
    );
    store.set_host_account_limit(a.id, 7).await.expect("limit");
    assert_eq!(store.host_by_id(a.id).await.expect("get").expect("row").account_limit, 7);

    // Accounts.
    for n in 0..5 {
        let did = format!("did:plc:account{n}");
        let account = store.ensure_account(&did, Some(b.id)).await.expect("ensure");
        assert!(account.is_active() && account.rev.is_none());
        let state = RepoStateUpdate {
            did: &did,
            rev: "3lmxjza3nva27",
            data_cid: "bafyreidata",
            commit_cid: Some("bafyreicommit"),
        };
        store.save_repo_states(&[state], 0).await.expect("state");
    }
    assert_eq!(store.count_host_accounts(b.id).await.expect("count"), 5);
    // The count is kept in memory after the first one: new accounts and moves keep it equal
    // to what a fresh store (counting in SQL) sees.
    assert_eq!(store.count_host_accounts(a.id).await.expect("count"), 0);
    store.ensure_account("did:plc:account5", Some(b.id)).await.expect("ensure");
    store.ensure_account("did:plc:account5", Some(b.id)).await.expect("ensure again");
    store.set_account_host("did:plc:account4", Some(b.id), a.id).await.expect("move");
    store.set_account_host("did:plc:account4", Some(a.id), a.id).await.expect("same host");
    let fresh = Store::connect(url, 1).await.expect("connect");
    for (host, expected) in [(a.id, 1), (b.id, 5)] {
        assert_eq!(store.count_host_accounts(host).await.expect("count"), expected, "cached, host {host}");
        assert_eq!(fresh.count_host_accounts(host).await.expect("count"), expected, "in SQL, host {host}");
    }
    store.set_account_host("did:plc:account4", Some(a.id), b.id).await.expect("move back");
    store.set_upstream_status("did:plc:account1", &AccountStatus::Deactivated).await.expect("upstream");
    assert!(store.set_local_status("did:plc:account2", &AccountStatus::Takendown).await.expect("local"));
    assert!(!store.set_local_status("did:plc:nobody", &AccountStatus::Takendown).await.expect("local"));
    let taken = store.account("did:plc:account2").await.expect("get").expect("row");
    assert_eq!(taken.effective_status().as_str(), "takendown");
    let page = store.list_repos("", 2).await.expect("page");
    assert_eq!(
        page.iter().map(|a| a.did.as_str()).collect::<Vec<_>>(),
        ["did:plc:account0", "did:plc:account3"]
    );
    let rest = store.list_repos("did:plc:account3", 10).await.expect("page");
    assert_eq!(rest.iter().map(|a| a.did.as_str()).collect::<Vec<_>>(), ["did:plc:account4"]);
    let account = store.account("did:plc:account0").await.expect("get").expect("row");
    assert_eq!(account.commit_cid.as_deref(), Some("bafyreicommit"));
    let sync = RepoStateUpdate {
        did: "did:plc:account0",
        rev: "3lmxjza3nvb27",
        data_cid: "bafyreidata2",
        commit_cid: None,
    };
    store.save_repo_states(&[sync], 0).await.expect("state");
    let account = store.account("did:plc:account0").await.expect("get").expect("row");
    assert_eq!(account.commit_cid.as_deref(), Some("bafyreicommit"), "a #sync keeps the last commit CID");
    assert_eq!(account.rev.as_deref(), Some("3lmxjza3nvb27"));

    // Bans, purges, checkpoint.
    store.ban_domain("evil.example").await.expect("ban");
    store.ban_domain("evil.example").await.expect("ban twice");
    assert_eq!(store.domain_bans().await.expect("bans"), vec!["evil.example".to_string()]);
    store.unban_domain("evil.example").await.expect("unban");
    assert!(store.domain_bans().await.expect("bans").is_empty());
    store.save_purge("did:plc:account2", 10).await.expect("purge");
    store.save_purge("did:plc:account2", 20).await.expect("purge update");
    assert_eq!(store.purges().await.expect("purges"), vec![("did:plc:account2".to_string(), 20)]);
    assert_eq!(store.state_checkpoint().await.expect("checkpoint"), 0);
    store.save_repo_states(&[], 42).await.expect("save");
    store.save_repo_states(&[], 41).await.expect("save lower");
    assert_eq!(store.state_checkpoint().await.expect("checkpoint"), 42);

    // Accounts the relay knows as inactive, looked up in bulk.
    store.set_upstream_status("did:plc:account3", &AccountStatus::Deactivated).await.expect("status");
    store.set_local_status("did:plc:account4", &AccountStatus::Takendown).await.expect("status");
    let dids =
        ["did:plc:account0", "did:plc:account1", "did:plc:account3", "did:plc:account4", "did:plc:unknown"];
    let inactive = store.inactive_statuses(&dids).await.expect("statuses");
    assert_eq!(inactive.len(), 3, "{inactive:?}");
    assert_eq!(inactive["did:plc:account1"].as_str(), "deactivated");
    assert_eq!(inactive["did:plc:account3"].as_str(), "deactivated");
    assert_eq!(inactive["did:plc:account4"].as_str(), "takendown");

    // Collection backfill progress: per page, resumable, restartable.
    let source = "https://upstream.example";
    let nsids = vec!["app.example.a".to_string(), "app.example.b".to_string()];
    store.add_import_collections(source, &nsids).await.expect("add");
    store.add_import_collections(source, &nsids).await.expect("add twice keeps progress");
    store.save_import_page(source, "app.example.a", Some("cursor-1"), 1000, None).await.expect("page");
    store.save_import_page(source, "app.example.a", Some("cursor-2"), 1000, None).await.expect("page");
    store.save_import_page(source, "app.example.b", None, 10, None).await.expect("last page");
    let progress = store.import_progress(source).await.expect("progress");
    assert_eq!(progress.len(), 2);
    assert_eq!(
        (progress[0].cursor.as_deref(), progress[0].imported, progress[0].pages, progress[0].done),
        (Some("cursor-2"), 2000, 2, false)
    );
    assert_eq!((progress[1].cursor.as_deref(), progress[1].imported, progress[1].done), (None, 10, true));
    store.add_import_collections(source, &nsids[..1]).await.expect("add again");
    assert_eq!(store.import_progress(source).await.expect("progress")[0].cursor.as_deref(), Some("cursor-2"));
    store.restart_import_collections(source, &nsids).await.expect("restart");
    let progress = store.import_progress(source).await.expect("progress");
    assert!(!progress[1].done && progress[1].cursor.is_none(), "finished collections start over");
    assert_eq!(progress[0].cursor.as_deref(), Some("cursor-2"), "unfinished ones keep their cursor");
    store.set_backfill_run("import", source, "running").await.expect("run");
    store.set_backfill_run("crawl", "*", "running").await.expect("run");
    store.set_backfill_run("crawl", "*", "done").await.expect("run");
    assert_eq!(
        store.running_backfills().await.expect("runs"),
        vec![("import".to_string(), source.to_string())]
    );
    store.save_crawl_page("pds-b.example.com", Some("did:plc:x"), 500, None).await.expect("crawl page");
    store.save_crawl_page("pds-b.example.com", None, 20, None).await.expect("crawl done");
    store.save_crawl_page("pds-c.example.com", None, 0, Some("HTTP 400")).await.expect("crawl refused");
    let crawl = store.crawl_progress("pds-b.example.com").await.expect("crawl").expect("row");
    assert_eq!((crawl.repos, crawl.done), (520, true));
    assert_eq!(store.all_crawl_progress().await.expect("all")[1].error.as_deref(), Some("HTTP 400"));
    store.reset_finished_crawls().await.expect("reset");
    assert!(store.all_crawl_progress().await.expect("all").is_empty());

    // One batch with the same account several times and more accounts than one statement
    // holds: the stored state is that of applying the batch in order.
    let batch_host = store.upsert_host("pds-batch.example.com", true, 10_000_000, true).await.expect("host");
    let dids: Vec<String> = (0..600).map(|n| format!("did:plc:batch{n:03}")).collect();
    for did in &dids {
        store.ensure_account(did, Some(batch_host.id)).await.expect("ensure");
    }
    let revs: Vec<String> = (0..dids.len() * 2).map(|n| format!("rev{n:05}")).collect();
    let mut batch: Vec<RepoStateUpdate> = Vec::new();
    for (n, did) in dids.iter().enumerate() {
        batch.push(RepoStateUpdate {
            did,
            rev: &revs[2 * n],
            data_cid: "bafyfirst",
            commit_cid: Some("bafycommit1"),
        });
    }
    for (n, did) in dids.iter().enumerate().step_by(3) {
        // A later #sync (no commit CID) for every third account: keeps bafycommit1.
        batch.push(RepoStateUpdate { did, rev: &revs[2 * n + 1], data_cid: "bafysync", commit_cid: None });
    }
    store.save_repo_states(&batch, 77).await.expect("batch");
    for (n, did) in dids.iter().enumerate() {
        let account = store.account(did).await.expect("get").expect("row");
        let (rev, data) =
            if n % 3 == 0 { (&revs[2 * n + 1], "bafysync") } else { (&revs[2 * n], "bafyfirst") };
        assert_eq!(account.rev.as_deref(), Some(rev.as_str()), "{did}");
        assert_eq!(account.data_cid.as_deref(), Some(data), "{did}");
        assert_eq!(account.commit_cid.as_deref(), Some("bafycommit1"), "{did}");
    }
    assert_eq!(store.state_checkpoint().await.expect("checkpoint"), 77);
}

#[tokio::test]
async fn sqlite_store() {
    let (url, dir) = common::fresh_sqlite_database();
    exercise(&url).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn postgres_store() {
    let Some(server) = common::postgres_server() else { return };
    let url = common::fresh_postgres_database(&server).await;
    exercise(&url).await;
}

#[tokio::test]
async fn rejects_unknown_database_urls() {
    assert!(Store::connect("mysql://localhost/relay", 1).await.is_err());
}
