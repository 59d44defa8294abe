//! The repository tree that rendering reads: the [`SourceTree`] trait, [`DirTree`] over a local
//! directory, and symlink-aware path resolution that never leaves the repository.
//!
//! Paths are repository-relative with `/` separators; `""` is the repository root. A tree reports
//! symlinks as symlinks and never follows them itself: [`resolve`] and [`walk_files`] follow them
//! *within the tree*, so a link can never reach a file outside the repository, whatever backs
//! the tree (a directory on disk, or a git commit).

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::PathBuf;

/// At most this many symlinks are followed while resolving one path (stops loops).
pub const MAX_SYMLINK_HOPS: usize = 16;

/// At most this many entries are visited by one [`walk_files`] (symlinked directories could
/// otherwise multiply a small tree into a huge one).
pub const MAX_WALK_ENTRIES: usize = 100_000;

/// A read-only tree of files (a directory on disk, a git commit, …).
pub trait SourceTree: Send + Sync {
    /// The content of the regular file at `path`. Fails if any component of `path` is a
    /// symlink: links are resolved by the caller ([`resolve`]), never by the tree.
    fn read(&self, path: &str) -> Result<Vec<u8>, TreeError>;

    /// The entries of the directory at `dir` (`""` is the root), in any order. Symlinks are
    /// reported as [`EntryKind::Symlink`], not followed. Special files (sockets, fifos, git
    /// submodules) are left out.
    fn entries(&self, dir: &str) -> Result<Vec<TreeEntry>, TreeError>;
}

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// The entry's name (one path component).
    pub name: String,
    pub kind: EntryKind,
    /// Size in bytes of a file (of the link text for a symlink; 0 for a directory).
    pub size: u64,
}

/// What a [`TreeEntry`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    /// A symbolic link with its raw target text.
    Symlink {
        target: String,
    },
}

/// Errors reading or resolving paths in a [`SourceTree`].
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{path}: not found")]
    NotFound { path: String },
    #[error("{path}: not a directory")]
    NotADirectory { path: String },
    #[error("{path}: not a regular file")]
    NotAFile { path: String },
    #[error("{path:?}: invalid path: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("symlink {link} -> {target} leaves the repository")]
    SymlinkEscapes { link: String, target: String },
    #[error("symlink {link}: more than {MAX_SYMLINK_HOPS} links to follow (a symlink loop?)")]
    SymlinkLoop { link: String },
    #[error("symlink {link} leads back into a directory that contains it (a symlink loop)")]
    SymlinkCycle { link: String },
    #[error("{dir}: more than {MAX_WALK_ENTRIES} entries to walk")]
    TooManyEntries { dir: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    /// A failure of the storage behind a tree (for example a git object that cannot be read).
    #[error("{path}: {message}")]
    Backend { path: String, message: String },
}

// === path helpers ===

/// Normalises a repository-relative path: drops empty and `.` components and applies `..`.
/// Fails on absolute paths and on `..` that would climb above the root.
pub fn normalize(path: &str) -> Result<String, TreeError> {
    if path.starts_with('/') {
        return Err(TreeError::InvalidPath {
            path: path.to_owned(),
            reason: "absolute paths are not allowed",
        });
    }
    let mut parts: Vec<&str> = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(TreeError::InvalidPath {
                        path: path.to_owned(),
                        reason: "climbs above the repository root",
                    });
                }
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// Joins a directory and a relative path (`""` is the root).
pub fn join(dir: &str, rest: &str) -> String {
    match (dir.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_owned(),
        (false, true) => dir.to_owned(),
        (false, false) => format!("{dir}/{rest}"),
    }
}

fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

// === resolution within a tree ===

/// What a path resolves to after following symlinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// A regular file at the real (symlink-free) `path`.
    File { path: String, size: u64 },
    /// A directory at the real (symlink-free) `path`.
    Dir { path: String },
}

/// Resolves `path`, following symlinks (at most [`MAX_SYMLINK_HOPS`]) inside the tree.
///
/// A link target is taken relative to the link's directory; an absolute target, or one whose
/// `..` climbs above the repository root, is [`TreeError::SymlinkEscapes`].
pub fn resolve(tree: &dyn SourceTree, path: &str) -> Result<Resolved, TreeError> {
    let normalized = normalize(path)?;
    let mut queue: VecDeque<String> = components(&normalized).map(str::to_owned).collect();
    let mut current = String::new();
    let mut hops = 0;
    while let Some(comp) = queue.pop_front() {
        let here = join(&current, &comp);
        let entry = tree
            .entries(&current)?
            .into_iter()
            .find(|e| e.name == comp)
            .ok_or_else(|| TreeError::NotFound { path: here.clone() })?;
        match entry.kind {
            EntryKind::Dir => current = here,
            EntryKind::File if queue.is_empty() => {
                return Ok(Resolved::File {
                    path: here,
                    size: entry.size,
                });
            }
            EntryKind::File => return Err(TreeError::NotADirectory { path: here }),
            EntryKind::Symlink { target } => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(TreeError::SymlinkLoop { link: here });
                }
                let followed = link_destination(&current, &here, &target)?;
                let mut next: VecDeque<String> = components(&followed).map(str::to_owned).collect();
                next.extend(queue);
                queue = next;
                current = String::new();
            }
        }
    }
    Ok(Resolved::Dir { path: current })
}

/// Where the link at `link` (in directory `dir`) with text `target` points, as a normalised
/// repository path; an error if that is outside the repository.
fn link_destination(dir: &str, link: &str, target: &str) -> Result<String, TreeError> {
    let escapes = || TreeError::SymlinkEscapes {
        link: link.to_owned(),
        target: target.to_owned(),
    };
    if target.starts_with('/') || target.is_empty() {
        return Err(escapes());
    }
    normalize(&join(dir, target)).map_err(|_| escapes())
}

/// A file found by [`walk_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundFile {
    /// The path as seen through the walked directory (through any symlinks).
    pub path: String,
    /// The real, symlink-free path to read.
    pub real: String,
    pub size: u64,
}

/// Lists, recursively and sorted by path, the files under the directory `dir` whose name
/// `want` accepts. Entries whose name starts with `.` are skipped; symlinks are followed within
/// the tree (a link to a directory is walked; a link to a directory being walked or to one of
/// its ancestors is [`TreeError::SymlinkCycle`]).
pub fn walk_files(
    tree: &dyn SourceTree,
    dir: &str,
    want: &dyn Fn(&str) -> bool,
) -> Result<Vec<FoundFile>, TreeError> {
    walk(tree, dir, want, false)
}

/// Every file under `dir` as [`walk_files`] finds them, hidden ones (`.helmignore`) included:
/// what a rendering tool is given to read.
pub fn walk_all_files(tree: &dyn SourceTree, dir: &str) -> Result<Vec<FoundFile>, TreeError> {
    walk(tree, dir, &|_| true, true)
}

fn walk(
    tree: &dyn SourceTree,
    dir: &str,
    want: &dyn Fn(&str) -> bool,
    hidden: bool,
) -> Result<Vec<FoundFile>, TreeError> {
    let real = match resolve(tree, dir)? {
        Resolved::Dir { path } => path,
        Resolved::File { .. } => {
            return Err(TreeError::NotADirectory {
                path: dir.to_owned(),
            });
        }
    };
    let mut walk = Walk {
        tree,
        want,
        hidden,
        root: dir.to_owned(),
        stack: vec![real.clone()],
        visited: 0,
        out: Vec::new(),
    };
    walk.dir(&normalize(dir)?, &real)?;
    walk.out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(walk.out)
}

struct Walk<'a> {
    tree: &'a dyn SourceTree,
    want: &'a dyn Fn(&str) -> bool,
    /// Whether entries whose name starts with `.` are walked too.
    hidden: bool,
    root: String,
    /// Real paths of the directories being walked, outermost first.
    stack: Vec<String>,
    visited: usize,
    out: Vec<FoundFile>,
}

impl Walk<'_> {
    fn dir(&mut self, logical: &str, real: &str) -> Result<(), TreeError> {
        let mut entries = self.tree.entries(real)?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for entry in entries {
            if entry.name.starts_with('.') && !self.hidden {
                continue;
            }
            self.visited += 1;
            if self.visited > MAX_WALK_ENTRIES {
                return Err(TreeError::TooManyEntries {
                    dir: self.root.clone(),
                });
            }
            let logical_path = join(logical, &entry.name);
            let real_path = join(real, &entry.name);
            let resolved = match entry.kind {
                EntryKind::File => Resolved::File {
                    path: real_path,
                    size: entry.size,
                },
                EntryKind::Dir => Resolved::Dir { path: real_path },
                EntryKind::Symlink { .. } => {
                    let resolved = resolve(self.tree, &real_path)?;
                    if let Resolved::Dir { path } = &resolved {
                        // A link to a directory being walked, or to one of its ancestors, would
                        // be walked forever; any other directory is finite.
                        let prefix = format!("{path}/");
                        if path.is_empty()
                            || self
                                .stack
                                .iter()
                                .any(|s| s == path || s.starts_with(&prefix))
                        {
                            return Err(TreeError::SymlinkCycle { link: logical_path });
                        }
                    }
                    resolved
                }
            };
            match resolved {
                Resolved::File { path, size } => {
                    if (self.want)(&entry.name) {
                        self.out.push(FoundFile {
                            path: logical_path,
                            real: path,
                            size,
                        });
                    }
                }
                Resolved::Dir { path } => {
                    self.stack.push(path.clone());
                    self.dir(&logical_path, &path)?;
                    self.stack.pop();
                }
            }
        }
        Ok(())
    }
}

// === DirTree ===

/// A [`SourceTree`] over a directory on disk. Reports symlinks as symlinks and refuses to read
/// through them, so every link goes through [`resolve`]'s checks.
#[derive(Debug, Clone)]
pub struct DirTree {
    root: PathBuf,
}

impl DirTree {
    /// A tree rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirTree { root: root.into() }
    }

    /// The directory the tree reads.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// The on-disk path of `path`, checking that no component is a symlink and that every
    /// parent is a directory.
    fn local(&self, path: &str) -> Result<PathBuf, TreeError> {
        let normalized = normalize(path)?;
        let mut local = self.root.clone();
        let mut walked = String::new();
        for comp in components(&normalized) {
            walked = join(&walked, comp);
            local.push(comp);
            let meta = fs::symlink_metadata(&local).map_err(|e| io_error(&walked, e))?;
            if meta.file_type().is_symlink() {
                return Err(TreeError::NotAFile { path: walked });
            }
        }
        Ok(local)
    }

    /// The on-disk path of `path` (as [`Self::local`]) and its metadata; a final symlink is
    /// not followed.
    fn local_with_metadata(&self, path: &str) -> Result<(PathBuf, fs::Metadata), TreeError> {
        let local = self.local(path)?;
        let meta = fs::symlink_metadata(&local).map_err(|e| io_error(path, e))?;
        Ok((local, meta))
    }
}

fn io_error(path: &str, source: io::Error) -> TreeError {
    if source.kind() == io::ErrorKind::NotFound {
        TreeError::NotFound {
            path: path.to_owned(),
        }
    } else {
        TreeError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

impl SourceTree for DirTree {
    fn read(&self, path: &str) -> Result<Vec<u8>, TreeError> {
        let (local, meta) = self.local_with_metadata(path)?;
        if !meta.is_file() {
            return Err(TreeError::NotAFile {
                path: path.to_owned(),
            });
        }
        fs::read(&local).map_err(|e| io_error(path, e))
    }

    fn entries(&self, dir: &str) -> Result<Vec<TreeEntry>, TreeError> {
        let (local, meta) = self.local_with_metadata(dir)?;
        if !meta.is_dir() {
            return Err(TreeError::NotADirectory {
                path: dir.to_owned(),
            });
        }
        let mut out = Vec::new();
        for item in fs::read_dir(&local).map_err(|e| io_error(dir, e))? {
            let item = item.map_err(|e| io_error(dir, e))?;
            let name = item
                .file_name()
                .into_string()
                .map_err(|_| TreeError::InvalidPath {
                    path: dir.to_owned(),
                    reason: "contains a name that is not UTF-8",
                })?;
            let path = join(dir, &name);
            let meta = fs::symlink_metadata(item.path()).map_err(|e| io_error(&path, e))?;
            let kind =
                if meta.file_type().is_symlink() {
                    let target = fs::read_link(item.path()).map_err(|e| io_error(&path, e))?;
                    let target = target.into_os_string().into_string().map_err(|_| {
                        TreeError::InvalidPath {
                            path: path.clone(),
                            reason: "symlink target is not UTF-8",
                        }
                    })?;
                    EntryKind::Symlink { target }
                } else if meta.is_dir() {
                    EntryKind::Dir
                } else if meta.is_file() {
                    EntryKind::File
                } else {
                    continue;
                };
            let size = if kind == EntryKind::Dir {
                0
            } else {
                meta.len()
            };
            out.push(TreeEntry { name, kind, size });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_and_join() {
        assert_eq!(normalize("a/./b//c/../d").unwrap(), "a/b/d");
        assert_eq!(normalize("").unwrap(), "");
        assert!(normalize("/etc").is_err());
        assert!(normalize("a/../..").is_err());
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a", ""), "a");
        assert_eq!(join("a", "b"), "a/b");
    }

    #[test]
    fn dir_tree_reports_symlinks_and_resolve_follows_them_inside() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("real/sub")).unwrap();
        fs::write(dir.path().join("real/sub/f.yaml"), "x").unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink("../link/sub/f.yaml", dir.path().join("real/f2")).unwrap();
        let tree = DirTree::new(dir.path());
        let mut entries = tree.entries("").unwrap();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(
            entries[0].kind,
            EntryKind::Symlink {
                target: "real".into()
            }
        );
        assert_eq!(entries[1].kind, EntryKind::Dir);
        // The tree itself never reads through a link.
        assert!(matches!(
            tree.read("link/sub/f.yaml"),
            Err(TreeError::NotAFile { .. })
        ));
        assert_eq!(tree.read("real/sub/f.yaml").unwrap(), b"x");
        assert_eq!(
            resolve(&tree, "link/sub/f.yaml").unwrap(),
            Resolved::File {
                path: "real/sub/f.yaml".into(),
                size: 1
            }
        );
        assert_eq!(
            resolve(&tree, "real/f2").unwrap(),
            Resolved::File {
                path: "real/sub/f.yaml".into(),
                size: 1
            }
        );
        assert_eq!(
            resolve(&tree, "link/sub").unwrap(),
            Resolved::Dir {
                path: "real/sub".into()
            }
        );
        assert!(matches!(
            resolve(&tree, "real/missing"),
            Err(TreeError::NotFound { path }) if path == "real/missing"
        ));
        assert!(matches!(
            resolve(&tree, "real/sub/f.yaml/x"),
            Err(TreeError::NotADirectory { .. })
        ));
    }
}
