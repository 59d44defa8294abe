//! `CommitTree`: files, directories with sizes, symlinks, submodules, sub-path roots, and the
//! render module's resolution running over a commit.

use super::*;
use crate::git::{CommitTree, GitError};
use crate::render::{EntryKind, Resolved, SourceTree, TreeEntry, TreeError, resolve, walk_files};

/// A repository with files, a nested directory, symlinks (to a file, to a directory, leaving
/// the tree) and a submodule gitlink; fetched into a mirror. Returns the tree's commit.
fn fixture() -> (Upstream, DataDir, Mirror, String) {
    let up = Upstream::new();
    let root = up.path();
    std::fs::create_dir_all(root.join("deploy/apps/web")).expect("mkdir");
    std::fs::write(root.join("deploy/flotilla.yaml"), "apps: {}\n").expect("write");
    std::fs::write(
        root.join("deploy/apps/web/deploy.yaml"),
        "kind: Deployment\n",
    )
    .expect("w");
    std::fs::write(root.join("README.md"), "hello").expect("write");
    std::os::unix::fs::symlink("apps/web/deploy.yaml", root.join("deploy/link.yaml"))
        .expect("symlink");
    std::os::unix::fs::symlink("apps", root.join("deploy/apps-link")).expect("symlink");
    std::os::unix::fs::symlink("../../etc/passwd", root.join("deploy/escape")).expect("symlink");
    up.git(&["add", "-A"]);
    // A gitlink (submodule entry) without a real submodule.
    let sub = "1111111111111111111111111111111111111111";
    up.git(&[
        "update-index",
        "--add",
        "--cacheinfo",
        &format!("160000,{sub},deploy/vendored"),
    ]);
    let head = up.commit_all("tree fixture");
    let data = DataDir::new();
    let (spec, mirror) = data.track(&up, "tree", "main");
    assert_eq!(mirror.fetch(&spec).expect("fetch").commit, head);
    (up, data, mirror, head)
}

/// Whether an error is the one a case of a table expects.
type Expected<E> = fn(&E) -> bool;

fn sorted(mut entries: Vec<TreeEntry>) -> Vec<TreeEntry> {
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries
}

fn entry(name: &str, kind: EntryKind, size: u64) -> TreeEntry {
    TreeEntry {
        name: name.to_owned(),
        kind,
        size,
    }
}

fn link(target: &str) -> EntryKind {
    EntryKind::Symlink {
        target: target.to_owned(),
    }
}

#[test]
fn commit_tree_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<CommitTree>();
    assert_send_sync::<Mirror>();
}

#[test]
fn reads_files_and_lists_directories_with_sizes_and_symlinks() {
    let (_up, _data, mirror, head) = fixture();
    let tree = mirror.tree(&head, "").expect("tree");
    assert_eq!(tree.commit(), head);
    assert_eq!(tree.read("README.md").expect("read"), b"hello");
    assert_eq!(
        tree.read("./deploy//apps/web/deploy.yaml").expect("read"),
        b"kind: Deployment\n"
    );
    assert_eq!(
        sorted(tree.entries("").expect("root")),
        vec![
            entry("README.md", EntryKind::File, 5),
            entry("deploy", EntryKind::Dir, 0)
        ]
    );
    // The submodule is left out; symlinks carry their target and its length.
    assert_eq!(
        sorted(tree.entries("deploy").expect("deploy")),
        vec![
            entry("apps", EntryKind::Dir, 0),
            entry("apps-link", link("apps"), 4),
            entry("escape", link("../../etc/passwd"), 16),
            entry("flotilla.yaml", EntryKind::File, 9),
            entry("link.yaml", link("apps/web/deploy.yaml"), 20),
        ]
    );
}

#[test]
fn symlinks_and_missing_paths_are_errors_for_read() {
    let (_up, _data, mirror, head) = fixture();
    let tree = mirror.tree(&head, "").expect("tree");
    let cases: [(&str, Expected<TreeError>); 7] = [
        ("deploy/link.yaml", |e| {
            matches!(e, TreeError::NotAFile { .. })
        }),
        // Through a symlinked directory: the link itself is reported.
        (
            "deploy/apps-link/web/deploy.yaml",
            |e| matches!(e, TreeError::NotAFile { path } if path == "deploy/apps-link"),
        ),
        ("deploy", |e| matches!(e, TreeError::NotAFile { .. })),
        ("nope.yaml", |e| matches!(e, TreeError::NotFound { .. })),
        ("deploy/vendored", |e| {
            matches!(e, TreeError::NotFound { .. })
        }),
        ("README.md/x", |e| {
            matches!(e, TreeError::NotADirectory { .. })
        }),
        ("../x", |e| matches!(e, TreeError::InvalidPath { .. })),
    ];
    for (path, expected) in cases {
        let err = tree.read(path).expect_err(path);
        assert!(expected(&err), "{path}: {err:?}");
    }
    assert!(matches!(
        tree.entries("README.md"),
        Err(TreeError::NotADirectory { .. })
    ));
}

#[test]
fn a_sub_path_becomes_the_root() {
    let (_up, _data, mirror, head) = fixture();
    let tree = mirror.tree(&head, "deploy/").expect("sub tree");
    assert_eq!(tree.read("flotilla.yaml").expect("read"), b"apps: {}\n");
    assert!(
        tree.entries("")
            .expect("root")
            .iter()
            .any(|e| e.name == "apps-link")
    );
    // Links resolve inside the sub-tree; one that climbs out of it escapes.
    assert_eq!(
        resolve(&tree, "link.yaml").expect("resolve"),
        Resolved::File {
            path: "apps/web/deploy.yaml".into(),
            size: 17
        }
    );
    assert!(matches!(
        resolve(&tree, "escape"),
        Err(TreeError::SymlinkEscapes { .. })
    ));
    let files = walk_files(&tree, "apps-link", &|name| name.ends_with(".yaml")).expect("walk");
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].path, "apps-link/web/deploy.yaml");
    assert_eq!(files[0].real, "apps/web/deploy.yaml");
}

#[test]
fn bad_commits_and_sub_paths_are_specific_errors() {
    let (_up, _data, mirror, head) = fixture();
    const UNKNOWN: &str = "0123456789abcdef0123456789abcdef01234567";
    let cases: [(&str, &str, Expected<GitError>); 6] = [
        (
            UNKNOWN,
            "",
            |e| matches!(e, GitError::CommitNotFound { commit, .. } if commit == UNKNOWN),
        ),
        ("not-hex", "", |e| {
            matches!(e, GitError::CommitNotFound { .. })
        }),
        (
            &head,
            "missing/dir",
            |e| matches!(e, GitError::PathNotFound { path, .. } if path == "missing/dir"),
        ),
        (&head, "README.md", |e| {
            matches!(e, GitError::NotADirectory { .. })
        }),
        (&head, "deploy/apps-link", |e| {
            matches!(e, GitError::NotADirectory { .. })
        }),
        (&head, "../up", |e| {
            matches!(e, GitError::InvalidPath { .. })
        }),
    ];
    for (commit, sub_path, expected) in cases {
        let err = mirror.tree(commit, sub_path).expect_err(sub_path);
        assert!(expected(&err), "{commit} {sub_path:?}: {err:?}");
    }
    let err = mirror.tree(&head, "missing").expect_err("missing");
    assert_eq!(
        err.to_string(),
        format!("\"missing\" not found at commit {head}")
    );
}
