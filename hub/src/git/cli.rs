//! [`fetch_with_git_cli`]: the same fetch done by the `git` command-line tool, so the benchmark
//! can compare gix with `git fetch` on the same repository.

use std::path::Path;
use std::process::{Command, Stdio};

use super::GitError;
use super::auth::{Scrubber, redact_url};

/// Runs `git --git-dir <bare_dir> fetch --no-tags <url> <refspec>` non-interactively (no
/// terminal prompts, ssh in batch mode). Errors carry git's stderr with secrets scrubbed.
pub fn fetch_with_git_cli(bare_dir: &Path, url: &str, refspec: &str) -> Result<(), GitError> {
    let display = redact_url(url);
    let scrub = Scrubber::new(url, None);
    let fail = |message: String| GitError::GitCli {
        url: display.clone(),
        message: scrub.scrub(&message),
    };
    let output = Command::new("git")
        .arg("--git-dir")
        .arg(bare_dir)
        .args(["-c", "credential.helper=", "fetch", "--no-tags", "--quiet"])
        .arg("--")
        .arg(url)
        .arg(refspec)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("cannot run git: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(fail(format!(
            "git exited with {}: {}",
            output.status,
            stderr.trim()
        )))
    }
}
