//! Backup images (etcd's `snapshot save` files): a whole-state copy (the
//! raft snapshot stream of `snapshot.rs`), zeros up to a multiple of 512
//! bytes, then the SHA-256 of both, as etcd lays its files out (etcdctl
//! finds the digest by the size: 32 past a multiple of 512). An image is checked before anything reads it, and
//! restoring one builds the store of a new cluster: same keys, history and
//! revision; no members, no raft state, no cluster id (the new cluster's
//! members and id come from its `initial_cluster`).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::snapshot::{summarize_copy, CopySummary};
use super::tables::{CONSENSUS, CONSENSUS_SNAPSHOT, MEMBERS, META, META_APPLIED_INDEX};
use super::{Result, Store, StoreError};

const DIGEST_LEN: u64 = 32;

/// etcd's page size, which the copy is padded to.
const PAGE: u64 = 512;

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn io(what: &str, path: &Path, err: std::io::Error) -> StoreError {
    StoreError::InvalidRequest(format!("{what} {}: {err}", path.display()))
}

impl Store {
    /// Writes an image of the store (a consistent copy and its SHA-256)
    /// to `out`; returns the revision it holds.
    pub fn write_image(&self, out: impl Write) -> Result<i64> {
        let mut hashing = Hashing {
            inner: BufWriter::new(out),
            hasher: Sha256::new(),
            written: 0,
        };
        self.write_snapshot(&mut hashing)?;
        let failed =
            |err: std::io::Error| StoreError::InvalidRequest(format!("writing the image: {err}"));
        let padding = (PAGE - hashing.written % PAGE) % PAGE;
        hashing
            .write_all(&vec![0; padding as usize])
            .map_err(failed)?;
        let digest = hashing.hasher.finalize();
        let mut out = hashing.inner;
        out.write_all(&digest)
            .and_then(|()| out.flush())
            .map_err(failed)?;
        Ok(self.revision())
    }

    /// Replaces this (new, empty) store with the image at `path`, made
    /// ready to found a new cluster: the members, the applied raft index
    /// and the cluster id are cleared, the keys, history, leases, auth and
    /// revision kept.
    pub fn restore_image(&self, path: &Path) -> Result<CopySummary> {
        let summary = verify_image(path)?;
        let (copy, _) = open_copy(path)?;
        self.restore_snapshot(copy, &[])?;
        let _order = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let txn = self.begin_write()?;
        {
            txn.open_table(MEMBERS)?.retain(|_, _| false)?;
            let mut meta = txn.open_table(META)?;
            meta.insert(META_APPLIED_INDEX, 0)?;
            meta.remove("cluster_id")?;
            txn.open_table(CONSENSUS)?.remove(CONSENSUS_SNAPSHOT)?;
        }
        txn.commit()?;
        Ok(summary)
    }
}

/// The copy inside the image at `path` (without its digest), and its
/// length.
fn open_copy(path: &Path) -> Result<(std::io::Take<BufReader<File>>, u64)> {
    let mut file = File::open(path).map_err(|err| io("cannot open", path, err))?;
    let len = file
        .seek(SeekFrom::End(0))
        .and_then(|len| file.seek(SeekFrom::Start(0)).map(|_| len))
        .map_err(|err| io("cannot read", path, err))?;
    if len <= DIGEST_LEN {
        return Err(StoreError::Corrupt(format!(
            "{} is {len} bytes: too short to be an image",
            path.display()
        )));
    }
    Ok((
        BufReader::new(file).take(len - DIGEST_LEN),
        len - DIGEST_LEN,
    ))
}

/// Checks the image at `path`: its SHA-256 matches, and every record of
/// the copy decodes. Returns what it holds.
pub fn verify_image(path: &Path) -> Result<CopySummary> {
    let (mut copy, len) = open_copy(path)?;
    let mut hasher = Sha256::new();
    let hashed =
        std::io::copy(&mut copy, &mut hasher).map_err(|err| io("cannot read", path, err))?;
    let mut stored = [0u8; DIGEST_LEN as usize];
    let mut file = copy.into_inner();
    file.read_exact(&mut stored)
        .map_err(|err| io("cannot read the digest of", path, err))?;
    if hashed != len || hasher.finalize().as_slice() != stored {
        return Err(StoreError::Corrupt(format!(
            "{}: the SHA-256 at its end does not match its contents (damaged or cut short); take a new image",
            path.display()
        )));
    }
    let (copy, _) = open_copy(path)?;
    summarize_copy(copy)
}
