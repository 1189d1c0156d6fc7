//! The SQL store: the same behaviour on SQLite and PostgreSQL (same queries, one
//! migration set per backend).

mod common;

use relay::storage::Store;

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
    store.save_host_cursor(a.id, 50).await.expect("cursor");
    store.save_host_cursor(a.id, 40).await.expect("cursor");
    assert_eq!(
        store.host_by_id(a.id).await.expect("get").expect("row").last_seq,
        50,
        "cursor never goes back"
    );
    store.set_host_status(a.id, "banned").await.expect("status");
    assert_eq!(store.host_by_name("pds-a.example.com").await.expect("get").expect("row").status, "banned");
    store.set_host_account_limit(a.id, 7).await.expect("limit");
    assert_eq!(store.host_by_id(a.id).await.expect("get").expect("row").account_limit, 7);

    // Accounts.
    for n in 0..5 {
        let did = format!("did:plc:account{n}");
        let account = store.ensure_account(&did, Some(b.id)).await.expect("ensure");
        assert!(account.is_active() && account.rev.is_none());
        store
            .save_repo_state(&did, "3lmxjza3nva27", "bafyreidata", Some("bafyreicommit"))
            .await
            .expect("state");
    }
    assert_eq!(store.count_host_accounts(b.id).await.expect("count"), 5);
    store.set_upstream_status("did:plc:account1", "deactivated").await.expect("upstream");
    assert!(store.set_local_status("did:plc:account2", "takendown").await.expect("local"));
    assert!(!store.set_local_status("did:plc:nobody", "takendown").await.expect("local"));
    let taken = store.account("did:plc:account2").await.expect("get").expect("row");
    assert_eq!(taken.effective_status(), "takendown");
    let page = store.list_repos("", 2).await.expect("page");
    assert_eq!(
        page.iter().map(|a| a.did.as_str()).collect::<Vec<_>>(),
        ["did:plc:account0", "did:plc:account3"]
    );
    let rest = store.list_repos("did:plc:account3", 10).await.expect("page");
    assert_eq!(rest.iter().map(|a| a.did.as_str()).collect::<Vec<_>>(), ["did:plc:account4"]);
    let account = store.account("did:plc:account0").await.expect("get").expect("row");
    assert_eq!(account.commit_cid.as_deref(), Some("bafyreicommit"));
    store.save_repo_state("did:plc:account0", "3lmxjza3nvb27", "bafyreidata2", None).await.expect("state");
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
    store.save_state_checkpoint(42).await.expect("save");
    store.save_state_checkpoint(41).await.expect("save lower");
    assert_eq!(store.state_checkpoint().await.expect("checkpoint"), 42);
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
