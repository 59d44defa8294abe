//! Credentials and URLs: [`Auth`] (read from a secret file on the hub, redacted in `Debug`),
//! [`RemoteUrl`] (a validated source URL with its credentials split off), [`redact_url`] and
//! [`Scrubber`], which keep secrets out of every message and log line.
//!
//! Secret file format (`--secret-file FILE`), one of:
//! - a single line holding a token (`ghp_…`, a GitLab/Gitea access token): sent as HTTP basic
//!   auth with user `x-access-token`;
//! - a single line `username:password` (split at the first `:`);
//! - a YAML mapping, either `token: …` (with an optional `username: …` to send instead of
//!   `x-access-token`) or `username: …` and `password: …`.
//!
//! Leading/trailing whitespace and a trailing newline are ignored. Parse errors never quote the
//! file's content.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use super::GitError;

/// The user name sent with a bare token (GitHub, Gitea and GitLab all accept it with a token
/// as password).
pub const TOKEN_USER: &str = "x-access-token";

/// Largest secret file read (a token or a password is far smaller).
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Credentials for an https source. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// An access token, sent as HTTP basic auth with user [`TOKEN_USER`].
    Token(String),
    /// HTTP basic auth.
    Basic { user: String, password: String },
}

// === impl Auth ===

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Token(_) => f.write_str("Token(<redacted>)"),
            Auth::Basic { user, .. } => f
                .debug_struct("Basic")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretDoc {
    token: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

impl Auth {
    /// Reads credentials from `path` (see the module docs for the format). Warns when the file
    /// is readable by others than its owner.
    pub fn from_secret_file(path: &Path) -> Result<Auth, GitError> {
        let bad = |reason: &str| GitError::SecretFile {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let meta = std::fs::metadata(path).map_err(|e| GitError::SecretFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if !meta.is_file() {
            return Err(bad("not a regular file"));
        }
        if meta.len() > MAX_SECRET_FILE {
            return Err(bad("larger than 64 KiB"));
        }
        warn_if_shared(path, &meta);
        let bytes = std::fs::read(path).map_err(|e| GitError::SecretFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text"))?;
        Auth::parse_secret(&text).map_err(|reason| GitError::SecretFile {
            path: path.to_owned(),
            reason: reason.to_owned(),
        })
    }

    /// Parses the content of a secret file; the error never contains the content.
    pub fn parse_secret(text: &str) -> Result<Auth, &'static str> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty");
        }
        if let Some(auth) = parse_yaml(text)? {
            return Ok(auth);
        }
        if text.lines().count() > 1 {
            return Err("expected one line (a token or username:password) or a YAML mapping");
        }
        if text.chars().any(char::is_whitespace) {
            return Err("a token or username:password must not contain spaces");
        }
        match text.split_once(':') {
            Some(("", _)) => Err("empty username before ':'"),
            Some((_, "")) => Err("empty password after ':'"),
            Some((user, password)) => Ok(Auth::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
            }),
            None => Ok(Auth::Token(text.to_owned())),
        }
    }

    /// The user name and password sent over HTTP.
    pub(crate) fn user_password(&self) -> (&str, &str) {
        match self {
            Auth::Token(token) => (TOKEN_USER, token),
            Auth::Basic { user, password } => (user, password),
        }
    }

    /// The secret, for scrubbing messages.
    pub(crate) fn secret(&self) -> &str {
        self.user_password().1
    }
}

/// `Ok(None)` when `text` is not a YAML mapping (so a one-line form).
fn parse_yaml(text: &str) -> Result<Option<Auth>, &'static str> {
    // A one-line `user:pass` or token is a YAML string, not a mapping: only mappings count.
    let Ok(value) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) else {
        return Ok(None);
    };
    if !value.is_mapping() {
        return Ok(None);
    }
    // Never pass serde's message on: it can quote values.
    let doc: SecretDoc = serde_yaml_ng::from_value(value)
        .map_err(|_| "expected string fields `token`, or `username` and `password`, only")?;
    let nonempty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
    match (
        nonempty(doc.token),
        nonempty(doc.username),
        nonempty(doc.password),
    ) {
        (Some(token), None, None) => Ok(Some(Auth::Token(token.trim().to_owned()))),
        (Some(token), Some(user), None) => Ok(Some(Auth::Basic {
            user: user.trim().to_owned(),
            password: token.trim().to_owned(),
        })),
        (None, Some(user), Some(password)) => Ok(Some(Auth::Basic {
            user: user.trim().to_owned(),
            password,
        })),
        (Some(_), _, Some(_)) => Err("give either `token` or `password`, not both"),
        (None, Some(_), None) => Err("`username` needs a `password` (or a `token`)"),
        (None, None, _) => Err("expected `token`, or `username` and `password`"),
    }
}

#[cfg(unix)]
fn warn_if_shared(path: &Path, meta: &std::fs::Metadata) {
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            "secret file is readable by group or others; chmod 600 it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_path: &Path, _meta: &std::fs::Metadata) {}

// === URLs ===

/// How a source is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `https://…` (reqwest + rustls).
    Https,
    /// `ssh://…` or scp-like `user@host:path`, through the system `ssh` binary and its agent.
    Ssh,
    /// `file://…` or an absolute local path (served by `git-upload-pack`, so `git` must be
    /// installed).
    Local,
}

/// A validated source URL: what gix is given (never containing a password) and what people see.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    /// The URL handed to gix: credentials removed for https.
    pub(crate) fetch: String,
    /// The URL to show in messages and logs.
    pub(crate) display: String,
    pub(crate) transport: Transport,
    /// Credentials that were embedded in an https URL.
    pub(crate) embedded: Option<Auth>,
}

impl fmt::Debug for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteUrl")
            .field("url", &self.display)
            .field("transport", &self.transport)
            .field("embedded", &self.embedded)
            .finish()
    }
}

impl RemoteUrl {
    /// Parses and checks `url`: `https://…`, `ssh://…`, `user@host:path`, `file://…` or an
    /// absolute path. Plain `http://` and `git://` are refused (no transport security).
    pub fn parse(url: &str) -> Result<RemoteUrl, GitError> {
        let display = redact_url(url);
        let invalid = |reason: &str| GitError::InvalidUrl {
            url: display.clone(),
            reason: reason.to_owned(),
        };
        if url.trim() != url || url.is_empty() {
            return Err(invalid("empty or surrounded by whitespace"));
        }
        if url.chars().any(char::is_control) {
            return Err(invalid("contains control characters"));
        }
        let mut parsed = gix::url::parse(url)
            .map_err(|_| invalid("not a git URL (expected https://, ssh://, user@host:path, file:// or an absolute path)"))?;
        use gix::url::Scheme;
        match parsed.scheme {
            Scheme::Https => {
                if parsed.host().is_none() {
                    return Err(invalid("no host"));
                }
                let user = parsed.set_user(None);
                let password = parsed.set_password(None);
                let embedded = match (user, password) {
                    (Some(user), Some(password)) => Some(Auth::Basic { user, password }),
                    (Some(user), None) => Some(Auth::Basic {
                        user,
                        password: String::new(),
                    }),
                    (None, Some(password)) => Some(Auth::Basic {
                        user: String::new(),
                        password,
                    }),
                    (None, None) => None,
                };
                let fetch = parsed.to_bstring().to_string();
                Ok(RemoteUrl {
                    display: redact_url(&fetch),
                    fetch,
                    transport: Transport::Https,
                    embedded,
                })
            }
            Scheme::Ssh => {
                if parsed.password().is_some() {
                    return Err(invalid(
                        "ssh URLs cannot carry a password (use an ssh key and agent)",
                    ));
                }
                Ok(RemoteUrl {
                    fetch: url.to_owned(),
                    display,
                    transport: Transport::Ssh,
                    embedded: None,
                })
            }
            Scheme::File => {
                let is_file_url = url.starts_with("file://");
                if !is_file_url && !Path::new(url).is_absolute() {
                    return Err(invalid("a local path must be absolute"));
                }
                Ok(RemoteUrl {
                    fetch: url.to_owned(),
                    display,
                    transport: Transport::Local,
                    embedded: None,
                })
            }
            Scheme::Http => Err(invalid("plain http is not allowed; use https")),
            Scheme::Git => Err(invalid(
                "the unauthenticated git:// protocol is not allowed; use https or ssh",
            )),
            _ => Err(invalid("unsupported scheme")),
        }
    }

    /// The URL as shown to people (no credentials).
    pub fn display(&self) -> &str {
        &self.display
    }

    /// How the source is reached.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Whether the URL itself carried credentials (a user or a password).
    pub fn has_embedded_credentials(&self) -> bool {
        self.embedded.is_some()
    }
}

/// `url` with any credentials replaced by `***`: the whole user-info part of an
/// `https://user:pass@host/…` URL (a token may sit in the user part), and the password of any
/// other `scheme://user:pass@…` URL. scp-like `user@host:path` URLs carry no password and are
/// returned unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let scheme = &url[..scheme_end];
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let shown = if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http") {
        "***".to_owned()
    } else {
        match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***"),
            None => userinfo.to_owned(),
        }
    };
    format!("{scheme}://{shown}@{}", &rest[at + 1..])
}

/// Replaces every known secret in messages (defence in depth: gix is never given a secret in
/// a URL, but a server or a proxy may echo one back).
#[derive(Default, Clone)]
pub struct Scrubber {
    secrets: Vec<String>,
}

impl Scrubber {
    /// A scrubber for the secrets of `auth` and of the raw `url`'s user-info.
    pub fn new(url: &str, auth: Option<&Auth>) -> Scrubber {
        let mut secrets = Vec::new();
        if let Some(auth) = auth {
            secrets.push(auth.secret().to_owned());
        }
        if let Some(scheme_end) = url.find("://") {
            let rest = &url[scheme_end + 3..];
            let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
            if let Some(at) = authority.rfind('@') {
                let userinfo = &authority[..at];
                let https = url[..scheme_end].eq_ignore_ascii_case("https");
                match userinfo.split_once(':') {
                    // `user:password`: the password (and the pair); a user name is no secret.
                    Some((_, password)) => {
                        secrets.push(password.to_owned());
                        secrets.push(userinfo.to_owned());
                    }
                    // A lone https user is often a token (`https://TOKEN@host/…`).
                    None if https => secrets.push(userinfo.to_owned()),
                    // `ssh://git@host`: just a user name.
                    None => {}
                }
            }
        }
        // Also the percent-decoded forms, as gix and servers may show either.
        let decoded: Vec<String> = secrets.iter().filter_map(|s| percent_decode(s)).collect();
        secrets.extend(decoded);
        // Very short strings (an `x` user) would shred messages and are not secrets.
        secrets.retain(|s| s.len() >= 3);
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Scrubber { secrets }
    }

    /// `message` with every secret replaced by `***`.
    pub fn scrub(&self, message: &str) -> String {
        let mut out = message.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }
}

/// The percent-decoded form of `s`, if it has any escapes and decodes to UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return None;
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}
