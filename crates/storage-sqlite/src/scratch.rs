//! [`LocalScratch`]: per-session scratch directories (checkpoints, a run's output) on local disk.

use std::{fs, io, path::PathBuf};

use trainyard_domain::{
    ports::{ScratchSpace, StoreError},
    SessionId,
};

use crate::codec::io_error;

/// Scratch space under one root: session `s` gets `<root>/<s>`. Session ids are validated
/// (`sess_` and hex digits), so they are safe path components.
#[derive(Debug, Clone)]
pub struct LocalScratch {
    root: PathBuf,
}

impl LocalScratch {
    /// Scratch space under `root`, created on first use.
    #[must_use]
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }
}

impl ScratchSpace for LocalScratch {
    fn dir_for(&self, session: &SessionId) -> Result<PathBuf, StoreError> {
        let dir = self.root.join(session.as_str());
        fs::create_dir_all(&dir).map_err(|e| io_error(&format!("cannot create {}", dir.display()), &e))?;
        Ok(dir)
    }

    fn remove(&self, session: &SessionId) -> Result<(), StoreError> {
        let dir = self.root.join(session.as_str());
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(&format!("cannot remove {}", dir.display()), &e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_and_removes_a_sessions_directory() {
        let root = tempfile::tempdir().unwrap();
        let scratch = LocalScratch::new(root.path().join("scratch"));
        let id = SessionId::generate();
        let dir = scratch.dir_for(&id).unwrap();
        assert_eq!(dir, root.path().join("scratch").join(id.as_str()));
        fs::create_dir_all(dir.join("checkpoints")).unwrap();
        fs::write(dir.join("checkpoints/epoch-1.safetensors"), b"w").unwrap();
        assert_eq!(scratch.dir_for(&id).unwrap(), dir, "asking again is fine");
        scratch.remove(&id).unwrap();
        assert!(!dir.exists());
        scratch.remove(&id).unwrap();
        scratch.remove(&SessionId::generate()).unwrap();
    }
}
