//! The `flotilla` CLI's commands and output formats against a real hub (the CLI code runs
//! in-process through `flotilla_cli::run`, exactly as the binary calls it).

use clap::Parser;
use flotilla_cli::{Cli, run};
use flotilla_proto::credential::AdminCredential;
use flotilla_proto::identity::Identity;
use flotilla_tests::*;

/// How `flotilla --config CONFIG cluster list` fails.
async fn list_error(config: &str) -> String {
    let argv = ["flotilla", "--config", config, "cluster", "list"];
    run(Cli::try_parse_from(argv).unwrap())
        .await
        .unwrap_err()
        .to_string()
}

#[tokio::test]
async fn cluster_commands_and_output_formats() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(TestHub::config(dir.path())).await;

    let v = cli_json(
        &hub,
        &[
            "cluster",
            "add",
            "eu-1",
            "--label",
            "region=eu",
            "-l",
            "ring=canary",
            "--ttl",
            "10m",
        ],
    )
    .await;
    assert_eq!(v["name"], "eu-1");
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
    let token = v["token"].as_str().unwrap().to_string();
    assert!(!token.contains(char::is_whitespace));
    let t = flotilla_proto::token::JoinToken::decode(&token).unwrap();
    assert_eq!(t.hub, hub.addr());
    assert_eq!(t.ca, hub.running().ca.fingerprint());

    // Table output shows the token and how to use it.
    let table = cli(&hub, &["cluster", "add", "us-1"]).await.unwrap();
    assert!(
        table.contains("flotilla-agent --join 'flotilla-join:"),
        "{table}"
    );

    let mut agent = TestAgent::start(&dir.path().join("a"), Some(token));
    agent.connected().await;
    hub.wait_state("eu-1", "connected").await;

    let list = cli_json(&hub, &["cluster", "list"]).await;
    let arr = list.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    let eu = arr.iter().find(|c| c["name"] == "eu-1").unwrap();
    assert_eq!(eu["labels"]["region"], "eu");
    assert_eq!(eu["state"], "connected");
    assert!(eu["last_seen"].is_string());
    let us = arr.iter().find(|c| c["name"] == "us-1").unwrap();
    assert_eq!(us["state"], "pending");
    assert!(us["last_seen"].is_null());

    let table = cli(&hub, &["cluster", "list"]).await.unwrap();
    for col in [
        "NAME",
        "LABELS",
        "STATE",
        "LAST SEEN",
        "AGENT",
        "CERT EXPIRES",
        "eu-1",
        "connected",
    ] {
        assert!(table.contains(col), "{col} missing from\n{table}");
    }

    let yaml = cli(
        &hub,
        &[
            "cluster",
            "label",
            "eu-1",
            "tier=gold",
            "ring-",
            "-o",
            "yaml",
        ],
    )
    .await
    .unwrap();
    let y: serde_json::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(y["labels"]["tier"], "gold");
    assert!(y["labels"].get("ring").is_none());

    let got = cli_json(&hub, &["cluster", "get", "eu-1"]).await;
    assert_eq!(got["labels"]["region"], "eu");
    assert!(got["cert_expires"].is_string());

    let tokens = cli_json(&hub, &["token", "list"]).await;
    let tokens = tokens.as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    let unused = tokens.iter().find(|t| t["cluster"] == "us-1").unwrap();
    assert_eq!(unused["state"], "active");
    let id = unused["id"].as_str().unwrap();
    let out = cli(&hub, &["token", "revoke", id]).await.unwrap();
    assert_eq!(out, format!("token {id} revoked\n"));

    let out = cli(&hub, &["cluster", "remove", "eu-1"]).await.unwrap();
    assert!(out.contains("removed"), "{out}");
    agent.ended().await.unwrap_err();
    let got = cli_json(&hub, &["cluster", "get", "eu-1"]).await;
    assert_eq!(got["state"], "revoked");
}

#[tokio::test]
async fn errors_are_one_clear_line() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut hub = TestHub::start(TestHub::config(dir.path())).await;

    let e = cli(&hub, &["cluster", "get", "nope"]).await.unwrap_err();
    assert_eq!(e, "unknown cluster \"nope\"");
    let e = cli(&hub, &["cluster", "add", "Bad_Name"])
        .await
        .unwrap_err();
    assert!(
        e.starts_with("invalid argument: invalid name \"Bad_Name\""),
        "{e}"
    );
    cli(&hub, &["cluster", "add", "dup"]).await.unwrap();
    let e = cli(&hub, &["cluster", "add", "dup"]).await.unwrap_err();
    assert_eq!(e, "cluster \"dup\" already exists");
    let e = cli(&hub, &["cluster", "label", "dup", "oops"])
        .await
        .unwrap_err();
    assert!(e.contains("must be key=value or key-"), "{e}");
    let e = cli(&hub, &["token", "revoke", "ffff"]).await.unwrap_err();
    assert_eq!(e, "unknown token \"ffff\"");

    // Expired admin credential: refused locally with the file and the time.
    let cred = AdminCredential::load(&hub.credential_path()).unwrap();
    let (cert, key) = hub.issue_expired(&Identity::Admin("admin".into()));
    let expired_path = dir.path().join("expired.yaml");
    AdminCredential {
        cert,
        key,
        ..cred.clone()
    }
    .save(&expired_path)
    .unwrap();
    let e = list_error(expired_path.to_str().unwrap()).await;
    assert!(
        e.starts_with(&format!(
            "admin credential in {} expired at ",
            expired_path.display()
        )),
        "{e}"
    );

    // Missing config file.
    let e = list_error("/nonexistent/flotilla.yaml").await;
    assert!(
        e.starts_with("cannot read /nonexistent/flotilla.yaml"),
        "{e}"
    );

    // Hub unreachable: the address is named.
    let addr = hub.addr();
    hub.stop().await;
    let e = cli(&hub, &["cluster", "list"]).await.unwrap_err();
    assert!(e.starts_with(&format!("cannot reach hub at {addr}")), "{e}");
    assert!(!e.contains('\n'));
}
