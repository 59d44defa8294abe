//! The real binaries together: a `flotilla-hub` started from the command line serves the real
//! `flotilla` CLI through the admin credential it wrote; CLI errors are one line and exit 1.

use std::process::Command;

use flotilla_tests::bin;
use flotilla_tests::hub_process::{Hub, free_port};

#[test]
fn the_hub_binary_serves_the_cli_binary() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let hub = Hub::start(&data, free_port(), free_port());

    let v = hub.cli(&["cluster", "add", "eu-1", "--label", "region=eu"]);
    assert!(v["token"].as_str().unwrap().starts_with("flotilla-join:"));
    assert_eq!(v["labels"]["region"], "eu", "{v}");

    let out = Command::new(bin("flotilla"))
        .env("FLOTILLA_CONFIG", data.join("admin.yaml"))
        .args(["cluster", "get", "missing"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "flotilla: unknown cluster \"missing\"\n"
    );
}
