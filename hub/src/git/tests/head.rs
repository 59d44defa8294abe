//! The default branch (`--ref` omitted or `HEAD`): the branch the remote's `HEAD` points to,
//! resolved again at every fetch; an empty remote, a `HEAD` to a deleted branch and a remote
//! that advertises no `HEAD` are clear errors that keep the last good commit.

use super::*;
use crate::git::GitError;

/// The refs the mirror holds, one per line.
fn mirror_refs(data: &DataDir, name: &str) -> String {
    git(
        &data.mirror_dir(name),
        &["for-each-ref", "--format=%(refname)"],
    )
}

#[test]
fn head_is_parsed_as_the_default_branch() {
    assert_eq!(GitRef::parse("HEAD").expect("HEAD"), GitRef::Head);
    assert_eq!(GitRef::Head.to_string(), "HEAD");
    assert_eq!(
        GitRef::parse(&GitRef::Head.to_string()).expect("again"),
        GitRef::Head
    );
    // Other symbolic refs still cannot be tracked.
    let err = GitRef::parse("refs/remotes/origin/HEAD").expect_err("a remote's HEAD");
    assert!(err.to_string().contains("name the branch"), "{err}");
}

#[test]
fn the_default_branch_is_tracked_and_followed_when_head_moves() {
    let (up, c1) = Upstream::with_one_commit();
    up.git(&["checkout", "-q", "-b", "trunk"]);
    let t1 = up.commit_file("g", "trunk", "trunk work");
    up.git(&["checkout", "-q", "main"]);
    let data = DataDir::new();
    let (spec, mirror) = data.track(&up, "dflt", "HEAD");
    assert_eq!(spec.reference, GitRef::Head);

    let out = mirror.fetch(&spec).expect("fetch HEAD");
    assert_eq!(out.commit, c1, "HEAD is main");
    assert_eq!(out.resolved_ref.as_deref(), Some("refs/heads/main"));
    assert!(out.changed && !out.rewritten);
    assert_eq!(mirror_refs(&data, "dflt"), "refs/flotilla/track/HEAD");

    // A new commit on the default branch is followed.
    let c2 = up.commit_file("f", "2", "two");
    let out = mirror.fetch(&spec).expect("fetch again");
    assert_eq!((out.commit.as_str(), out.changed), (c2.as_str(), true));
    assert_eq!(out.previous.as_deref(), Some(c1.as_str()));

    // HEAD moves to trunk (diverged from main): the next fetch follows it, and says history
    // was rewritten since trunk does not descend from what main was.
    up.git(&["symbolic-ref", "HEAD", "refs/heads/trunk"]);
    let out = mirror.fetch(&spec).expect("fetch after HEAD moved");
    assert_eq!(out.commit, t1, "HEAD is trunk now");
    assert_eq!(out.resolved_ref.as_deref(), Some("refs/heads/trunk"));
    assert_eq!(out.previous.as_deref(), Some(c2.as_str()));
    assert!(out.changed && out.rewritten);
    assert_eq!(mirror.last_fetched(&spec).expect("read"), Some(t1.clone()));

    // Commits on main are no longer followed; those on trunk are.
    up.git(&["checkout", "-q", "main"]);
    up.commit_file("f", "3", "three on main");
    up.git(&["checkout", "-q", "trunk"]);
    let t2 = up.commit_file("g", "trunk 2", "trunk two");
    up.git(&["checkout", "-q", "main"]);
    up.git(&["symbolic-ref", "HEAD", "refs/heads/trunk"]);
    let out = mirror.fetch(&spec).expect("fetch trunk");
    assert_eq!((out.commit.as_str(), out.rewritten), (t2.as_str(), false));

    // A detached HEAD is followed as it is.
    up.git(&["checkout", "-q", "--detach", &c1]);
    let out = mirror.fetch(&spec).expect("fetch detached");
    assert_eq!(out.commit, c1);
    assert_eq!(out.resolved_ref.as_deref(), Some("HEAD"));
}

#[test]
fn an_empty_remote_has_no_default_branch_and_writes_nothing() {
    let up = Upstream::new();
    let data = DataDir::new();
    let (spec, mirror) = data.track(&up, "empty", "HEAD");
    let err = mirror.fetch(&spec).expect_err("nothing to track");
    match &err {
        GitError::NoDefaultBranch { url, target } => {
            assert_eq!(url, &up.file_url());
            assert_eq!(target.as_deref(), Some("refs/heads/main"));
        }
        other => panic!("expected NoDefaultBranch, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "{} has no default branch: its HEAD points to refs/heads/main, which does not exist (an empty repository?); push to it or name a branch with --ref",
            up.file_url()
        )
    );
    assert_eq!(err.metric_label(), "no_default_branch");
    assert!(!err.is_transient());
    assert_eq!(mirror.last_fetched(&spec).expect("read"), None);
    assert_eq!(mirror_refs(&data, "empty"), "", "no unborn ref is mirrored");

    // Once something is pushed, the same source works.
    let c1 = up.commit_file("f", "1", "one");
    assert_eq!(mirror.fetch(&spec).expect("fetch").commit, c1);
}

#[test]
fn a_head_to_a_deleted_branch_keeps_the_last_good_commit() {
    let (up, c1) = Upstream::with_one_commit();
    let data = DataDir::new();
    let (spec, mirror) = data.track(&up, "dangling", "HEAD");
    assert_eq!(mirror.fetch(&spec).expect("fetch").commit, c1);

    up.git(&["symbolic-ref", "HEAD", "refs/heads/gone"]);
    let err = mirror.fetch(&spec).expect_err("HEAD to nothing");
    assert!(
        matches!(&err, GitError::NoDefaultBranch { target: Some(t), .. } if t == "refs/heads/gone"),
        "{err:?}"
    );
    assert!(err.to_string().contains("refs/heads/gone"), "{err}");
    assert_eq!(mirror.last_fetched(&spec).expect("read"), Some(c1.clone()));
    assert!(mirror.tree(&c1, "").is_ok());
    assert_eq!(mirror_refs(&data, "dangling"), "refs/flotilla/track/HEAD");
    assert_eq!(
        git(
            &data.mirror_dir("dangling"),
            &["rev-parse", "refs/flotilla/track/HEAD"]
        ),
        c1,
        "the tracking ref is untouched"
    );
}

#[test]
fn a_remote_that_advertises_no_head_is_a_clear_error() {
    let (up, c1) = Upstream::with_one_commit();
    let data = DataDir::new();
    let (spec, mirror) = data.track(&up, "nohead", "HEAD");
    assert_eq!(mirror.fetch(&spec).expect("fetch").commit, c1);

    // A server that does not advertise unborn refs says nothing of a dangling HEAD.
    up.git(&["config", "lsrefs.unborn", "ignore"]);
    up.git(&["symbolic-ref", "HEAD", "refs/heads/gone"]);
    let err = mirror.fetch(&spec).expect_err("no HEAD");
    assert!(
        matches!(&err, GitError::NoDefaultBranch { target: None, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "{} has no default branch: it advertises no HEAD; name a branch with --ref",
            up.file_url()
        )
    );
    assert_eq!(mirror.last_fetched(&spec).expect("read"), Some(c1));
}
