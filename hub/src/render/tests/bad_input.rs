//! Bad input: each case gives its own specific error.

use super::super::{
    ConfigError, Limits, Location, RenderError, TreeError, load_config, parse_config, render_app,
};
use super::config::billion_laughs;
use super::{Repo, cluster, render_err, repo, web_repo, web_with};

fn render_with(r: &Repo, limits: &Limits) -> Result<(), RenderError> {
    let config = load_config(&r.tree, "", &Limits::default()).expect("valid config");
    render_app(&r.tree, &config, "web", &cluster("c1", &[]), limits).map(|_| ())
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let r = web_repo(&[
        (
            "apps/web/ok.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
        ),
        (
            "apps/web/broken.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [b\n  labels: {}\n",
        ),
    ]);
    let err = render_err(&r);
    let RenderError::Yaml { file, location, .. } = &err else {
        panic!("expected a YAML error, got {err}");
    };
    assert_eq!(file, "apps/web/broken.yaml");
    assert!(location.is_some_and(|l| l.line >= 4), "{err}");
    assert!(
        err.to_string().starts_with("apps/web/broken.yaml:"),
        "{err}"
    );
    assert!(err.to_string().contains("invalid YAML"), "{err}");
}

#[test]
fn malformed_json_names_file_line_and_column() {
    let r = web_repo(&[("apps/web/x.json", "{\n  \"kind\": ,\n}")]);
    let err = render_err(&r);
    assert!(matches!(err, RenderError::Json { line: 2, .. }), "{err}");
    assert!(err.to_string().starts_with("apps/web/x.json:2:"), "{err}");
}

#[test]
fn non_mapping_documents_and_tags_are_rejected() {
    let r = web_repo(&[("apps/web/x.yaml", "- just\n- a list\n")]);
    assert_eq!(
        render_err(&r).to_string(),
        "apps/web/x.yaml (document 1): not a mapping; every document must be a Kubernetes object"
    );
    r.write(
        "apps/web/x.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: !secret a}\n",
    );
    let err = render_err(&r).to_string();
    assert!(err.contains("YAML tag !secret is not supported"), "{err}");
    r.write(
        "apps/web/x.yaml",
        "apiVersion: v1\nkind: ConfigMap\nkind: Secret\n",
    );
    let err = render_err(&r).to_string();
    assert!(
        err.starts_with("apps/web/x.yaml:3:1: invalid YAML: duplicate key \"kind\""),
        "{err}"
    );
}

#[test]
fn invalid_flotilla_yaml() {
    let r = repo(&[
        (
            "flotilla.yaml",
            "apps:\n  web:\n    path: apps/web\n    targets: {}\n    pipeline: nope\n",
        ),
        ("apps/web/a.yaml", ""),
    ]);
    let err = load_config(&r.tree, "", &Limits::default()).unwrap_err();
    let d = err.diagnostic().expect("a diagnostic");
    assert_eq!(d.file, "flotilla.yaml");
    assert_eq!(
        d.location,
        Some(Location {
            line: 5,
            column: 15
        })
    );
    assert_eq!(d.field, "apps.web.pipeline");
    r.write("flotilla.yaml", "apps: [\n");
    assert!(matches!(
        load_config(&r.tree, "", &Limits::default()),
        Err(ConfigError::Invalid(_))
    ));
}

#[test]
fn missing_app_path() {
    let r = web_repo(&[("apps/web/a.yaml", "")]);
    let config = load_config(&r.tree, "", &Limits::default()).unwrap();
    std::fs::remove_dir_all(r.path().join("apps/web")).unwrap();
    let render = |app| {
        render_app(
            &r.tree,
            &config,
            app,
            &cluster("c", &[]),
            &Limits::default(),
        )
    };
    let err = render("web").unwrap_err();
    assert_eq!(err.to_string(), "app web: directory apps/web not found");
    let err = render("nope").unwrap_err();
    assert!(matches!(err, RenderError::UnknownApp(_)));
}

#[test]
fn undefined_variable_names_variable_file_and_document() {
    let r = web_repo(&[(
        "apps/web/x.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\ndata: {size: '${size}'}\n",
    )]);
    let err = render_err(&r);
    assert!(matches!(err, RenderError::Variable { .. }));
    assert!(
        err.to_string()
            .starts_with("apps/web/x.yaml (document 2): undefined variable \"size\""),
        "{err}"
    );
}

#[test]
fn symlink_leaving_the_repository_is_rejected() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(
        outside.path().join("secret.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n",
    )
    .unwrap();
    let r = web_repo(&[("apps/web/a.yaml", "")]);
    r.symlink("apps/web/escape.yaml", "../../../secret.yaml");
    let err = render_err(&r);
    assert!(
        matches!(&err, RenderError::Tree(TreeError::SymlinkEscapes { link, target })
            if link == "apps/web/escape.yaml" && target == "../../../secret.yaml"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "symlink apps/web/escape.yaml -> ../../../secret.yaml leaves the repository"
    );
    std::fs::remove_file(r.path().join("apps/web/escape.yaml")).unwrap();
    let absolute = outside.path().join("secret.yaml");
    r.symlink("apps/web/abs.yaml", absolute.to_str().unwrap());
    assert!(matches!(
        render_err(&r),
        RenderError::Tree(TreeError::SymlinkEscapes { .. })
    ));
    std::fs::remove_file(r.path().join("apps/web/abs.yaml")).unwrap();
    // A directory link that escapes, used as the app path itself.
    r.symlink("apps/linked", outside.path().to_str().unwrap());
    let config = "apps:\n  web: {path: apps/linked, namespace: web, targets: {}}\n";
    r.write("flotilla.yaml", config);
    let err = load_config(&r.tree, "", &Limits::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("flotilla.yaml:2:15: apps.web.path: symlink apps/linked -> "),
        "{err}"
    );
}

#[test]
fn symlink_loops_are_stopped() {
    let r = web_repo(&[("apps/web/a.yaml", "")]);
    r.symlink("apps/web/ping.yaml", "pong.yaml");
    r.symlink("apps/web/pong.yaml", "ping.yaml");
    assert!(matches!(
        render_err(&r),
        RenderError::Tree(TreeError::SymlinkLoop { .. })
    ));
    std::fs::remove_file(r.path().join("apps/web/ping.yaml")).unwrap();
    std::fs::remove_file(r.path().join("apps/web/pong.yaml")).unwrap();
    r.symlink("apps/web/sub/up", "../..");
    let err = render_err(&r);
    assert!(
        matches!(&err, RenderError::Tree(TreeError::SymlinkCycle { link }) if link == "apps/web/sub/up"),
        "{err}"
    );
}

#[test]
fn file_over_the_size_limit() {
    let big = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: a}}\ndata: {{x: '{}'}}\n",
        "x".repeat(200)
    );
    let r = web_repo(&[("apps/web/big.yaml", &big)]);
    let limits = Limits {
        max_file_bytes: 100,
        max_bundle_bytes: 1 << 20,
    };
    let err = render_with(&r, &limits).unwrap_err();
    assert!(
        matches!(err, RenderError::FileTooLarge { limit: 100, .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "apps/web/big.yaml: {} bytes is over the file size limit of 100 bytes",
            big.len()
        )
    );
    render_with(&r, &Limits::default()).unwrap();
}

#[test]
fn bundle_over_the_size_limit() {
    // Variables can make the rendered bundle much larger than its sources.
    let config = web_with(&format!("    vars: {{blob: {}}}\n", "z".repeat(200)));
    let r = repo(&[("flotilla.yaml", &config)]);
    for i in 0..6 {
        r.write(
            &format!("apps/web/{i}.yaml"),
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}}}\ndata: {{x: '${{blob}}'}}\n"),
        );
    }
    let limits = Limits {
        max_file_bytes: 1 << 20,
        max_bundle_bytes: 1000,
    };
    let err = render_with(&r, &limits).unwrap_err();
    assert!(
        matches!(err, RenderError::BundleTooLarge { limit: 1000, .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("app web: the rendered bundle is "),
        "{err}"
    );
    // Sources that alone outgrow the limit stop while they are read.
    for i in 0..10 {
        r.write(
            &format!("apps/web/{i}.yaml"),
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}}}\ndata: {{x: '{}'}}\n",
                "y".repeat(200)
            ),
        );
    }
    let err = render_with(&r, &limits).unwrap_err();
    assert!(
        matches!(err, RenderError::ExpansionLimit { limit: 1000, .. }),
        "{err}"
    );
}

#[test]
fn yaml_alias_bombs_fail_fast() {
    // The classic billion laughs: serde_yaml_ng's alias repetition limit stops it.
    let bomb = format!(
        "{}apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: lol}}\n",
        billion_laughs()
    );
    let r = web_repo(&[("apps/web/bomb.yaml", &bomb)]);
    let err = render_err(&r);
    assert!(matches!(err, RenderError::AliasBomb { .. }), "{err}");
    assert!(err.to_string().contains("alias bomb"), "{err}");

    // Few aliases to a large anchor stay under that limit but not under the size budget.
    let mut wide =
        String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: wide}\nbase: &b [");
    wide.push_str(&vec!["\"0123456789abcdef\""; 2000].join(", "));
    wide.push_str("]\ndata:\n");
    for i in 0..500 {
        wide.push_str(&format!("  k{i}: *b\n"));
    }
    r.write("apps/web/bomb.yaml", &wide);
    let limits = Limits {
        max_file_bytes: 1 << 20,
        max_bundle_bytes: 4 << 20,
    };
    let err = render_with(&r, &limits).unwrap_err();
    assert!(matches!(err, RenderError::ExpansionLimit { .. }), "{err}");
}

#[test]
fn flotilla_yaml_errors_through_parse_config_are_specific() {
    let err = parse_config(
        "fleet/flotilla.yaml",
        "apps: {web: {path: w, targets: {}, pipeline: x}}\n",
        &Limits::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "fleet/flotilla.yaml:1:46: apps.web.pipeline: unknown pipeline \"x\""
    );
}
