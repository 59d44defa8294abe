//! The `flotilla` binary on its own: without a reachable hub or config, errors are one line on
//! stderr and exit 1; `flotilla demo` away from the hub and agent binaries says what it needs.

use std::process::Command;

const CLI: &str = env!("CARGO_BIN_EXE_flotilla");

#[test]
fn a_missing_config_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(CLI)
        .arg("--config")
        .arg(dir.path().join("absent.yaml"))
        .args(["cluster", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("flotilla: cannot read"), "{err}");
    assert!(err.contains("FLOTILLA_CONFIG"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn the_demo_names_the_binaries_it_needs_when_they_are_missing() {
    // A copy of the CLI alone in a directory, with nothing on PATH.
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("flotilla");
    std::fs::copy(CLI, &alone).unwrap();
    let out = Command::new(&alone)
        .args(["demo", "--plain"])
        .env("PATH", "")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("flotilla-hub") && err.contains("cargo build --release"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
