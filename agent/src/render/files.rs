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
pub fn write(entry: &RenderEntry, content: &[u8]) -> std::io::Result<()> {
    let dir = entry
        .dest
        .parent()
        .expect("a checked destination has a parent");
    std::fs::create_dir_all(dir)?;
    match entry.atomic {
        AtomicMode::Rename => write_by_rename(entry, dir, content),
        AtomicMode::InPlace => write_in_place(entry, content),
    }
}

/// A temporary file beside the destination, synced, renamed over it, and
/// the directory synced: after a crash the file is the old one or the new
/// one, and readers never see a partial file.
fn write_by_rename(entry: &RenderEntry, dir: &Path, content: &[u8]) -> std::io::Result<()> {
    let mut temp = tempfile::Builder::new()
        .prefix(".edgeconf-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    temp.write_all(content)?;
    set_owner_and_mode(temp.as_file(), entry)?;
    temp.as_file().sync_all()?;
    temp.persist(&entry.dest).map_err(|err| err.error)?;
    File::open(dir)?.sync_all()
}

/// The same inode rewritten (for bind-mounted files, whose inode must not
/// change): the new bytes are written over the old from the start, then
/// the file is cut to the new length and synced. It is never truncated to
/// empty first, so a reader that opens it afresh after the write sees the
/// whole new file; a reader in the middle of a read while it is written
/// may see old and new bytes mixed (the trade-off of not renaming).
fn write_in_place(entry: &RenderEntry, content: &[u8]) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(entry.mode)
        .open(&entry.dest)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(content)?;
    file.set_len(content.len() as u64)?;
    set_owner_and_mode(&file, entry)?;
    file.sync_all()
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
