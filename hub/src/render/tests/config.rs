//! `flotilla.yaml`: the DESIGN.md sketch, and every validation error with its file, line,
//! column and field.

use std::time::Duration;

use super::super::{
    Approval, ConfigError, CountOrPercent, Limits, OnFailure, Problem, SelectorOperator, VarValue,
    load_config, parse_config,
};
use super::{cluster, repo};

/// The sketch from DESIGN.md, plus the `infra` app it depends on.
const SKETCH: &str = "\
apps:
  web:
    path: apps/web                 # directory of manifests, read recursively
    namespace: web                 # default for namespaced objects without one
    targets: {matchLabels: {env: prod}}
    vars: {replicas: \"2\"}          # ${replicas}, ${cluster.name}, ${cluster.labels.region}
    overlays:
      - when: {matchLabels: {region: eu-west-1}}
        vars: {replicas: \"5\"}
        patches: [apps/web/patches/eu.yaml]   # JSON merge patches matched by kind/name
    dependsOn: [infra]
    pipeline: regions
  infra:
    path: apps/infra
    targets: {}
pipelines:
  regions:
    stages:
      - {name: canary, selector: {matchLabels: {ring: canary}}, soak: 10m}
      - {name: eu, selector: {matchLabels: {geo: eu}}, maxParallel: 25%, soak: 30m}
      - {name: us, selector: {matchLabels: {geo: us}}, approval: manual}
    onFailure: rollback            # or halt
    healthTimeout: 10m
";

/// The error message of parsing `text` as `flotilla.yaml`.
fn error_of(text: &str) -> String {
    match parse_config("flotilla.yaml", text, &Limits::default()) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn problem_of(text: &str) -> Problem {
    match parse_config("flotilla.yaml", text, &Limits::default()) {
        Err(ConfigError::Invalid(d)) => d.problem,
        other => panic!("expected an invalid config, got {other:?}"),
    }
}

/// Asserts that parsing `text` fails with a message starting with `prefix`.
fn assert_error_starts_with(text: &str, prefix: &str) {
    let err = error_of(text);
    assert!(err.starts_with(prefix), "{err}");
}

/// Asserts that parsing `text` fails with a message containing `part`.
fn assert_error_contains(text: &str, part: &str) {
    let err = error_of(text);
    assert!(err.contains(part), "{err}");
}

/// A minimal valid app followed by `extra` lines under `apps:`, and `pipelines` text.
fn with_app(app_lines: &str, pipelines: &str) -> String {
    format!("apps:\n  web:\n    path: apps/web\n    targets: {{}}\n{app_lines}{pipelines}")
}

#[test]
fn design_sketch_parses() {
    let r = repo(&[
        ("flotilla.yaml", SKETCH),
        ("apps/web/deploy.yaml", ""),
        ("apps/web/patches/eu.yaml", ""),
        ("apps/infra/ns.yaml", ""),
    ]);
    let config = r.config();
    let web = &config.apps["web"];
    assert_eq!(web.path, "apps/web");
    assert_eq!(web.namespace.as_deref(), Some("web"));
    assert_eq!(web.vars["replicas"], VarValue::String("2".into()));
    assert_eq!(web.overlays[0].patches, ["apps/web/patches/eu.yaml"]);
    assert_eq!(web.depends_on, ["infra"]);
    assert_eq!(web.pipeline.as_deref(), Some("regions"));
    assert!(
        web.targets
            .matches(&cluster("a", &[("env", "prod")]).labels)
    );
    assert!(!web.targets.matches(&cluster("b", &[("env", "dev")]).labels));
    let regions = &config.pipelines["regions"];
    assert_eq!(regions.on_failure, OnFailure::Rollback);
    assert_eq!(regions.health_timeout, Duration::from_secs(600));
    assert_eq!(regions.failure_threshold, CountOrPercent::Count(1));
    let [canary, eu, us] = &regions.stages[..] else {
        panic!("three stages");
    };
    assert_eq!(canary.soak, Duration::from_secs(600));
    assert_eq!(canary.max_parallel, CountOrPercent::Percent(100));
    assert_eq!(eu.max_parallel, CountOrPercent::Percent(25));
    assert_eq!(eu.soak, Duration::from_secs(1800));
    assert_eq!(us.approval, Approval::Manual);
    assert_eq!(canary.approval, Approval::Auto);
    assert_eq!(config.dependency_order(), ["infra", "web"]);
}

#[test]
fn pipeline_fields_parse_with_every_form() {
    let text = with_app(
        "    pipeline: p\n",
        "pipelines:\n  p:\n    stages:\n      - name: all\n        selector:\n          \
         matchExpressions:\n            - {key: geo, operator: NotIn, values: [us]}\n            \
         - {key: gpu, operator: DoesNotExist}\n        maxParallel: 3\n    onFailure: halt\n    \
         failureThreshold: 10%\n    healthTimeout: 1h30m\n",
    );
    let config = parse_config("flotilla.yaml", &text, &Limits::default()).unwrap();
    let p = &config.pipelines["p"];
    assert_eq!(p.on_failure, OnFailure::Halt);
    assert_eq!(p.failure_threshold, CountOrPercent::Percent(10));
    assert_eq!(p.health_timeout, Duration::from_secs(5400));
    assert_eq!(p.stages[0].max_parallel, CountOrPercent::Count(3));
    let exprs = &p.stages[0].selector.match_expressions;
    assert_eq!(exprs[1].operator, SelectorOperator::DoesNotExist);
    // Serializes back to the same model.
    let yaml = serde_yaml_ng::to_string(&config).unwrap();
    let again = parse_config("flotilla.yaml", &yaml, &Limits::default()).unwrap();
    assert_eq!(again, config);
}

#[test]
fn unknown_field_is_an_error_with_position() {
    assert_error_starts_with(
        &with_app("    pipline: regions\n", ""),
        "flotilla.yaml:5:5: apps.web: unknown field `pipline`",
    );
}

#[test]
fn unknown_pipeline() {
    assert_eq!(
        error_of(&with_app(
            "    pipeline: regionz\n",
            "pipelines:\n  regions:\n    stages: [{name: a, selector: {}}]\n"
        )),
        "flotilla.yaml:5:15: apps.web.pipeline: unknown pipeline \"regionz\""
    );
}

#[test]
fn depends_on_unknown_app() {
    assert_eq!(
        error_of(&with_app("    dependsOn: [db, cache]\n", "")),
        "flotilla.yaml:5:17: apps.web.dependsOn[0]: unknown app \"db\""
    );
}

#[test]
fn depends_on_cycle_is_named() {
    let text = "apps:
  a: {path: a, targets: {}, dependsOn: [b]}
  b: {path: b, targets: {}, dependsOn: [c]}
  c:
    path: c
    targets: {}
    dependsOn:
      - a
";
    assert_eq!(
        error_of(text),
        "flotilla.yaml:2:41: apps.a.dependsOn[0]: dependency cycle: a -> b -> c -> a"
    );
    let own = "apps:\n  a: {path: a, targets: {}, dependsOn: [a]}\n";
    assert_eq!(
        problem_of(own),
        Problem::DependencyCycle(vec!["a".into(), "a".into()])
    );
}

#[test]
fn bad_max_parallel() {
    let pipeline = |value: &str| {
        format!(
            "pipelines:\n  p:\n    stages:\n      - name: a\n        selector: {{}}\n        maxParallel: {value}\n"
        )
    };
    assert_error_starts_with(
        &pipeline("150%"),
        "flotilla.yaml:6:22: pipelines.p.stages[0].maxParallel: \"150%\" is over 100%",
    );
    assert_error_contains(
        &pipeline("0"),
        "6:22: pipelines.p.stages[0].maxParallel: \"0\" must be at least 1",
    );
    assert_error_contains(&pipeline("lots"), "invalid count or percentage \"lots\"");
}

#[test]
fn bad_duration() {
    let text = "pipelines:\n  p:\n    stages:\n      - {name: a, selector: {}, soak: 10x}\n";
    assert_error_starts_with(
        text,
        "flotilla.yaml:4:39: pipelines.p.stages[0].soak: invalid duration \"10x\"",
    );
    let zero = "pipelines:\n  p:\n    healthTimeout: 0s\n    stages: [{name: a, selector: {}}]\n";
    assert_eq!(
        error_of(zero),
        "flotilla.yaml:3:20: pipelines.p.healthTimeout: must be longer than zero"
    );
}

#[test]
fn bad_selector_operator() {
    let text = with_app(
        "",
        "pipelines:\n  p:\n    stages:\n      - name: a\n        selector:\n          matchExpressions:\n            - {key: geo, operator: Within, values: [eu]}\n",
    );
    assert_error_starts_with(
        &text,
        "flotilla.yaml:11:36: pipelines.p.stages[0].selector.matchExpressions[0].operator: unknown variant `Within`",
    );
    let text = "apps:\n  web:\n    path: w\n    targets:\n      matchExpressions:\n        - key: geo\n          operator: In\n";
    assert_eq!(
        error_of(text),
        "flotilla.yaml:6:11: apps.web.targets.matchExpressions[0]: operator In needs at least one value"
    );
}

#[test]
fn other_enum_fields_reject_unknown_values() {
    let base = "pipelines:\n  p:\n    stages: [{name: a, selector: {}}]\n";
    assert_error_starts_with(
        &format!("{base}    onFailure: explode\n"),
        "flotilla.yaml:4:16: pipelines.p.onFailure: unknown variant `explode`",
    );
    assert_error_contains(
        "pipelines:\n  p:\n    stages: [{name: a, selector: {}, approval: maybe}]\n",
        "pipelines.p.stages[0].approval: unknown variant `maybe`",
    );
}

#[test]
fn names_are_dns_labels_and_unique() {
    assert_error_starts_with(
        "apps:\n  Web_App: {path: w, targets: {}}\n",
        "flotilla.yaml:2:3: apps.Web_App: invalid name \"Web_App\"",
    );
    assert_eq!(
        error_of(
            "pipelines:\n  p:\n    stages:\n      - {name: eu, selector: {}}\n      - {name: eu, selector: {}}\n"
        ),
        "flotilla.yaml:5:16: pipelines.p.stages[1].name: \"eu\" is listed more than once"
    );
    assert_eq!(
        problem_of("pipelines:\n  p: {stages: []}\n"),
        Problem::NoStages
    );
    assert_error_contains(
        "apps:\n  web: {path: w, targets: {}, vars: {\"bad name\": x}}\n",
        "apps.web.vars.bad name: invalid name",
    );
}

#[test]
fn paths_must_stay_inside_the_source_path() {
    assert_eq!(
        error_of("apps:\n  web: {path: ../elsewhere, targets: {}}\n"),
        "flotilla.yaml:2:15: apps.web.path: invalid path \"../elsewhere\": must not contain '..'"
    );
    assert!(matches!(
        problem_of("apps:\n  web: {path: /abs, targets: {}}\n"),
        Problem::InvalidPath { .. }
    ));
}

#[test]
fn missing_required_field_and_malformed_yaml() {
    assert_error_starts_with(
        "apps:\n  web:\n    path: w\n",
        "flotilla.yaml:3:5: apps.web: missing field `targets`",
    );
    let err = error_of("apps:\n  web:\n    path: [unclosed\n    targets: {}\n");
    assert!(err.starts_with("flotilla.yaml:"), "{err}");
    assert!(err.contains("while parsing a flow sequence"), "{err}");
    assert_error_starts_with(
        "apps:\n  web: {path: w, targets: {}}\n  web: {path: v, targets: {}}\n",
        "flotilla.yaml:3:3: apps: duplicate key \"web\"",
    );
}

#[test]
fn load_checks_the_tree() {
    let r = repo(&[("fleet/apps/web/a.yaml", "")]);
    let limits = Limits::default();
    assert!(matches!(
        load_config(&r.tree, "fleet", &limits),
        Err(ConfigError::NotFound { file }) if file == "fleet/flotilla.yaml"
    ));
    r.write(
        "fleet/flotilla.yaml",
        "apps:\n  web:\n    path: apps/wbe\n    targets: {}\n",
    );
    let err = load_config(&r.tree, "fleet", &limits)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "fleet/flotilla.yaml:3:11: apps.web.path: app directory \"fleet/apps/wbe\" not found"
    );
    r.write(
        "fleet/flotilla.yaml",
        "apps:\n  web:\n    path: apps/web\n    targets: {}\n    overlays:\n      - patches: [nope.yaml]\n",
    );
    let err = load_config(&r.tree, "fleet", &limits)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "fleet/flotilla.yaml:6:19: apps.web.overlays[0].patches[0]: patch file \"fleet/nope.yaml\" not found"
    );
    r.write(
        "fleet/flotilla.yaml",
        "apps:\n  web:\n    path: apps/web\n    targets: {}\n",
    );
    let config = load_config(&r.tree, "fleet/", &limits).unwrap();
    assert_eq!(config.source_path, "fleet");
}

#[test]
fn oversized_and_alias_bomb_config() {
    let r = repo(&[("flotilla.yaml", &"# padding\n".repeat(20))]);
    let small = Limits {
        max_file_bytes: 100,
        max_bundle_bytes: 1 << 20,
    };
    assert!(matches!(
        load_config(&r.tree, "", &small),
        Err(ConfigError::TooLarge {
            size: 200,
            limit: 100,
            ..
        })
    ));
    let bomb = format!("{}apps: {{}}\n", billion_laughs());
    let err = parse_config("flotilla.yaml", &bomb, &Limits::default()).unwrap_err();
    assert!(
        matches!(
            err.diagnostic().map(|d| &d.problem),
            Some(Problem::AliasExpansion { .. })
        ),
        "{err}"
    );
}

/// The classic "billion laughs" document: 9 levels of 10 aliases each.
pub(super) fn billion_laughs() -> String {
    let mut doc = String::from(
        "a0: &a0 [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n",
    );
    for level in 1..=9 {
        let prev = level - 1;
        let refs = vec![format!("*a{prev}"); 10].join(", ");
        doc.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
    }
    doc
}

#[test]
fn empty_file_is_an_empty_fleet() {
    let config = parse_config("flotilla.yaml", "", &Limits::default()).unwrap();
    assert!(config.apps.is_empty() && config.pipelines.is_empty());
    let config = parse_config("flotilla.yaml", "# nothing yet\n", &Limits::default()).unwrap();
    assert!(config.apps.is_empty());
}
