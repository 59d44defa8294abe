//! [`CommitTree`]: a [`SourceTree`] over the tree of one commit, optionally rooted at a
//! sub-directory. Symlinks (mode 120000) are reported with their target text and never followed
//! here; submodules (gitlinks) are left out; file sizes come from object headers, without
//! inflating the blobs.

use gix::ObjectId;
use gix::bstr::ByteSlice;
use gix::objs::tree::EntryKind as GitKind;

use super::{GitError, normalize_path};
use crate::render::{EntryKind, SourceTree, TreeEntry, TreeError};

/// The files of one commit (from a [`super::Mirror`]), as rendering reads them. `Send + Sync`:
/// each call takes a thread-local handle of the shared repository.
#[derive(Clone)]
pub struct CommitTree {
    repo: gix::ThreadSafeRepository,
    commit: ObjectId,
    /// The tree of the root directory (the commit's tree, or that of the sub-path).
    root: ObjectId,
}

impl std::fmt::Debug for CommitTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitTree")
            .field("commit", &self.commit.to_hex().to_string())
            .field("root", &self.root.to_hex().to_string())
            .finish()
    }
}

/// One entry found while walking down a path.
struct Found {
    kind: GitKind,
    id: ObjectId,
}

// === impl CommitTree ===

impl CommitTree {
    /// The tree of `commit` (40 hex) in `repo`, rooted at the directory `path`. The sub-path
    /// must be a real directory: a symlink on the way is [`GitError::NotADirectory`].
    pub(crate) fn open(
        repo: gix::ThreadSafeRepository,
        source: &str,
        commit: &str,
        path: &str,
    ) -> Result<CommitTree, GitError> {
        let not_found = || GitError::CommitNotFound {
            source_name: source.to_owned(),
            commit: commit.to_owned(),
        };
        let id = ObjectId::from_hex(commit.as_bytes()).map_err(|_| not_found())?;
        let local = repo.to_thread_local();
        let commit_obj = local.find_commit(id).map_err(|_| not_found())?;
        let tree = commit_obj.tree_id().map_err(|_| not_found())?.detach();
        let mut tree = CommitTree {
            repo,
            commit: id,
            root: tree,
        };
        let path = normalize_path(path)?;
        if !path.is_empty() {
            let err_path = || path.clone();
            tree.root = match tree.lookup(&local, &path) {
                Ok(Some(Found {
                    kind: GitKind::Tree,
                    id,
                })) => id,
                Ok(Some(_)) | Err(TreeError::NotADirectory { .. } | TreeError::NotAFile { .. }) => {
                    return Err(GitError::NotADirectory {
                        commit: commit.to_owned(),
                        path: err_path(),
                    });
                }
                Ok(None) | Err(_) => {
                    return Err(GitError::PathNotFound {
                        commit: commit.to_owned(),
                        path: err_path(),
                    });
                }
            };
        }
        Ok(tree)
    }

    /// The commit this tree belongs to (40 hex).
    pub fn commit(&self) -> String {
        self.commit.to_hex().to_string()
    }

    /// Walks down `path` (normalised, non-empty) from the root. `Ok(None)` if a component is
    /// missing (or a submodule); a symlink or a file before the last component is an error.
    fn lookup(&self, repo: &gix::Repository, path: &str) -> Result<Option<Found>, TreeError> {
        let mut current = Found {
            kind: GitKind::Tree,
            id: self.root,
        };
        let mut walked = String::new();
        for comp in path.split('/') {
            match current.kind {
                GitKind::Tree => {}
                GitKind::Link => return Err(TreeError::NotAFile { path: walked }),
                _ => return Err(TreeError::NotADirectory { path: walked }),
            }
            walked = if walked.is_empty() {
                comp.to_owned()
            } else {
                format!("{walked}/{comp}")
            };
            let tree = repo
                .find_tree(current.id)
                .map_err(|e| backend(&walked, &e))?;
            let decoded = tree.decode().map_err(|e| backend(&walked, &e))?;
            let Some(entry) = decoded
                .entries
                .iter()
                .find(|e| e.filename.as_bytes() == comp.as_bytes())
            else {
                return Ok(None);
            };
            let kind = entry.mode.kind();
            if kind == GitKind::Commit {
                return Ok(None);
            }
            current = Found {
                kind,
                id: entry.oid.to_owned(),
            };
        }
        Ok(Some(current))
    }

    /// Finds `path` (`""` is the root), normalised, with `NotFound` for a missing entry.
    fn find(&self, repo: &gix::Repository, path: &str) -> Result<(String, Found), TreeError> {
        let normalized = normalize_path(path).map_err(|_| TreeError::InvalidPath {
            path: path.to_owned(),
            reason: "must be relative and must not contain '..'",
        })?;
        if normalized.is_empty() {
            return Ok((
                normalized,
                Found {
                    kind: GitKind::Tree,
                    id: self.root,
                },
            ));
        }
        match self.lookup(repo, &normalized)? {
            Some(found) => Ok((normalized, found)),
            None => Err(TreeError::NotFound { path: normalized }),
        }
    }
}

fn backend(path: &str, err: &gix::Error) -> TreeError {
    TreeError::Backend {
        path: path.to_owned(),
        message: format!("{err:#}"),
    }
}

impl SourceTree for CommitTree {
    fn read(&self, path: &str) -> Result<Vec<u8>, TreeError> {
        let repo = self.repo.to_thread_local();
        let (path, found) = self.find(&repo, path)?;
        match found.kind {
            GitKind::Blob | GitKind::BlobExecutable => {
                let blob = repo.find_blob(found.id).map_err(|e| backend(&path, &e))?;
                Ok(blob.detach().data)
            }
            _ => Err(TreeError::NotAFile { path }),
        }
    }

    fn entries(&self, dir: &str) -> Result<Vec<TreeEntry>, TreeError> {
        let repo = self.repo.to_thread_local();
        let (dir, found) = self.find(&repo, dir)?;
        if found.kind != GitKind::Tree {
            return Err(TreeError::NotADirectory { path: dir });
        }
        let tree = repo.find_tree(found.id).map_err(|e| backend(&dir, &e))?;
        let decoded = tree.decode().map_err(|e| backend(&dir, &e))?;
        let mut out = Vec::with_capacity(decoded.entries.len());
        for entry in &decoded.entries {
            let name = entry
                .filename
                .to_str()
                .map_err(|_| TreeError::InvalidPath {
                    path: dir.clone(),
                    reason: "contains a name that is not UTF-8",
                })?
                .to_owned();
            let entry_path = if dir.is_empty() {
                name.clone()
            } else {
                format!("{dir}/{name}")
            };
            let (kind, size) = match entry.mode.kind() {
                GitKind::Tree => (EntryKind::Dir, 0),
                GitKind::Blob | GitKind::BlobExecutable => {
                    let header = repo
                        .find_header(entry.oid)
                        .map_err(|e| backend(&entry_path, &e))?;
                    (EntryKind::File, header.size())
                }
                GitKind::Link => {
                    let blob = repo
                        .find_blob(entry.oid)
                        .map_err(|e| backend(&entry_path, &e))?;
                    let size = blob.data.len() as u64;
                    let target = String::from_utf8(blob.detach().data).map_err(|_| {
                        TreeError::InvalidPath {
                            path: entry_path.clone(),
                            reason: "symlink target is not UTF-8",
                        }
                    })?;
                    (EntryKind::Symlink { target }, size)
                }
                // A submodule: its content is not in this repository.
                GitKind::Commit => continue,
            };
            out.push(TreeEntry { name, kind, size });
        }
        Ok(out)
    }
}
