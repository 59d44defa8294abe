//! Tidy: the crates keep their layers. Every `crate::` path in a crate's sources is read; a
//! module that imports from a layer above its own fails the test, and so do top-level modules
//! that import each other, directly or round a longer cycle (within a layer too). The layers are
//! written down here and in each crate's `lib.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The hub's layers, lowest first (see `hub/src/lib.rs`).
const HUB: &[&[&str]] = &[
    &["telemetry"],
    &["pki", "store", "git", "render"],
    &["state"],
    &["engine"],
    &["api"],
    &["server"],
];

/// The agent's layers, lowest first (see `agent/src/lib.rs`).
const AGENT: &[&[&str]] = &[
    &["backoff", "metrics", "sim", "bundles"],
    &["http", "cluster", "identity"],
    &["join", "reconcile"],
    &["session"],
];

/// The top-level module a source file belongs to: `src/a/b.rs` and `src/a.rs` → `a`; the crate
/// root (`lib.rs`, `main.rs`, `bin/`) → none.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main" | "bin")).then(|| name.to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules named by `crate::` paths in `text` (comments left out), including
/// those of grouped imports (`crate::{a::X, b}`).
fn imported(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            rest = &rest[i + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // `flotilla_crate::…` and the like
            }
            if let Some(group) = rest.strip_prefix('{') {
                // Top-level names at depth 0 of the group.
                let mut depth = 0;
                let mut name = String::new();
                let mut at_start = true;
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => at_start = true,
                        c if depth == 0 && at_start && (c.is_alphanumeric() || c == '_') => {
                            name.push(c)
                        }
                        _ if depth == 0 && at_start && !name.is_empty() => {
                            out.insert(std::mem::take(&mut name));
                            at_start = false;
                        }
                        _ => {}
                    }
                }
                if !name.is_empty() {
                    out.insert(name);
                }
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// Module → the other top-level modules it imports, for the crate whose sources are in `src`.
fn import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let Some(module) = top_module(src, &f) else {
            continue;
        };
        let text = std::fs::read_to_string(&f).unwrap();
        let deps = graph.entry(module.clone()).or_default();
        deps.extend(imported(&text).into_iter().filter(|m| *m != module));
    }
    graph
}

/// Every violation: an import from a layer above, a module in no layer, a cycle.
fn violations(src: &Path, layers: &[&[&str]]) -> Vec<String> {
    let layer_of = |m: &str| layers.iter().position(|l| l.contains(&m));
    let graph = import_graph(src);
    let mut found = Vec::new();
    for (module, deps) in &graph {
        let Some(own) = layer_of(module) else {
            found.push(format!("module {module} is in no layer"));
            continue;
        };
        for dep in deps {
            match layer_of(dep) {
                Some(l) if l > own => found.push(format!(
                    "{module} (layer {own}) imports {dep} (layer {l}, above it)"
                )),
                Some(_) => {}
                // Not a module of this crate (e.g. `crate::v1` re-exports) or a typo'd path the
                // compiler would catch.
                None if graph.contains_key(dep) => {
                    found.push(format!("module {dep} is in no layer"))
                }
                None => {}
            }
        }
    }
    // Cycles: a depth-first walk from each module back to itself.
    for start in graph.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((m, path)) = stack.pop() {
            for dep in graph.get(&m).into_iter().flatten() {
                if dep == start {
                    let cycle = [path.clone(), vec![start.clone()]].concat();
                    // Report each cycle once, from its smallest module.
                    if path.iter().all(|p| p >= start) {
                        found.push(format!("import cycle: {}", cycle.join(" → ")));
                    }
                } else if graph.contains_key(dep) && seen.insert(dep.clone()) {
                    stack.push((dep.clone(), [path.clone(), vec![dep.clone()]].concat()));
                }
            }
        }
    }
    found
}

fn crate_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
        .join("src")
}

#[test]
fn the_hub_imports_only_downwards_and_has_no_cycles() {
    let v = violations(&crate_src("hub"), HUB);
    assert!(v.is_empty(), "{}", v.join("\n"));
}

#[test]
fn the_agent_imports_only_downwards_and_has_no_cycles() {
    let v = violations(&crate_src("agent"), AGENT);
    assert!(v.is_empty(), "{}", v.join("\n"));
}

#[test]
fn the_check_finds_upward_imports_groups_and_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let write = |p: &str, text: &str| {
        let f = src.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, text).unwrap();
    };
    write("lib.rs", "pub mod low; pub mod high; pub mod mid;");
    write(
        "low/mod.rs",
        "use crate::{mid::X, high};\n// use crate::nothing;\n",
    );
    write("mid.rs", "use crate::high::Y;");
    write("high.rs", "use crate::low::Z;");
    let v = violations(src, &[&["low"], &["mid"], &["high"]]);
    assert!(
        v.contains(&"low (layer 0) imports mid (layer 1, above it)".to_string()),
        "{v:?}"
    );
    assert!(
        v.contains(&"low (layer 0) imports high (layer 2, above it)".to_string()),
        "{v:?}"
    );
    assert!(
        v.iter().any(|m| m.starts_with("import cycle: high → low")),
        "{v:?}"
    );
    assert!(!v.iter().any(|m| m.contains("nothing")), "{v:?}");
}
