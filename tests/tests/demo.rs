//! `flotilla demo` as a user runs it: the real `flotilla` binary starts the real `flotilla-hub`
//! and six `flotilla-agent` processes on simulated clusters and drives them through the Admin
//! API. And the example fleet it commits renders as the demo needs.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use flotilla_cli::demo::fleet::{
    APP, CLUSTERS, CONFIG, DEPLOYMENT, FILES, PIPELINE, break_release,
};
use flotilla_hub::render::{ClusterInfo, DirTree, Limits, load_config, render_app};
use flotilla_tests::bin;

/// The six demo clusters, as `flotilla demo` names them.
const DEMO_CLUSTERS: [&str; 6] = [
    "ap-southeast-1a",
    "ap-southeast-1b",
    "eu-west-1a",
    "eu-west-1b",
    "us-east-1a",
    "us-east-1b",
];

/// Runs `flotilla demo --plain ARGS` as a user does, to its end.
fn demo(args: &[&str]) -> Output {
    Command::new(bin("flotilla"))
        .args(["demo", "--plain"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_demo_promotes_a_release_across_six_clusters_and_rolls_back_a_bad_one() {
    // The command exactly as a user runs it, with the final state as JSON instead of tables.
    let out = demo(&["-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names = |list: &serde_json::Value| -> Vec<String> {
        let mut n: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };

    // Six clusters in three regions, connected, each on a simulated cluster.
    let clusters = v["clusters"].as_array().unwrap();
    let mut seen: Vec<&str> = clusters
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, DEMO_CLUSTERS);
    for c in clusters {
        assert_eq!(c["state"], "connected", "{c}");
        assert_eq!(c["backend"], "simulated", "{c}");
    }

    let rollouts = v["rollouts"].as_array().unwrap();
    assert_eq!(rollouts.len(), 2, "{v}");
    let (good, bad) = (&rollouts[0], &rollouts[1]);
    let stage_names: Vec<&str> = good["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(stage_names, ["canary", "eu", "us", "ap"]);

    // The first release went through every stage and reached every cluster.
    assert_eq!(good["state"], "succeeded", "{good}");
    let mut updated = Vec::new();
    for s in good["stages"].as_array().unwrap() {
        assert_eq!(s["state"], "succeeded", "{s}");
        assert_eq!(names(&s["updated"]), names(&s["clusters"]), "{s}");
        updated.extend(names(&s["updated"]));
    }
    updated.sort();
    assert_eq!(updated, DEMO_CLUSTERS);

    // The bad release failed in the canary stage and was rolled back; no later stage started.
    assert_eq!(bad["state"], "rolled_back", "{bad}");
    assert_ne!(bad["revision"], good["revision"]);
    let stages = bad["stages"].as_array().unwrap();
    assert_eq!(stages[0]["name"], "canary");
    assert_eq!(stages[0]["state"], "failed", "{bad}");
    assert_eq!(names(&stages[0]["updated"]), ["eu-west-1a"]);
    assert!(stages[0]["failures"]["eu-west-1a"].is_string(), "{bad}");
    assert!(
        bad["message"]
            .as_str()
            .unwrap()
            .contains("stage canary failed"),
        "{bad}"
    );
    for s in &stages[1..] {
        assert_eq!(s["state"], "pending", "{s}");
        assert_eq!(s["updated"], serde_json::json!([]), "{s}");
    }

    // Every cluster is back on (or never left) the good revision, and healthy.
    assert_eq!(v["last_good"], good["revision"]);
    let web = v["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "web")
        .unwrap();
    let on = web["clusters"].as_array().unwrap();
    assert_eq!(on.len(), 6, "{web}");
    for c in on {
        assert_eq!(c["desired_revision"], good["revision"], "{c}");
        assert_eq!(c["applied_revision"], good["revision"], "{c}");
        assert_eq!(c["health"], "healthy", "{c}");
    }
}

#[test]
fn the_demo_fails_with_a_clear_message_when_a_step_takes_too_long() {
    // The pipeline soaks four stages for 2s each: the promotion cannot finish within 3s.
    let out = demo(&["--timeout", "3s"]);
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    let last = e.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("flotilla: ") && last.contains("within 3s"),
        "{e}"
    );
}

#[test]
fn the_example_fleet_of_the_demo_is_valid() {
    use flotilla_hub::render::OnFailure;

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/fleet");
    let tree = DirTree::new(&root);
    let config = load_config(&tree, "", &Limits::default()).unwrap_or_else(|e| panic!("{e}"));
    let web = &config.apps["web"];
    assert_eq!(web.pipeline.as_deref(), Some("regions"));
    let regions = &config.pipelines["regions"];
    assert_eq!(regions.on_failure, OnFailure::Rollback);
    assert!(regions.health_timeout <= Duration::from_secs(10));
    let stages: Vec<&str> = regions.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(stages, ["canary", "eu", "us", "ap"]);
    // It renders for each demo cluster.
    for name in DEMO_CLUSTERS {
        let region = name.trim_end_matches(['a', 'b']);
        let ring = if name == "eu-west-1a" {
            "canary"
        } else {
            "main"
        };
        let cluster = ClusterInfo::new(name, [("env", "demo"), ("region", region), ("ring", ring)]);
        let r = render_app(&tree, &config, "web", &cluster, &Limits::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            r.objects.iter().any(|o| o["kind"] == "Deployment"),
            "{name}"
        );
    }
}

fn write_files(dir: &Path, files: &[(&str, String)]) {
    for (path, text) in files {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
    }
}

fn clusters() -> Vec<ClusterInfo> {
    CLUSTERS
        .iter()
        .map(|(name, region, ring)| {
            ClusterInfo::new(*name, [("env", "demo"), ("region", region), ("ring", ring)])
        })
        .collect()
}

fn deployment(objects: &[serde_json::Value]) -> &serde_json::Value {
    objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment")
}

#[test]
fn each_demo_cluster_is_in_exactly_one_stage() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<_> = FILES.iter().map(|(p, t)| (*p, t.to_string())).collect();
    write_files(dir.path(), &files);
    let config = load_config(&DirTree::new(dir.path()), "", &Limits::default()).unwrap();
    let pipeline = &config.pipelines[PIPELINE];
    assert_eq!(config.apps[APP].pipeline.as_deref(), Some(PIPELINE));
    let clusters = clusters();
    let mut per_stage: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in &clusters {
        assert!(config.apps[APP].targets.matches(&c.labels), "{}", c.name);
        let stages: Vec<&str> = pipeline
            .stages
            .iter()
            .filter(|s| s.selector.matches(&c.labels))
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(stages.len(), 1, "{}: {stages:?}", c.name);
        per_stage.entry(stages[0]).or_default().push(&c.name);
    }
    assert_eq!(per_stage["canary"], ["eu-west-1a"]);
    assert_eq!(per_stage.len(), pipeline.stages.len());
}

#[test]
fn the_bad_release_renders_a_failing_deployment_and_the_good_one_does_not() {
    let good: Vec<_> = FILES.iter().map(|(p, t)| (*p, t.to_string())).collect();
    let config = &good.iter().find(|(p, _)| *p == CONFIG).unwrap().1;
    let dep = &good.iter().find(|(p, _)| *p == DEPLOYMENT).unwrap().1;
    let (bad_config, bad_dep) = break_release(config, dep).unwrap();
    let bad: Vec<_> = good
        .iter()
        .map(|(p, t)| match *p {
            CONFIG => (*p, bad_config.clone()),
            DEPLOYMENT => (*p, bad_dep.clone()),
            _ => (*p, t.clone()),
        })
        .collect();
    let canary = &clusters()[0];
    for (files, fails, image) in [(good, false, "nginx:1.27.3"), (bad, true, "nginx:1.28.0")] {
        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path(), &files);
        let tree = DirTree::new(dir.path());
        let config = load_config(&tree, "", &Limits::default()).unwrap();
        let r = render_app(&tree, &config, APP, canary, &Limits::default()).unwrap();
        let d = deployment(&r.objects);
        let annotation = &d["metadata"]["annotations"]["flotilla.io/simulate"];
        assert_eq!(annotation == "fail", fails, "{d}");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["image"],
            image
        );
    }
}
