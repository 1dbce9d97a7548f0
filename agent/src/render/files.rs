//! Writing rendered files: whole or not at all, with their mode and owner.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::config::{AtomicMode, RenderEntry};

/// The current content of `path`, or `None` when it does not exist.
pub fn read(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// Writes `content` to the entry's destination.
///
/// The path was confined to `render_root` at load time; anyone who can
/// write inside the root could since have put a symlink on the way, so it
/// is checked again here: the directory must still resolve inside the
/// root, and the file must be a regular file with one link (or absent).
/// (A swap between this check and the rename remains possible for someone
/// who can write inside the root; keep the root writable by the agent only.)
pub fn write(entry: &RenderEntry, content: &[u8]) -> std::io::Result<()> {
    let dir = entry
        .dest
        .parent()
        .expect("a checked destination has a parent");
    std::fs::create_dir_all(dir)?;
    let real_dir = std::fs::canonicalize(dir)?;
    if !real_dir.starts_with(&entry.root) {
        return Err(refused(format!(
            "{} now leads outside render_root {} (to {}): refusing to write through a symlink",
            dir.display(),
            entry.root.display(),
            real_dir.display()
        )));
    }
    let file_name = entry
        .dest
        .file_name()
        .expect("a checked destination names a file");
    let dest = real_dir.join(file_name);
    if let Ok(meta) = std::fs::symlink_metadata(&dest) {
        if !meta.file_type().is_file() || meta.nlink() > 1 {
            return Err(refused(format!(
                "{} is not a plain file (a symlink, a directory or a hard link): refusing to write it",
                dest.display()
            )));
        }
    }
    match entry.atomic {
        AtomicMode::Rename => write_by_rename(entry, &real_dir, &dest, content),
        AtomicMode::InPlace => write_in_place(entry, &real_dir, &dest, content),
    }
}

fn refused(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, message)
}

/// Syncs a directory after a rename or a create. The change itself is
/// done; a filesystem that cannot sync directories only weakens crash
/// safety, so it is logged rather than failing the write.
fn sync_dir(dir: &Path) {
    if let Err(err) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %err, "cannot fsync the directory of a rendered file");
    }
}

/// A temporary file beside the destination, synced, renamed over it, and
/// the directory synced: after a crash the file is the old one or the new
/// one, and readers never see a partial file.
fn write_by_rename(
    entry: &RenderEntry,
    dir: &Path,
    dest: &Path,
    content: &[u8],
) -> std::io::Result<()> {
    let mut temp = tempfile::Builder::new()
        .prefix(".edgeconf-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    // Owner and mode first: the content is never readable more widely
    // than the entry allows.
    set_owner_and_mode(temp.as_file(), entry)?;
    temp.write_all(content)?;
    temp.as_file().sync_all()?;
    temp.persist(dest).map_err(|err| err.error)?;
    sync_dir(dir);
    Ok(())
}

/// The same inode rewritten (for bind-mounted files, whose inode must not
/// change): the new bytes are written over the old from the start, then
/// the file is cut to the new length and synced. It is never truncated to
/// empty first, so a reader that opens it afresh after the write sees the
/// whole new file; a reader in the middle of a read while it is written
/// may see old and new bytes mixed (the trade-off of not renaming).
fn write_in_place(
    entry: &RenderEntry,
    dir: &Path,
    dest: &Path,
    content: &[u8],
) -> std::io::Result<()> {
    let created = !dest.exists();
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(entry.mode)
        // Never through a symlink put there since the check above.
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() || meta.nlink() > 1 {
        return Err(refused(format!(
            "{} is not a plain file: refusing to write it",
            dest.display()
        )));
    }
    set_owner_and_mode(&file, entry)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(content)?;
    file.set_len(content.len() as u64)?;
    file.sync_all()?;
    if created {
        sync_dir(dir);
    }
    Ok(())
}

fn set_owner_and_mode(file: &File, entry: &RenderEntry) -> std::io::Result<()> {
    if entry.owner.is_some() || entry.group.is_some() {
        std::os::unix::fs::fchown(file, entry.owner, entry.group)?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(entry.mode))
}

/// True when the file at `path` has the entry's mode (ownership is checked
/// only when the entry sets it).
pub fn has_attributes(path: &Path, entry: &RenderEntry) -> bool {
    match std::fs::metadata(path) {
        Ok(meta) => {
            meta.permissions().mode() & 0o7777 == entry.mode
                && entry.owner.is_none_or(|uid| meta.uid() == uid)
                && entry.group.is_none_or(|gid| meta.gid() == gid)
        }
        Err(_) => false,
    }
}

/// Reads a template file.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    let mut text = String::new();
    File::open(path)?.read_to_string(&mut text)?;
    Ok(text)
}
