//! Git webhooks on the HTTP side port: a signed push event (GitHub, Gitea or GitLab style)
//! triggers a fetch at once; a bad or missing signature is refused and changes nothing.

use flotilla_hub::api::webhook::github_signature;
use flotilla_tests::*;

/// The push event every delivery in this test sends.
const BODY: &[u8] = br#"{"ref":"refs/heads/main"}"#;

/// Posts the push event to the webhook of `source` with `headers`; returns the status code.
async fn post(addr: std::net::SocketAddr, source: &str, headers: &[(&str, &str)]) -> u16 {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    flotilla_tests::bench::hub::http_post(addr, &format!("/hooks/git/{source}"), &all, BODY)
        .await
        .unwrap()
        .0
}

/// Waits until the source `fleet` has fetched `commit`; returns the source.
async fn wait_fetched(hub: &TestHub, what: &str, commit: &str) -> serde_json::Value {
    eventually(what, || async {
        let s = cli_json(hub, &["source", "get", "fleet"]).await;
        (s["commit"] == commit).then_some(s)
    })
    .await
}

const CONFIG: &str = "apps:\n  web:\n    path: web\n    targets: {}\n    namespace: web\n";

fn cm(v: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  v: \"{v}\"\n")
}

#[tokio::test]
async fn signed_webhooks_trigger_a_fetch_and_bad_ones_are_refused() {
    let dir = test_dir();
    let repo = TestRepo::init(&dir.path().join("repo"));
    repo.write("flotilla.yaml", CONFIG);
    repo.write("web/c.yaml", &cm("1"));
    let c1 = repo.commit("one");
    let secret_path = dir.path().join("hook-secret");
    std::fs::write(&secret_path, "s3cret\n").unwrap();

    let cfg = TestHub::config(dir.path());
    let (hub, http_addr) = TestHub::start_with_http(cfg).await;

    let url = repo.path.to_str().unwrap().to_string();
    let hook = secret_path.to_str().unwrap().to_string();
    cli_json(
        &hub,
        &[
            "source",
            "add",
            "fleet",
            "--url",
            &url,
            "--interval",
            "1h",
            "--webhook-secret-file",
            &hook,
        ],
    )
    .await;
    let src = wait_fetched(&hub, "the first sync", &c1).await;
    assert!(src["error"].is_null());

    repo.write("web/c.yaml", &cm("2"));
    let c2 = repo.commit("two");

    // Refused: wrong signature, missing signature, unknown source. Nothing is fetched.
    let bad = github_signature("wrong", BODY);
    let wrong = [("X-Hub-Signature-256", bad.as_str())];
    assert_eq!(post(http_addr, "fleet", &wrong).await, 401);
    assert_eq!(post(http_addr, "fleet", &[]).await, 401);
    let gitlab = [("X-Gitlab-Token", "s3cret")];
    assert_eq!(post(http_addr, "nope", &gitlab).await, 404);
    assert_eq!(
        cli_json(&hub, &["source", "get", "fleet"]).await["commit"],
        c1.as_str()
    );

    // GitHub-style signature: accepted, and the new commit is fetched without waiting an hour.
    let good = github_signature("s3cret", BODY);
    let github = [("X-Hub-Signature-256", good.as_str())];
    assert_eq!(post(http_addr, "fleet", &github).await, 202);
    wait_fetched(&hub, "the webhook-triggered fetch", &c2).await;

    // GitLab-style token and Gitea-style signature work too.
    repo.write("web/c.yaml", &cm("3"));
    let c3 = repo.commit("three");
    assert_eq!(post(http_addr, "fleet", &gitlab).await, 202);
    wait_fetched(&hub, "the gitlab-triggered fetch", &c3).await;
    repo.write("web/c.yaml", &cm("4"));
    let c4 = repo.commit("four");
    let gitea = [("X-Gitea-Signature", good.trim_start_matches("sha256="))];
    assert_eq!(post(http_addr, "fleet", &gitea).await, 202);
    wait_fetched(&hub, "the gitea-triggered fetch", &c4).await;
    let metrics = hub.running().metrics.encode();
    assert_contains(
        &metrics,
        "flotilla_hub_webhooks_total{result=\"refused\"} 2",
    );
    assert_contains(&metrics, "flotilla_hub_webhooks_total{result=\"ok\"} 3");
}
