//! Raft snapshots on disk and on the wire, in chunks.
//!
//! raft-rs carries a snapshot's data inside its `MsgSnapshot`; here that
//! data is only a [`SnapshotRef`]: the copy's applied index, size and
//! SHA-256. The copy itself is a file. The leader builds it in
//! `snapshots/out/` (off the raft thread, see `consensus::snapshots`); the
//! sender writes the message, then streams the file after it in chunks; the
//! receiver writes the chunks to `snapshots/in/` and hands raft the message
//! only once the size and digest match. The raft thread then installs a
//! whole, verified copy, read back row by row. No side ever holds a copy in
//! memory, whatever the store's size.
//!
//! Sent by: the leader, to a follower behind its log (the stream's key must
//! be bound to the member in the message's `from`, see `senders`, which is
//! checked before a byte of the copy is read). Checked by the receiver, so
//! that no member (any may hold a stolen key) can exhaust its memory, disk
//! or snapshot slot: the reference decodes; the size is at most
//! [`MAX_SNAPSHOT`]; one snapshot is received at a time; each chunk arrives
//! within [`CHUNK_TIMEOUT`] (a member that trickles bytes cannot hold the
//! slot); exactly the announced bytes come, the stream then ends, and their
//! digest matches. Otherwise the partial file is deleted, raft never sees
//! the message, and the refusal is counted.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::frames::FrameError;

/// Largest snapshot accepted: etcd's largest suggested backend quota. It
/// is written to disk as it arrives, so this bounds disk, not memory.
pub const MAX_SNAPSHOT: u64 = 8 << 30;
/// Bytes read or written at a time.
const CHUNK: usize = 1 << 20;
/// A chunk that takes longer than this to arrive ends the transfer.
pub const CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
/// Received copies raft did not install (it had moved past them) are
/// removed after this long.
const KEEP_RECEIVED: Duration = Duration::from_secs(600);

/// What a `MsgSnapshot` carries as its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRef {
    pub applied: u64,
    pub bytes: u64,
    pub sha256: [u8; 32],
}

impl SnapshotRef {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding a snapshot reference into memory cannot fail")
    }

    pub fn decode(data: &[u8]) -> Option<SnapshotRef> {
        postcard::from_bytes(data).ok()
    }

    fn file_name(&self) -> String {
        let digest: String = self.sha256.iter().map(|b| format!("{b:02x}")).collect();
        format!("{:016x}-{digest}.snap", self.applied)
    }
}

/// The data dir's `snapshots/`: copies built here (`out/`) and received
/// (`in/`). Both are emptied at start: a copy outlives no process.
#[derive(Debug)]
pub struct SnapshotDir {
    out: PathBuf,
    received: PathBuf,
}

impl SnapshotDir {
    pub fn open(data_dir: &Path) -> io::Result<SnapshotDir> {
        let root = data_dir.join("snapshots");
        let dir = SnapshotDir {
            out: root.join("out"),
            received: root.join("in"),
        };
        for path in [&root, &dir.out, &dir.received] {
            crate::private_files::dir(path)?;
        }
        for path in [&dir.out, &dir.received] {
            for entry in std::fs::read_dir(path)? {
                std::fs::remove_file(entry?.path())?;
            }
        }
        Ok(dir)
    }

    /// Where a copy built here is kept while followers need it.
    pub fn outgoing(&self, snapshot: &SnapshotRef) -> PathBuf {
        self.out.join(snapshot.file_name())
    }

    /// Where a received, verified copy waits for raft to install it.
    pub fn received(&self, snapshot: &SnapshotRef) -> PathBuf {
        self.received.join(snapshot.file_name())
    }

    /// Builds a copy in `out/` with `write`, which returns the applied index
    /// the copy reflects.
    pub fn build(
        &self,
        write: impl FnOnce(&mut SnapshotWriter) -> Result<u64, String>,
    ) -> Result<SnapshotRef, String> {
        let temp = tempfile::NamedTempFile::new_in(&self.out)
            .map_err(|e| format!("creating a file in {}: {e}", self.out.display()))?;
        let built = {
            let mut writer = SnapshotWriter {
                file: BufWriter::with_capacity(CHUNK, temp.as_file()),
                sha256: Sha256::new(),
                bytes: 0,
            };
            let applied = write(&mut writer)?;
            writer
                .file
                .flush()
                .map_err(|e| format!("writing {}: {e}", temp.path().display()))?;
            SnapshotRef {
                applied,
                bytes: writer.bytes,
                sha256: writer.sha256.finalize().into(),
            }
        };
        temp.persist(self.outgoing(&built))
            .map_err(|e| format!("keeping the copy in {}: {e}", self.out.display()))?;
        Ok(built)
    }

    /// Received copies older than [`KEEP_RECEIVED`] (raft moved past them).
    fn remove_stale_received(&self) {
        let Ok(entries) = std::fs::read_dir(&self.received) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|at| now.duration_since(at).unwrap_or_default() > KEEP_RECEIVED);
            if old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Writes a copy and takes its size and digest as it goes.
pub struct SnapshotWriter<'a> {
    file: BufWriter<&'a std::fs::File>,
    sha256: Sha256,
    bytes: u64,
}

impl Write for SnapshotWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        self.sha256.update(&buf[..written]);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Streams the copy `snapshot` names after its message, in chunks.
pub async fn send(
    stream: &mut quinn::SendStream,
    dir: &SnapshotDir,
    snapshot: &SnapshotRef,
) -> Result<(), String> {
    let path = dir.outgoing(snapshot);
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| {
        format!(
            "opening {}: {e} (replaced by a newer copy?)",
            path.display()
        )
    })?;
    let mut chunk = vec![0u8; CHUNK];
    let mut sent = 0u64;
    loop {
        let read = file
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        if read == 0 {
            break;
        }
        stream
            .write_all(&chunk[..read])
            .await
            .map_err(|e| e.to_string())?;
        sent += read as u64;
    }
    if sent != snapshot.bytes {
        return Err(format!(
            "{} has {sent} bytes, its reference says {}",
            path.display(),
            snapshot.bytes
        ));
    }
    Ok(())
}

/// Receives the copy `snapshot` names into `in/`; on any error the partial
/// file is gone.
pub async fn receive(
    stream: &mut quinn::RecvStream,
    dir: &SnapshotDir,
    snapshot: &SnapshotRef,
) -> Result<(), FrameError> {
    if snapshot.bytes > MAX_SNAPSHOT {
        return Err(FrameError::TooBig(snapshot.bytes));
    }
    dir.remove_stale_received();
    let io_error = |e: io::Error| FrameError::Store(e.to_string());
    let temp = tempfile::NamedTempFile::new_in(&dir.received).map_err(io_error)?;
    let mut file = tokio::fs::File::from_std(temp.as_file().try_clone().map_err(io_error)?);
    let mut sha256 = Sha256::new();
    let mut chunk = vec![0u8; CHUNK];
    let mut left = snapshot.bytes;
    while left > 0 {
        let want = (left as usize).min(CHUNK);
        match tokio::time::timeout(CHUNK_TIMEOUT, stream.read_exact(&mut chunk[..want])).await {
            Ok(Ok(())) => {}
            Ok(Err(quinn::ReadExactError::FinishedEarly(got))) => {
                return Err(FrameError::SnapshotShort(
                    snapshot.bytes - left + got as u64,
                ))
            }
            Ok(Err(err)) => return Err(FrameError::Read(err.to_string())),
            Err(_) => return Err(FrameError::SnapshotStalled),
        }
        sha256.update(&chunk[..want]);
        file.write_all(&chunk[..want]).await.map_err(io_error)?;
        left -= want as u64;
    }
    let mut extra = [0u8; 1];
    if !matches!(
        stream.read_exact(&mut extra).await,
        Err(quinn::ReadExactError::FinishedEarly(0))
    ) {
        return Err(FrameError::SnapshotLong);
    }
    if <[u8; 32]>::from(sha256.finalize()) != snapshot.sha256 {
        return Err(FrameError::SnapshotDigest);
    }
    file.flush().await.map_err(io_error)?;
    drop(file);
    temp.persist(dir.received(snapshot))
        .map_err(|e| io_error(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_copy_is_named_by_its_digest_and_leftovers_go_at_start() {
        let data = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(data.path()).unwrap();
        let built = dir
            .build(|out| {
                out.write_all(b"hello snapshot")
                    .map_err(|e| e.to_string())?;
                Ok(7)
            })
            .unwrap();
        assert_eq!(built.applied, 7);
        assert_eq!(built.bytes, 14);
        assert_eq!(
            built.sha256,
            <[u8; 32]>::from(Sha256::digest(b"hello snapshot"))
        );
        assert_eq!(
            std::fs::read(dir.outgoing(&built)).unwrap(),
            b"hello snapshot"
        );
        assert_eq!(SnapshotRef::decode(&built.encode()), Some(built.clone()));
        assert_eq!(SnapshotRef::decode(b"\xff\xff"), None);
        // A failed build leaves nothing.
        assert!(dir.build(|_| Err("no".into())).is_err());
        assert_eq!(std::fs::read_dir(&dir.out).unwrap().count(), 1);
        drop(dir);
        let dir = SnapshotDir::open(data.path()).unwrap();
        assert!(!dir.outgoing(&built).exists());
    }
}
