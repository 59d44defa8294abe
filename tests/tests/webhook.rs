//! Git webhooks on the HTTP side port: a signed push event (GitHub, Gitea or GitLab style)
//! triggers a fetch at once; a bad or missing signature is refused and changes nothing.

use flotilla_hub::api::webhook::github_signature;
use flotilla_tests::*;

async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> u16 {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    flotilla_tests::bench::hub::http_post(addr, path, &all, body)
        .await
        .unwrap()
        .0
}

const CONFIG: &str = "apps:\n  web:\n    path: web\n    targets: {}\n    namespace: web\n";

fn cm(v: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  v: \"{v}\"\n")
}

#[tokio::test]
async fn signed_webhooks_trigger_a_fetch_and_bad_ones_are_refused() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
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
    let src = eventually("the first sync", || async {
        let s = cli_json(&hub, &["source", "get", "fleet"]).await;
        (s["commit"] == c1.as_str()).then_some(s)
    })
    .await;
    assert!(src["error"].is_null());

    repo.write("web/c.yaml", &cm("2"));
    let c2 = repo.commit("two");
    let body = br#"{"ref":"refs/heads/main"}"#;

    // Refused: wrong signature, missing signature, unknown source. Nothing is fetched.
    let bad = github_signature("wrong", body);
    assert_eq!(
        post(
            http_addr,
            "/hooks/git/fleet",
            &[("X-Hub-Signature-256", &bad)],
            body
        )
        .await,
        401
    );
    assert_eq!(post(http_addr, "/hooks/git/fleet", &[], body).await, 401);
    assert_eq!(
        post(
            http_addr,
            "/hooks/git/nope",
            &[("X-Gitlab-Token", "s3cret")],
            body
        )
        .await,
        404
    );
    assert_eq!(
        cli_json(&hub, &["source", "get", "fleet"]).await["commit"],
        c1.as_str()
    );

    // GitHub-style signature: accepted, and the new commit is fetched without waiting an hour.
    let good = github_signature("s3cret", body);
    assert_eq!(
        post(
            http_addr,
            "/hooks/git/fleet",
            &[("X-Hub-Signature-256", &good)],
            body
        )
        .await,
        202
    );
    eventually("the webhook-triggered fetch", || async {
        let s = cli_json(&hub, &["source", "get", "fleet"]).await;
        (s["commit"] == c2.as_str()).then_some(())
    })
    .await;

    // GitLab-style token and Gitea-style signature work too.
    repo.write("web/c.yaml", &cm("3"));
    let c3 = repo.commit("three");
    assert_eq!(
        post(
            http_addr,
            "/hooks/git/fleet",
            &[("X-Gitlab-Token", "s3cret")],
            body
        )
        .await,
        202
    );
    eventually("the gitlab-triggered fetch", || async {
        let s = cli_json(&hub, &["source", "get", "fleet"]).await;
        (s["commit"] == c3.as_str()).then_some(())
    })
    .await;
    repo.write("web/c.yaml", &cm("4"));
    let c4 = repo.commit("four");
    let gitea = good.trim_start_matches("sha256=").to_string();
    assert_eq!(
        post(
            http_addr,
            "/hooks/git/fleet",
            &[("X-Gitea-Signature", &gitea)],
            body
        )
        .await,
        202
    );
    eventually("the gitea-triggered fetch", || async {
        let s = cli_json(&hub, &["source", "get", "fleet"]).await;
        (s["commit"] == c4.as_str()).then_some(())
    })
    .await;
    let metrics = hub.running().metrics.encode();
    assert!(
        metrics.contains("flotilla_hub_webhooks_total{result=\"refused\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flotilla_hub_webhooks_total{result=\"ok\"} 3"),
        "{metrics}"
    );
}
