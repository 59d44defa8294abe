//! Fetching: initial and incremental fetches, tags and pinned commits, force-pushes, deleted
//! branches, unreachable remotes, secrets kept out of errors, and the `git` CLI helper.

use super::*;
use crate::git::{Auth, GitError, fetch_with_git_cli};

#[test]
fn initial_fetch_from_a_local_path_and_a_file_url() {
    let up = Upstream::new();
    let head = up.commit_file("flotilla.yaml", "apps: {}\n", "first");
    let data = DataDir::new();
    for (name, url) in [("by-path", up.local_url()), ("by-url", up.file_url())] {
        let spec = spec(name, &url, "main");
        let mirror = data.mirror(&spec);
        let out = mirror.fetch(&spec).expect("fetch");
        assert_eq!(out.commit, head, "{url}");
        assert_eq!(out.previous, None);
        assert!(out.changed && !out.rewritten);
        assert_eq!(out.resolved_ref.as_deref(), Some("refs/heads/main"));
        assert!(mirror.has_commit(&head));
        assert_eq!(
            mirror.last_fetched(&spec).expect("read"),
            Some(head.clone())
        );
        assert_eq!(mirror.dir(), data.mirror_dir(name));
        assert!(data.mirror_dir(name).join("HEAD").is_file(), "a bare repo");
    }
}

#[test]
fn incremental_fetch_reports_new_commits_and_unchanged_repos() {
    let up = Upstream::new();
    let first = up.commit_file("a.yaml", "a: 1\n", "first");
    let data = DataDir::new();
    let (spec, mirror) = data.track(&up, "inc", "refs/heads/main");
    assert_eq!(mirror.fetch(&spec).expect("fetch").commit, first);

    let again = mirror.fetch(&spec).expect("fetch again");
    assert_eq!(again.commit, first);
    assert_eq!(again.previous.as_deref(), Some(first.as_str()));
    assert!(!again.changed && !again.rewritten);

    let second = up.commit_file("a.yaml", "a: 2\n", "second");
    // A reopened mirror (hub restart) continues from what is on disk.
    drop(mirror);
    let mirror = data.mirror(&spec);
    let out = mirror.fetch(&spec).expect("incremental fetch");
    assert_eq!(out.commit, second);
    assert_eq!(out.previous.as_deref(), Some(first.as_str()));
    assert!(out.changed && !out.rewritten);

    // Only the private namespace is written.
    let refs = git(
        &data.mirror_dir("inc"),
        &["for-each-ref", "--format=%(refname)"],
    );
    assert_eq!(refs, "refs/flotilla/track/heads/main");
}

#[test]
fn tags_branches_and_bare_names() {
    let (up, c1) = Upstream::with_one_commit();
    up.git(&["tag", "light"]);
    up.git(&["tag", "-a", "annotated", "-m", "release"]);
    let c2 = up.commit_file("f", "2", "two");
    up.git(&["branch", "light-branch"]);
    up.git(&["tag", "both", &c1]);
    up.git(&["branch", "both"]);
    let data = DataDir::new();
    let cases = [
        ("light", "refs/tags/light", c1.as_str(), "refs/tags/light"),
        ("annotated", "annotated", c1.as_str(), "refs/tags/annotated"),
        (
            "branch",
            "light-branch",
            c2.as_str(),
            "refs/heads/light-branch",
        ),
        // A bare name prefers the branch over a tag of the same name.
        ("both", "both", c2.as_str(), "refs/heads/both"),
        ("both-tag", "refs/tags/both", c1.as_str(), "refs/tags/both"),
    ];
    for (name, reference, want, resolved) in cases {
        let spec = spec(name, &up.file_url(), reference);
        let out = data.mirror(&spec).fetch(&spec).expect(reference);
        assert_eq!(out.commit, want, "{reference}");
        assert_eq!(out.resolved_ref.as_deref(), Some(resolved), "{reference}");
    }
    // An annotated tag stays peeled on a second, unchanged fetch.
    let spec = spec("annotated", &up.file_url(), "annotated");
    let again = data.mirror(&spec).fetch(&spec).expect("again");
    assert_eq!(again.previous.as_deref(), Some(c1.as_str()));
    assert!(!again.changed);
}

#[test]
fn pinned_commits_must_exist_and_stay_reachable() {
    let (up, c1) = Upstream::with_one_commit();
    let c2 = up.commit_file("f", "2", "two");
    let data = DataDir::new();

    let pinned = spec("pin", &up.file_url(), &c1.to_uppercase());
    assert_eq!(pinned.reference, GitRef::Commit(c1.clone()));
    let mirror = data.mirror(&pinned);
    let out = mirror.fetch(&pinned).expect("pinned fetch");
    assert_eq!((out.commit.as_str(), out.changed), (c1.as_str(), true));
    let again = mirror.fetch(&pinned).expect("pinned again");
    assert_eq!(again.previous.as_deref(), Some(c1.as_str()));
    assert!(!again.changed);
    let tip = spec("pin", &up.file_url(), &c2);
    assert_eq!(mirror.fetch(&tip).expect("pin the tip").commit, c2);

    let unknown = "0123456789abcdef0123456789abcdef01234567";
    let err = mirror
        .fetch(&spec("pin", &up.file_url(), unknown))
        .expect_err("an unknown commit");
    assert!(
        matches!(&err, GitError::RefNotFound { reference, .. } if reference == unknown),
        "{err}"
    );
    assert!(err.to_string().contains(&up.file_url()), "{err}");
}

#[test]
fn force_push_is_reported_and_keeps_the_last_good_commit_readable() {
    let (up, c1) = Upstream::with_one_commit();
    let c2 = up.commit_file("f", "2", "two");
    let data = DataDir::new();
    let (branch, mirror) = data.track(&up, "rewrite", "main");
    assert_eq!(mirror.fetch(&branch).expect("fetch").commit, c2);
    let pin = spec("rewrite", &up.file_url(), &c2);
    mirror
        .fetch(&pin)
        .expect("c2 is pinnable before the rewrite");

    // Rewrite history: c2 is replaced by c3 and is no longer on any branch.
    up.git(&["reset", "-q", "--hard", &c1]);
    let c3 = up.commit_file("f", "3", "three");
    up.git(&["reflog", "expire", "--expire=now", "--all"]);
    up.git(&["gc", "-q", "--prune=now"]);

    let out = mirror.fetch(&branch).expect("fetch after force-push");
    assert_eq!(out.commit, c3);
    assert_eq!(out.previous.as_deref(), Some(c2.as_str()));
    assert!(out.changed && out.rewritten);
    let bare = data.mirror_dir("rewrite");
    assert!(!git_is_ancestor(
        &bare,
        &c2,
        "refs/flotilla/track/heads/main"
    ));
    assert!(git_is_ancestor(
        &bare,
        &c1,
        "refs/flotilla/track/heads/main"
    ));

    // The old commit is still in the mirror for whoever wants the last good revision.
    let tree = mirror.tree(&c2, "").expect("old tree");
    assert_eq!(
        crate::render::SourceTree::read(&tree, "f").expect("read"),
        b"2"
    );

    // A pin on the vanished commit is now a specific error.
    let err = mirror.fetch(&pin).expect_err("c2 vanished");
    assert!(matches!(err, GitError::RefNotFound { .. }), "{err}");

    // A normal fast-forward afterwards is not a rewrite.
    let c4 = up.commit_file("f", "4", "four");
    let out = mirror.fetch(&branch).expect("fast-forward");
    assert_eq!((out.commit.as_str(), out.rewritten), (c4.as_str(), false));
}

#[test]
fn a_deleted_branch_is_ref_not_found_and_keeps_the_last_good_commit() {
    let (up, _) = Upstream::with_one_commit();
    up.git(&["checkout", "-q", "-b", "feature"]);
    let feature = up.commit_file("f", "2", "two");
    up.git(&["checkout", "-q", "main"]);
    let data = DataDir::new();
    let (spec, mirror) = data.track(&up, "deleted", "feature");
    assert_eq!(mirror.fetch(&spec).expect("fetch").commit, feature);

    up.git(&["branch", "-q", "-D", "feature"]);
    let err = mirror.fetch(&spec).expect_err("branch deleted");
    match &err {
        GitError::RefNotFound { reference, url } => {
            assert_eq!(reference, "feature");
            assert_eq!(url, &up.file_url());
        }
        other => panic!("expected RefNotFound, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!("feature not found at {}", up.file_url())
    );
    assert_eq!(
        mirror.last_fetched(&spec).expect("read"),
        Some(feature.clone())
    );
    assert!(mirror.tree(&feature, "").is_ok());
}

#[test]
fn unreachable_remotes_fail_with_a_fetch_error() {
    let data = DataDir::new();
    let missing = data.path().join("no-such-repo");
    let urls = [
        missing.display().to_string(),
        format!("file://{}", missing.display()),
        // Loopback port 1: refused at once.
        "https://127.0.0.1:1/x.git".to_owned(),
        "ssh://git@127.0.0.1:1/x.git".to_owned(),
    ];
    for (i, url) in urls.iter().enumerate() {
        let spec = spec(&format!("gone-{i}"), url, "main");
        let mirror = data.mirror(&spec);
        let err = mirror.fetch(&spec).expect_err(url);
        assert!(
            matches!(&err, GitError::Fetch { url: u, .. } if u == url),
            "{url}: {err:?}"
        );
        assert!(err.is_transient(), "{url}");
        assert!(!err.to_string().ends_with('.'), "{err}");
        assert_eq!(mirror.last_fetched(&spec).expect("read"), None);
    }
}

#[test]
fn secrets_never_appear_in_errors() {
    let data = DataDir::new();
    // The refused fetch's error, shown and debugged, with the spec debugged.
    let refused = |spec: &SourceSpec| {
        let err = data.mirror(spec).fetch(spec).expect_err("refused");
        format!("{err} {err:?} {spec:?}")
    };
    let with_password = spec("creds", "https://user:s3cret@127.0.0.1:1/x.git", "main");
    let text = refused(&with_password);
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("https://***@127.0.0.1:1/x.git"), "{text}");

    let mut with_token = spec("token", "https://127.0.0.1:1/x.git", "main");
    with_token.auth = Some(Auth::Token("tok3n-secret-value".into()));
    let text = refused(&with_token);
    assert!(!text.contains("tok3n-secret-value"), "{text}");

    let err = fetch_with_git_cli(
        &data.mirror_dir("creds"),
        "https://user:s3cret@127.0.0.1:1/x.git",
        "+refs/heads/main:refs/cli/main",
    )
    .expect_err("refused");
    assert!(!format!("{err} {err:?}").contains("s3cret"), "{err}");
}

#[test]
fn git_cli_fetch_into_the_same_mirror() {
    let (up, head) = Upstream::with_one_commit();
    let data = DataDir::new();
    let (spec, mirror) = data.track(&up, "cli", "main");
    fetch_with_git_cli(
        mirror.dir(),
        &up.file_url(),
        "+refs/heads/main:refs/cli/main",
    )
    .expect("git fetch");
    assert_eq!(git(mirror.dir(), &["rev-parse", "refs/cli/main"]), head);
    // gix then finds everything already there.
    let out = mirror.fetch(&spec).expect("gix fetch");
    assert_eq!(out.commit, head);
}

#[test]
fn fetch_checks_the_spec_first() {
    let (up, _) = Upstream::with_one_commit();
    let data = DataDir::new();
    let (good, mirror) = data.track(&up, "checked", "main");

    let other = spec("other", &up.file_url(), "main");
    assert!(matches!(
        mirror.fetch(&other),
        Err(GitError::InvalidName { .. })
    ));

    let mut with_auth = good.clone();
    with_auth.auth = Some(Auth::Token("t0ken".into()));
    let err = mirror.fetch(&with_auth).expect_err("auth over file://");
    assert!(matches!(err, GitError::AuthNotSupported { .. }), "{err}");

    let bad_branch = SourceSpec::new("checked", up.file_url(), GitRef::Branch("a..b".into()));
    assert!(matches!(
        mirror.fetch(&bad_branch),
        Err(GitError::InvalidRef { .. })
    ));

    assert!(matches!(
        Mirror::open_or_init(data.path(), &spec("../x", &up.file_url(), "main")),
        Err(GitError::InvalidName { .. })
    ));
}

#[test]
fn ssh_urls_go_through_the_configured_ssh_command() {
    let (up, head) = Upstream::with_one_commit();
    // A stand-in for ssh (named `ssh`, so gix passes OpenSSH-style arguments) that runs the
    // remote command locally instead of on a host.
    let bin = TempDir::new().expect("tempdir");
    let fake_ssh = bin.path().join("ssh");
    std::fs::write(
        &fake_ssh,
        concat!(
            "#!/bin/sh\n",
            "echo \"$@\" > \"$(dirname \"$0\")/args\"\n",
            // Skip options, then the host; like ssh, join the rest into the remote command.
            "while [ $# -gt 0 ]; do case \"$1\" in -o) shift 2;; -*) shift;; *) break;; esac; done\n",
            "shift\n",
            "exec sh -c \"$*\"\n",
        ),
    )
    .expect("write");

    let data = DataDir::new();
    let url = format!("git@fake-host.invalid:{}", up.path().display());
    let spec = spec("ssh", &url, "main");
    drop(data.mirror(&spec));
    // An operator's own ssh command (here in the mirror's config) is used as it is.
    git(
        &data.mirror_dir("ssh"),
        // Run through `sh`: executing a file just written can fail with ETXTBSY while other
        // test threads fork.
        &[
            "config",
            "core.sshCommand",
            &format!("sh {}", fake_ssh.display()),
        ],
    );
    let out = data.mirror(&spec).fetch(&spec).expect("fetch over ssh");
    assert_eq!(out.commit, head);
    let args = std::fs::read_to_string(bin.path().join("args")).expect("ssh was run");
    assert!(args.contains("git@fake-host.invalid"), "{args}");
    assert!(args.contains("git-upload-pack"), "{args}");
}
