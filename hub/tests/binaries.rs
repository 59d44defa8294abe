//! The real `flotilla-hub` binary: configuration errors exit 64 naming the flag, a hub started
//! from the command line writes its admin credential privately and stops on SIGTERM, and its
//! logs suit `kubectl logs`. (That it serves the `flotilla` CLI is in `tests/tests/binaries.rs`.)

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HUB: &str = env!("CARGO_BIN_EXE_flotilla-hub");

fn serve(args: &[&str]) -> std::process::Output {
    Command::new(HUB)
        .arg("serve")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn bad_configuration_exits_64_and_names_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--cert-lifetime", "bogus"], "--cert-lifetime"),
        (&["--cert-lifetime", "0s"], "--cert-lifetime"),
        (&["--listen", "not-an-address"], "--listen"),
        (
            &["--listen", "127.0.0.1:9", "--http-listen", "127.0.0.1:9"],
            "--listen and --http-listen",
        ),
        (&["--trust-domain", "Bad Domain"], "--trust-domain"),
        (
            &[
                "--ca-cert",
                "/nonexistent.pem",
                "--ca-key",
                "/nonexistent.key",
            ],
            "--ca-cert",
        ),
        (&["--ca-cert", "/nonexistent.pem"], "--ca-key"),
        (&["--max-file-size", "8 parsecs"], "--max-file-size"),
        (
            &["--max-file-size", "2MiB", "--max-bundle-size", "1MiB"],
            "--max-file-size",
        ),
        (&["--endpoint", "no-port"], "--endpoint"),
        (&["--lease-time", "1s"], "--lease-time"),
        (&["--endpoint", "h:1,:2"], "--endpoint"),
        (&["--store", "etcd://"], "--store"),
        (&["--store", "etcd://host-without-port"], "--store"),
        (&["--store", "mongodb://db:27017"], "--store"),
        (
            &["--store", "etcd://127.0.0.1:2379"],
            "--ca-cert and --ca-key",
        ),
        (&["--etcd-ca", "/nonexistent.pem"], "--etcd-ca"),
        (
            &[
                "--store",
                "etcd://127.0.0.1:2379",
                "--etcd-ca",
                "/nonexistent.pem",
            ],
            "--etcd-ca",
        ),
        (
            &[
                "--store",
                "etcd://127.0.0.1:2379",
                "--etcd-max-txn-ops",
                "0",
            ],
            "--etcd-max-txn-ops",
        ),
    ];
    for (args, flag) in cases {
        let out = serve(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains(flag),
            "{args:?} should name {flag}: {stderr}"
        );
    }
}

/// The hub serving on free ports with its data in `data`, plus `args`.
fn spawn_hub(data: &Path, args: &[&str], stderr: Stdio) -> std::process::Child {
    Command::new(HUB)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("RUST_LOG")
        .env_remove("FLOTILLA_LOG_JSON")
        .env_remove("FLOTILLA_LOG_FORMAT")
        .stderr(stderr)
        .spawn()
        .unwrap()
}

fn wait_for_file(p: &Path, hub: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.exists() {
        if let Some(status) = hub.try_wait().unwrap() {
            panic!("hub exited early: {status}");
        }
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hub_binary_writes_a_private_admin_credential_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut hub = spawn_hub(&data, &[], Stdio::null());
    let cred = data.join("admin.yaml");
    wait_for_file(&cred, &mut hub);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cred).unwrap().permissions().mode() & 0o777,
        0o600
    );

    Command::new("kill")
        .args(["-TERM", &hub.id().to_string()])
        .status()
        .unwrap();
    let status = hub.wait().unwrap();
    assert!(status.success(), "hub exit: {status}");
}

/// Starts the hub with `args`, stderr piped (as under `kubectl logs`), until it wrote its admin
/// credential; stops it with SIGTERM and returns what it logged.
fn logs_of_a_hub_run(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut hub = spawn_hub(&data, args, Stdio::piped());
    wait_for_file(&data.join("admin.yaml"), &mut hub);
    Command::new("kill")
        .args(["-TERM", &hub.id().to_string()])
        .status()
        .unwrap();
    let out = hub.wait_with_output().unwrap();
    assert!(out.status.success(), "hub exit: {}", out.status);
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn logs_have_no_colour_codes_off_a_terminal_and_log_format_json_writes_json_lines() {
    let text = logs_of_a_hub_run(&[]);
    assert!(text.contains("INFO"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no ANSI escapes when piped: {text:?}"
    );

    let json = logs_of_a_hub_run(&["--log-format", "json"]);
    let lines: Vec<&str> = json.lines().collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }

    let out = serve(&["--log-format", "yaml"]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--log-format") && err.contains("text or json"),
        "{err}"
    );
}

/// A hub whose etcd does not answer fails to start, saying which etcd, instead of serving
/// without its state.
#[test]
fn a_hub_whose_etcd_cannot_be_reached_exits_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = format!("etcd://127.0.0.1:{port}");
    let data = dir.path().join("data");
    // Replicas on etcd share an operator CA; the store is reached (and fails) before it is read.
    let (ca, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
    std::fs::write(&ca, "unused").unwrap();
    std::fs::write(&key, "unused").unwrap();
    let args = [
        "--store",
        &store,
        "--ca-cert",
        ca.to_str().unwrap(),
        "--ca-key",
        key.to_str().unwrap(),
    ];
    let out = spawn_hub(&data, &args, Stdio::piped())
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("etcd"),
        "names the etcd it could not reach: {stderr}"
    );
}
