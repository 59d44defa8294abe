//! From a git commit to every cluster: a real repository made with the git CLI, a real hub
//! fetching it with gix, rendering, and agents receiving the bundles; bad commits keep the last
//! good revision desired and show their error.

use flotilla_tests::*;
use serde_json::Value;

const FLOTILLA_YAML: &str = "apps:\n  web:\n    path: apps/web\n    namespace: default\n    targets: {matchLabels: {env: prod}}\n    vars: {greeting: hello}\n";

fn manifest(value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\ndata:\n  greeting: \"${{greeting}}\"\n  value: \"{value}\"\n"
    )
}

/// A repository at `dir/repo` with `flotilla.yaml` and web's ConfigMap holding `value`,
/// committed as `message`; returns it and the commit.
fn fleet_repo(dir: &std::path::Path, value: &str, message: &str) -> (TestRepo, String) {
    let repo = TestRepo::init(&dir.join("repo"));
    repo.write("flotilla.yaml", FLOTILLA_YAML);
    repo.write("apps/web/config.yaml", &manifest(value));
    let commit = repo.commit(message);
    (repo, commit)
}

/// Adds the source `name` tracking `repo` (at `git_ref`, when given), polled hourly.
async fn add_source(hub: &TestHub, name: &str, repo: &TestRepo, git_ref: Option<&str>) -> Value {
    let url = repo.path.to_str().unwrap();
    let mut args = vec!["source", "add", name, "--url", url];
    if let Some(r) = git_ref {
        args.extend(["--ref", r]);
    }
    args.extend(["--interval", "1h"]);
    cli_json(hub, &args).await
}

#[tokio::test]
async fn commits_reach_every_targeted_cluster_and_bad_commits_keep_the_last_good_one() {
    let dir = test_dir();
    let (repo, c1) = fleet_repo(dir.path(), "v1", "first");

    let hub = TestHub::start_in(dir.path()).await;
    let mut agents = Vec::new();
    for (name, env) in [("eu-1", "prod"), ("us-1", "prod"), ("dev-1", "dev")] {
        let token = hub.add_cluster(name, &[("env", env)]).await;
        let mut a = TestAgent::start(&dir.path().join(name), Some(token));
        a.connected().await;
        agents.push(a);
    }

    let src = add_source(&hub, "fleet", &repo, Some("main")).await;
    assert_eq!(src["name"], "fleet");
    let src = cli_json(&hub, &["source", "sync", "fleet"]).await;
    assert_eq!(src["commit"], c1.as_str());
    assert!(src["error"].is_null(), "{src}");

    // Both prod clusters get the same bundle (identical renderings share it); dev gets nothing.
    let app = cli_json(&hub, &["app", "get", "web"]).await;
    assert_eq!(app["source"], "fleet");
    assert_eq!(app["commit"], c1.as_str());
    let clusters = app["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 2, "{app}");
    let digest = clusters[0]["bundle_digest"].as_str().unwrap().to_string();
    assert_eq!(clusters[1]["bundle_digest"], digest.as_str());
    for a in agents.iter_mut().take(2) {
        wait_status(&mut a.status, "bundle delivered", |s| {
            s.bundles == vec![digest.clone()]
        })
        .await;
    }
    assert!(agents[2].status.borrow().bundles.is_empty());
    let applied = eventually("applied revision reported", || async {
        let app = cli_json(&hub, &["app", "get", "web"]).await;
        app["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["applied_revision"] == c1.as_str())
            .then_some(app)
    })
    .await;
    assert_eq!(applied["error"], Value::Null);

    // A new commit: a new digest reaches the agents.
    repo.write("apps/web/config.yaml", &manifest("v2"));
    let c2 = repo.commit("second");
    let src = cli_json(&hub, &["source", "sync", "fleet"]).await;
    assert_eq!(src["commit"], c2.as_str());
    let app = cli_json(&hub, &["app", "get", "web"]).await;
    let d2 = app["clusters"][0]["bundle_digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(d2, digest);
    for a in agents.iter_mut().take(2) {
        wait_status(&mut a.status, "second bundle delivered", |s| {
            s.bundles == vec![d2.clone()]
        })
        .await;
    }

    // Relabelling dev-1 into prod makes it a target: the next sync renders for it too.
    cli(&hub, &["cluster", "label", "dev-1", "env=prod"])
        .await
        .unwrap();
    cli_json(&hub, &["source", "sync", "fleet"]).await;
    let app = cli_json(&hub, &["app", "get", "web"]).await;
    assert_eq!(app["clusters"].as_array().unwrap().len(), 3, "{app}");
    wait_status(&mut agents[2].status, "dev-1 gets the app", |s| {
        s.bundles == vec![d2.clone()]
    })
    .await;

    // An invalid flotilla.yaml: the source shows where, and c2 stays desired.
    repo.write(
        "flotilla.yaml",
        "apps:\n  web:\n    path: apps/web\n    targets: {}\n    pipeline: nope\n",
    );
    let c3 = repo.commit("bad config");
    let src = cli_json(&hub, &["source", "sync", "fleet"]).await;
    assert_eq!(src["commit"], c3.as_str(), "the bad commit was fetched");
    let err = src["error"].as_str().unwrap();
    assert!(
        err.contains("flotilla.yaml:") && err.contains("pipeline"),
        "{err}"
    );
    let app = cli_json(&hub, &["app", "get", "web"]).await;
    assert_eq!(app["commit"], c2.as_str());
    assert_eq!(app["clusters"][0]["bundle_digest"], d2.as_str());

    // An undefined variable: the app shows the error, c2 stays desired.
    repo.write("flotilla.yaml", FLOTILLA_YAML);
    repo.write(
        "apps/web/config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  a: \"${missing}\"\n",
    );
    repo.commit("undefined var");
    let src = cli_json(&hub, &["source", "sync", "fleet"]).await;
    assert!(src["error"].is_null());
    let app = cli_json(&hub, &["app", "get", "web"]).await;
    assert!(app["error"].as_str().unwrap().contains("missing"), "{app}");
    assert_eq!(app["commit"], c2.as_str());
    assert_eq!(app["clusters"][0]["bundle_digest"], d2.as_str());
    for a in &agents {
        assert_eq!(a.status.borrow().bundles, vec![d2.clone()]);
    }

    // The list views.
    let list = cli_json(&hub, &["source", "list"]).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let apps = cli_json(&hub, &["app", "list"]).await;
    assert_eq!(apps[0]["name"], "web");
    let table = cli(&hub, &["app", "list"]).await.unwrap();
    assert!(table.contains("eu-1") && table.contains("us-1"), "{table}");

    // Removing the source takes its apps out of the clusters' desired state (confirmed with
    // --yes; without it a script is refused and nothing changes).
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let e = cli(&hub, &["source", "remove", "fleet"]).await.unwrap_err();
        assert!(e.contains("--yes"), "{e}");
        assert_eq!(agents[0].status.borrow().bundles, vec![d2.clone()]);
    }
    let out = cli(&hub, &["source", "remove", "fleet", "--yes"])
        .await
        .unwrap();
    assert!(out.contains("takes 1 apps off 3 clusters"), "{out}");
    for a in agents.iter_mut() {
        wait_status(&mut a.status, "apps removed", |s| s.bundles.is_empty()).await;
    }
    let e = cli(&hub, &["source", "get", "fleet"]).await.unwrap_err();
    assert_eq!(e, "unknown source \"fleet\"");
}

#[tokio::test]
async fn an_unreachable_remote_is_an_error_on_the_source_and_the_hub_keeps_serving() {
    let dir = test_dir();
    let hub = TestHub::start_in(dir.path()).await;
    let missing = dir.path().join("no-such-repo");
    cli_json(
        &hub,
        &[
            "source",
            "add",
            "gone",
            "--url",
            missing.to_str().unwrap(),
            "--interval",
            "1h",
        ],
    )
    .await;
    let src = cli_json(&hub, &["source", "sync", "gone"]).await;
    assert!(src["commit"].is_null());
    assert!(!src["error"].as_str().unwrap().is_empty(), "{src}");
    assert!(src["last_fetch"].is_string());
    let e = cli(&hub, &["source", "add", "gone", "--url", "/x"])
        .await
        .unwrap_err();
    assert_eq!(e, "source \"gone\" already exists");
    let e = cli(&hub, &["app", "get", "nothing"]).await.unwrap_err();
    assert_eq!(e, "unknown app \"nothing\"");
    cli(&hub, &["cluster", "list"]).await.unwrap();
}

#[tokio::test]
async fn symlinks_out_of_the_repository_and_oversized_files_are_app_errors() {
    let dir = test_dir();
    let (repo, good) = fleet_repo(dir.path(), "ok", "good");
    let mut cfg = TestHub::config(dir.path());
    cfg.limits = flotilla_hub::render::Limits {
        max_file_bytes: 4096,
        max_bundle_bytes: 1 << 20,
    };
    let hub = TestHub::start(cfg).await;
    hub.add_cluster("p", &[("env", "prod")]).await;
    add_source(&hub, "s", &repo, None).await;
    cli_json(&hub, &["source", "sync", "s"]).await;
    let digest =
        cli_json(&hub, &["app", "get", "web"]).await["clusters"][0]["bundle_digest"].clone();

    // A symlink that leaves the repository.
    std::os::unix::fs::symlink("../../../etc/passwd", repo.path.join("apps/web/leak.yaml"))
        .unwrap();
    repo.commit("leak");
    cli_json(&hub, &["source", "sync", "s"]).await;
    let app = cli_json(&hub, &["app", "get", "web"]).await;
    assert!(
        app["error"]
            .as_str()
            .unwrap()
            .contains("leaves the repository"),
        "{app}"
    );
    assert_eq!(app["commit"], good.as_str());
    assert_eq!(app["clusters"][0]["bundle_digest"], digest);

    // A file over the configured size limit.
    std::fs::remove_file(repo.path.join("apps/web/leak.yaml")).unwrap();
    repo.write("apps/web/big.yaml", &manifest(&"x".repeat(8192)));
    repo.commit("big");
    cli_json(&hub, &["source", "sync", "s"]).await;
    let app = cli_json(&hub, &["app", "get", "web"]).await;
    let err = app["error"].as_str().unwrap();
    assert!(err.contains("big.yaml") && err.contains("4096"), "{err}");
    assert_eq!(app["commit"], good.as_str());
}

#[tokio::test]
async fn a_force_push_that_removes_the_pinned_commit_keeps_it_desired_and_says_so() {
    let dir = test_dir();
    let (repo, pinned) = fleet_repo(dir.path(), "pinned", "pinned");
    let hub = TestHub::start_in(dir.path()).await;
    hub.add_cluster("p", &[("env", "prod")]).await;
    add_source(&hub, "pin", &repo, Some(&pinned)).await;
    let src = cli_json(&hub, &["source", "sync", "pin"]).await;
    assert_eq!(src["commit"], pinned.as_str());
    let digest =
        cli_json(&hub, &["app", "get", "web"]).await["clusters"][0]["bundle_digest"].clone();

    // Rewrite history so that no branch or tag reaches the pinned commit any more.
    repo.git(&["checkout", "-q", "--orphan", "rewritten"]);
    repo.write("apps/web/config.yaml", &manifest("rewritten"));
    repo.commit("rewritten");
    repo.git(&["branch", "-D", "main"]);
    repo.git(&["branch", "-m", "main"]);

    let src = cli_json(&hub, &["source", "sync", "pin"]).await;
    let err = src["error"].as_str().unwrap();
    assert!(
        err.contains(&pinned[..12]) || err.contains("not found"),
        "{err}"
    );
    let app = cli_json(&hub, &["app", "get", "web"]).await;
    assert_eq!(
        app["commit"],
        pinned.as_str(),
        "the last good revision stays desired"
    );
    assert_eq!(app["clusters"][0]["bundle_digest"], digest);
}

/// `--ref` omitted: the remote's default branch, resolved again at every fetch. An empty
/// remote is a clear error; HEAD moved to another branch is followed at the next sync; HEAD
/// to a deleted branch is an error that keeps the last good revision.
#[tokio::test]
async fn the_default_branch_is_tracked_when_no_ref_is_given_and_followed_when_head_moves() {
    let dir = test_dir();
    let repo = TestRepo::init(&dir.path().join("repo"));
    let hub = TestHub::start_in(dir.path()).await;
    let src = add_source(&hub, "fleet", &repo, None).await;
    assert_eq!(src["ref"], "HEAD");

    // Empty: nothing to track yet, and it says why.
    let src = cli_json(&hub, &["source", "sync", "fleet"]).await;
    let err = src["error"].as_str().expect("an error");
    assert!(err.contains("has no default branch"), "{err}");
    assert!(err.contains("refs/heads/main"), "{err}");
    assert!(src["commit"].is_null(), "{src}");

    // The first commit on main is taken, and shown as HEAD (main).
    repo.write("flotilla.yaml", FLOTILLA_YAML);
    repo.write("apps/web/config.yaml", &manifest("v1"));
    let c1 = repo.commit("first");
    let src = cli_json(&hub, &["source", "sync", "fleet"]).await;
    assert_eq!(src["commit"], c1.as_str(), "{src}");
    assert_eq!(src["resolved_ref"], "refs/heads/main");
    assert!(src["error"].is_null(), "{src}");
    let table = cli(&hub, &["source", "get", "fleet"]).await.unwrap();
    assert!(table.contains("HEAD (main)"), "{table}");

    // The remote's HEAD moves to trunk: the next sync follows it.
    repo.git(&["checkout", "-q", "-b", "trunk"]);
    repo.write("apps/web/config.yaml", &manifest("v2"));
    let c2 = repo.commit("on trunk");
    repo.git(&["checkout", "-q", "main"]);
    repo.write("apps/web/config.yaml", &manifest("v1-main"));
    repo.commit("on main, not followed");
    repo.git(&["symbolic-ref", "HEAD", "refs/heads/trunk"]);
    let src = cli_json(&hub, &["source", "sync", "fleet"]).await;
    assert_eq!(src["commit"], c2.as_str(), "{src}");
    assert_eq!(src["resolved_ref"], "refs/heads/trunk");
    let table = cli(&hub, &["source", "get", "fleet", "-o", "table"])
        .await
        .unwrap();
    assert!(table.contains("HEAD (trunk)"), "{table}");
    let app = cli_json(&hub, &["app", "get", "web"]).await;
    assert_eq!(app["commit"], c2.as_str(), "{app}");

    // HEAD to a deleted branch: an error, and the last good revision stays.
    repo.git(&["symbolic-ref", "HEAD", "refs/heads/gone"]);
    let src = cli_json(&hub, &["source", "sync", "fleet"]).await;
    let err = src["error"].as_str().expect("an error");
    assert!(err.contains("refs/heads/gone"), "{err}");
    assert_eq!(src["commit"], c2.as_str(), "{src}");
    assert_eq!(src["resolved_ref"], "refs/heads/trunk", "as last fetched");
    let app = cli_json(&hub, &["app", "get", "web"]).await;
    assert_eq!(app["commit"], c2.as_str(), "{app}");
}
