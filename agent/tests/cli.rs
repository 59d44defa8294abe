//! The `flotilla-agent` binary's flags: state location, cluster backend and kubeconfig errors are
//! reported clearly before the agent dials anything.

use std::path::Path;
use std::process::{Command, Output};

fn agent(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        // Tests run at once: each agent takes a free port instead of the default 9465.
        .env("FLOTILLA_METRICS_LISTEN", "127.0.0.1:0")
        .output()
        .expect("run flotilla-agent")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs the agent with `args` in a fresh home, asserts that it exits with `code`, and returns
/// its stderr.
fn agent_exits(code: i32, args: &[&str]) -> String {
    let home = tempfile::tempdir().unwrap();
    let o = agent(args, home.path());
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
    err
}

/// Asserts that `text` contains each of `parts`.
fn assert_contains(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
}

#[test]
fn bad_state_secret_exits_64_naming_the_flag() {
    for bad in ["no-slash", "a/b/c", "UPPER/x", "ns/"] {
        let err = agent_exits(64, &["--state-secret", bad]);
        assert_contains(&err, &["--state-secret"]);
    }
}

#[test]
fn state_dir_and_state_secret_conflict() {
    let home = tempfile::tempdir().unwrap();
    let o = agent(
        &["--state-dir", "x", "--state-secret", "ns/name"],
        home.path(),
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_contains(&err, &["--state-dir", "--state-secret"]);
}

#[test]
fn missing_kubeconfig_is_a_clear_error_before_anything_else() {
    let home = tempfile::tempdir().unwrap();
    let state = home.path().join("state");
    let o = agent(
        &[
            "--cluster",
            "kube",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
            "--state-dir",
            state.to_str().unwrap(),
            "--join",
            "flotilla-join:garbage",
        ],
        home.path(),
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_contains(&err, &["--kubeconfig /nonexistent/kubeconfig"]);
    // It stopped before the token was even decoded, and wrote nothing.
    assert!(!err.contains("join token"), "{err}");
    assert!(!state.exists());
}

#[test]
fn kube_without_any_config_says_so() {
    let err = agent_exits(1, &["--cluster", "kube", "--state-secret", "ns/x"]);
    assert_contains(&err, &["no in-cluster config and no --kubeconfig"]);
}

#[test]
fn simulated_secret_state_is_labelled_and_not_joined() {
    let err = agent_exits(
        1,
        &["--cluster", "simulated", "--state-secret", "flotilla/agent"],
    );
    assert_contains(
        &err,
        &[
            "cluster backend: simulated (in-memory, not a real Kubernetes API)",
            "lost when the process exits",
            "no identity in Secret flotilla/agent and no --join token given",
        ],
    );
}

#[test]
fn bad_reconcile_flags_exit_64_naming_the_flag() {
    let err = agent_exits(64, &["--namespace", "Not_A_Namespace"]);
    assert_contains(&err, &["--namespace"]);
    let err = agent_exits(64, &["--drift-interval", "0s"]);
    assert_contains(&err, &["--drift-interval"]);
    let home = tempfile::tempdir().unwrap();
    let o = agent(&["--drift-interval", "soon"], home.path());
    assert!(!o.status.success());
    assert_contains(&stderr(&o), &["--drift-interval"]);
}

#[test]
fn logs_have_no_colour_codes_when_piped_and_json_on_request() {
    let home = tempfile::tempdir().unwrap();
    let args = ["--cluster", "simulated", "--state-secret", "flotilla/agent"];
    let o = agent(&args, home.path());
    let text = stderr(&o);
    assert!(text.contains("INFO"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no ANSI escapes when piped: {text:?}"
    );

    let mut json_args = args.to_vec();
    json_args.extend(["--log-format", "json"]);
    let o = agent(&json_args, home.path());
    let logged: Vec<serde_json::Value> = stderr(&o)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        logged.iter().any(|v| v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("simulated"))),
        "{}",
        stderr(&o)
    );
}
