//! What the agent keeps on disk is for its own user only: the data dir is
//! 0700 and the files in it (store, raft log, node key, plugin cache,
//! service registrations) 0600. Files the agent writes through temporary
//! files (`tempfile`) are 0600 from the start; the rest are made here. A
//! data dir or file an older version (or an operator) left wider is
//! narrowed at start, and the log says so.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;

/// Creates `path` (and missing parents) as 0700, or narrows it to 0700.
pub fn dir(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)?;
    narrow(path, DIR_MODE)
}

/// Creates `path` empty as 0600 if it is missing, or narrows it to 0600
/// (its contents are left alone; a database then opens it as usual).
pub fn file(path: &Path) -> io::Result<()> {
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path);
    match created {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => narrow(path, FILE_MODE),
        Err(err) => Err(err),
    }
}

/// Takes away any permission beyond `mode`.
fn narrow(path: &Path, mode: u32) -> io::Result<()> {
    let current = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if current & !mode != 0 {
        std::fs::set_permissions(path, Permissions::from_mode(current & mode))?;
        tracing::warn!(
            path = %path.display(),
            "was open to other users (mode {current:o}); narrowed to {:o}",
            current & mode
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn new_ones_are_private_and_old_wide_ones_are_narrowed_keeping_their_contents() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("a/b");
        dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        let store = data.join("store.redb");
        file(&store).unwrap();
        assert_eq!(mode(&store), 0o600);

        std::fs::set_permissions(&data, Permissions::from_mode(0o755)).unwrap();
        std::fs::write(&store, b"kept").unwrap();
        std::fs::set_permissions(&store, Permissions::from_mode(0o644)).unwrap();
        dir(&data).unwrap();
        file(&store).unwrap();
        assert_eq!((mode(&data), mode(&store)), (0o700, 0o600));
        assert_eq!(std::fs::read(&store).unwrap(), b"kept");

        // Narrower than asked stays as it is.
        std::fs::set_permissions(&store, Permissions::from_mode(0o400)).unwrap();
        file(&store).unwrap();
        assert_eq!(mode(&store), 0o400);
    }
}
