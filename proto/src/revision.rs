//! Revisions (git commit ids) as people read them.

/// The first 12 characters of a revision, as the CLI, logs and messages show it.
pub fn short(rev: &str) -> String {
    rev[..rev.len().min(12)].to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_revision_is_cut_to_twelve_characters() {
        assert_eq!(super::short("0123456789abcdef"), "0123456789ab");
        assert_eq!(super::short("v1"), "v1");
    }
}
