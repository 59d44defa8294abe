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

#[test]
fn bad_state_secret_exits_64_naming_the_flag() {
    let home = tempfile::tempdir().unwrap();
    for bad in ["no-slash", "a/b/c", "UPPER/x", "ns/"] {
        let o = agent(&["--state-secret", bad], home.path());
        assert_eq!(o.status.code(), Some(64), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains("--state-secret"), "{}", stderr(&o));
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
    assert!(
        err.contains("--state-dir") && err.contains("--state-secret"),
        "{err}"
    );
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
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("--kubeconfig /nonexistent/kubeconfig"),
        "{err}"
    );
    // It stopped before the token was even decoded, and wrote nothing.
    assert!(!err.contains("join token"), "{err}");
    assert!(!state.exists());
}

#[test]
fn kube_without_any_config_says_so() {
    let home = tempfile::tempdir().unwrap();
    let o = agent(
        &["--cluster", "kube", "--state-secret", "ns/x"],
        home.path(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no in-cluster config and no --kubeconfig"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn simulated_secret_state_is_labelled_and_not_joined() {
    let home = tempfile::tempdir().unwrap();
    let o = agent(
        &["--cluster", "simulated", "--state-secret", "flotilla/agent"],
        home.path(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("cluster backend: simulated (in-memory, not a real Kubernetes API)"),
        "{err}"
    );
    assert!(err.contains("lost when the process exits"), "{err}");
    assert!(
        err.contains("no identity in Secret flotilla/agent and no --join token given"),
        "{err}"
    );
}

#[test]
fn bad_reconcile_flags_exit_64_naming_the_flag() {
    let home = tempfile::tempdir().unwrap();
    let o = agent(&["--namespace", "Not_A_Namespace"], home.path());
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("--namespace"), "{}", stderr(&o));
    let o = agent(&["--drift-interval", "0s"], home.path());
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("--drift-interval"), "{}", stderr(&o));
    let o = agent(&["--drift-interval", "soon"], home.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--drift-interval"), "{}", stderr(&o));
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
