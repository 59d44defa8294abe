//! Secret files, redaction, URL checks and ref parsing.

use super::*;
use crate::git::{Auth, GitError, RemoteUrl, Scrubber, Transport, redact_url, validate_name};

fn secret_file(content: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("secret");
    std::fs::write(&path, content).expect("write");
    (dir, path)
}

#[test]
fn secret_files_in_every_format() {
    let token = Auth::Token("ghp_abc123".into());
    let basic = |u: &str, p: &str| Auth::Basic {
        user: u.into(),
        password: p.into(),
    };
    let cases = [
        ("ghp_abc123\n", token.clone()),
        ("  ghp_abc123  ", token.clone()),
        ("alice:pa:ss\n", basic("alice", "pa:ss")),
        ("token: ghp_abc123\n", token.clone()),
        ("{token: ghp_abc123}", token.clone()),
        (
            "username: bot\ntoken: ghp_abc123\n",
            basic("bot", "ghp_abc123"),
        ),
        ("username: alice\npassword: 'p w'\n", basic("alice", "p w")),
    ];
    for (content, want) in cases {
        let (_dir, path) = secret_file(content);
        assert_eq!(
            Auth::from_secret_file(&path).expect(content),
            want,
            "{content:?}"
        );
    }
}

#[test]
fn bad_secret_files_never_quote_their_content() {
    let cases = [
        "",
        "\n\n",
        "two\nlines-of-s3cret",
        "spaced s3cret",
        ":s3cret",
        "alice:",
        "password: s3cret\n",
        "username: alice\n",
        "token: s3cret\npassword: s3cret2\n",
        "tokn: s3cret\n",
        "token: [s3cret]\n",
    ];
    for content in cases {
        let (_dir, path) = secret_file(content);
        let err = Auth::from_secret_file(&path).expect_err(content);
        assert!(matches!(err, GitError::SecretFile { .. }), "{content:?}");
        assert!(!err.to_string().contains("s3cret"), "{content:?}: {err}");
        assert!(err.to_string().contains("secret file"), "{err}");
    }
    let missing = Auth::from_secret_file(Path::new("/nonexistent/flotilla-secret"));
    assert!(matches!(missing, Err(GitError::SecretFile { .. })));
}

#[test]
fn debug_output_redacts_secrets() {
    let token = Auth::Token("s3cret-token".into());
    let basic = Auth::Basic {
        user: "alice".into(),
        password: "s3cret-pw".into(),
    };
    let mut spec = spec(
        "dbg",
        "https://bob:s3cret-url@example.invalid/r.git",
        "main",
    );
    spec.auth = Some(basic.clone());
    let text = format!("{token:?} {basic:?} {spec:?}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("alice"), "{text}");
    let url = RemoteUrl::parse("https://bob:s3cret-url@example.invalid/r.git").expect("url");
    assert!(!format!("{url:?}").contains("s3cret"));
    assert!(url.has_embedded_credentials());
}

#[test]
fn urls_are_redacted_and_scrubbed() {
    let cases = [
        (
            "https://u:p4ss@h.invalid/r.git",
            "https://***@h.invalid/r.git",
        ),
        ("https://ghp_tok@h.invalid/r", "https://***@h.invalid/r"),
        ("https://h.invalid/r.git", "https://h.invalid/r.git"),
        ("ssh://git:pw@h.invalid/r", "ssh://git:***@h.invalid/r"),
        ("ssh://git@h.invalid:2222/r", "ssh://git@h.invalid:2222/r"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
        ("/srv/git/repo", "/srv/git/repo"),
        (
            "https://u:p@ss@h.invalid/x?y@z",
            "https://***@h.invalid/x?y@z",
        ),
    ];
    for (url, want) in cases {
        assert_eq!(redact_url(url), want, "{url}");
    }
    let scrub = Scrubber::new(
        "https://alice:p%40ssword@h.invalid/r",
        Some(&Auth::Token("tok-123".into())),
    );
    assert_eq!(
        scrub.scrub("denied for alice:p@ssword, p%40ssword and tok-123"),
        "denied for ***, *** and ***"
    );
    // A user name is not a secret, and ssh users stay readable.
    let scrub = Scrubber::new("https://alice:pw-secret@h.invalid/r", None);
    assert_eq!(scrub.scrub("alice: pw-secret"), "alice: ***");
    let scrub = Scrubber::new("ssh://git@h.invalid/r", None);
    assert_eq!(
        scrub.scrub("git-upload-pack failed"),
        "git-upload-pack failed"
    );
    let scrub = Scrubber::new("https://ghp_token123@h.invalid/r", None);
    assert_eq!(scrub.scrub("bad ghp_token123"), "bad ***");
}

#[test]
fn url_kinds_and_refusals() {
    let ok = [
        ("https://github.com/org/repo.git", Transport::Https),
        ("ssh://git@github.com/org/repo.git", Transport::Ssh),
        ("git@github.com:org/repo.git", Transport::Ssh),
        ("file:///srv/git/repo.git", Transport::Local),
        ("/srv/git/repo.git", Transport::Local),
    ];
    for (url, transport) in ok {
        let parsed = RemoteUrl::parse(url).expect(url);
        assert_eq!(parsed.transport(), transport, "{url}");
        assert_eq!(parsed.display(), url);
    }
    let https = RemoteUrl::parse("https://u:pw@h.invalid/r.git").expect("https");
    assert_eq!(https.display(), "https://h.invalid/r.git");
    let refused = [
        "",
        " https://h.invalid/r",
        "http://h.invalid/r.git",
        "git://h.invalid/r.git",
        "relative/path",
        "ssh://git:pw@h.invalid/r",
    ];
    for url in refused {
        let err = RemoteUrl::parse(url).expect_err(url);
        assert!(matches!(err, GitError::InvalidUrl { .. }), "{url}: {err}");
        assert!(!err.to_string().contains(":pw@"), "{err}");
    }
    let mut ssh_with_token = spec("s", "git@github.com:org/repo.git", "main");
    ssh_with_token.auth = Some(Auth::Token("t".into()));
    assert!(matches!(
        ssh_with_token.validate(),
        Err(GitError::AuthNotSupported { .. })
    ));
}

#[test]
fn refs_parse_and_print_back() {
    let commit = "AbCdEf0123456789abcdef0123456789ABCDEF01";
    let cases = [
        ("main", GitRef::BranchOrTag("main".into())),
        ("release/1.2", GitRef::BranchOrTag("release/1.2".into())),
        ("refs/heads/main", GitRef::Branch("main".into())),
        ("refs/tags/v1.0", GitRef::Tag("v1.0".into())),
        ("refs/pull/42/head", GitRef::Ref("refs/pull/42/head".into())),
        (commit, GitRef::Commit(commit.to_ascii_lowercase())),
        // Short ids are names: only full ids pin a commit.
        ("abcdef0", GitRef::BranchOrTag("abcdef0".into())),
        // The remote's default branch.
        ("HEAD", GitRef::Head),
    ];
    for (text, want) in cases {
        let parsed: GitRef = text.parse().expect(text);
        assert_eq!(parsed, want, "{text}");
        assert_eq!(GitRef::parse(&parsed.to_string()).expect("again"), parsed);
    }
    for bad in [
        "",
        "a..b",
        "refs/remotes/origin/HEAD",
        "bad name",
        "x.lock",
        "-x~",
    ] {
        assert!(
            matches!(GitRef::parse(bad), Err(GitError::InvalidRef { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn source_names_and_paths() {
    for good in ["web", "fleet-repo", "a.b_c-1"] {
        validate_name(good).expect(good);
    }
    for bad in ["", ".hidden", "-x", "a/b", "..", "a b", &"x".repeat(101)] {
        assert!(validate_name(bad).is_err(), "{bad:?}");
    }
    assert_eq!(crate::git::normalize_path("./a//b/").expect("ok"), "a/b");
    assert_eq!(crate::git::normalize_path("").expect("ok"), "");
    assert!(crate::git::normalize_path("/abs").is_err());
    assert!(crate::git::normalize_path("a/../b").is_err());
}
