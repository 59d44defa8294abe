//! The CA's file IO: reading the CA files, warning about a key others can read, and writing
//! files atomically with an exact mode.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::CaError;

pub(super) fn io_err(path: &Path, source: io::Error) -> CaError {
    CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn exists(path: &Path) -> Result<bool, CaError> {
    path.try_exists().map_err(|e| io_err(path, e))
}

pub(super) fn read_text(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|e| io_err(path, e))
}

pub(super) fn warn_if_key_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "CA key file is accessible to other users; chmod 600 it"
        );
    }
}

/// [`flotilla_proto::files::write_atomic`], its error naming `path`.
pub(super) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    flotilla_proto::files::write_atomic(path, data, mode).map_err(|e| io_err(path, e))
}
