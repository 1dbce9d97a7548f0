//! The raft log's entries on disk: append-only segment files, preallocated,
//! so persisting a round is one sequential write and one `fdatasync`.
//!
//! Each record is `[length u32][crc32 u32][protobuf Entry]`, the checksum
//! chained from the previous record's (as etcd's WAL does), so bytes left
//! over from an older, torn write can never pass for a record. Replaying reads
//! the segments in order; an entry at index i replaces every entry >= i read
//! before it (that is how a conflicting tail was overwritten). A record that
//! is cut short or fails its checksum ends the replay of its segment: it is a
//! write that never completed. Opening zeroes such a tail in the last segment
//! (so a later rotation cannot leave it behind), and a torn tail left in an
//! older segment by an earlier version ends that segment's replay too; the
//! raft log (`log.rs`) then checks that the entries past its snapshot carry
//! on without a gap, which would mean entries were lost.
//! What the entries must be read against (the snapshot they follow, the
//! hard state) lives in `raft.redb`; see `log.rs`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::Entry;

/// Size a segment is preallocated to; a new one starts past it.
const SEGMENT_BYTES: u64 = 64 << 20;
/// Segments hold the raft log: only this agent's user may read them.
const SEGMENT_MODE: u32 = 0o600;
const HEADER: usize = 8;

struct Segment {
    path: PathBuf,
    /// Highest index written to this segment (0: none).
    last_index: u64,
}

pub struct Wal {
    dir: PathBuf,
    segments: Vec<Segment>,
    file: File,
    offset: u64,
    next_seq: u64,
    /// Checksum of the last record in the current segment (0 at its start).
    last_crc: u32,
    segment_bytes: u64,
}

fn chained_crc(previous: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(previous);
    hasher.update(payload);
    hasher.finalize()
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

impl Wal {
    /// Opens the log in `dir` and returns the entries it holds, in order.
    pub fn open(dir: &Path) -> io::Result<(Wal, Vec<Entry>)> {
        Wal::open_sized(dir, SEGMENT_BYTES)
    }

    fn open_sized(dir: &Path, segment_bytes: u64) -> io::Result<(Wal, Vec<Entry>)> {
        crate::private_files::dir(dir)?;
        let mut paths: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let path = e.path();
                let seq = path.file_stem()?.to_str()?.parse::<u64>().ok()?;
                (path.extension()? == "wal").then_some((seq, path))
            })
            .collect();
        paths.sort();
        let mut entries: Vec<Entry> = Vec::new();
        let mut segments = Vec::new();
        let mut end_of_last = (0, 0, false);
        for (_, path) in &paths {
            let replayed = replay(path, &mut entries)?;
            segments.push(Segment {
                path: path.clone(),
                last_index: replayed.last_index,
            });
            end_of_last = (replayed.end, replayed.crc, replayed.torn);
        }
        let next_seq = paths.last().map_or(0, |(seq, _)| seq + 1);
        let mut wal = match segments.last() {
            Some(segment) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&segment.path)?;
                let (end, crc, torn) = end_of_last;
                if torn {
                    // The write that never completed is cut off here, so
                    // whatever happens next (an append over it, or a
                    // rotation) no garbage stays after the last record.
                    tracing::warn!(segment = %segment.path.display(), offset = end, "the raft log ends in a torn write (a crash mid-append); it is cut off");
                    file.write_all_at(&[0; HEADER], end)?;
                    file.sync_data()?;
                }
                Wal {
                    dir: dir.to_path_buf(),
                    segments,
                    file,
                    offset: end,
                    next_seq,
                    last_crc: crc,
                    segment_bytes,
                }
            }
            None => {
                let (file, path) = create_segment(dir, next_seq, segment_bytes)?;
                Wal {
                    dir: dir.to_path_buf(),
                    segments: vec![Segment {
                        path,
                        last_index: 0,
                    }],
                    file,
                    offset: 0,
                    next_seq: next_seq + 1,
                    last_crc: 0,
                    segment_bytes,
                }
            }
        };
        if wal.offset >= wal.segment_bytes {
            wal.rotate()?;
        }
        Ok((wal, entries))
    }

    /// Appends entries durably (one write, one `fdatasync`).
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        let mut records = Vec::with_capacity(entries.len());
        let mut size = 0;
        for entry in entries {
            let bytes = entry.write_to_bytes().map_err(|e| invalid(&self.dir, e))?;
            size += HEADER + bytes.len();
            records.push(bytes);
        }
        if self.offset + size as u64 > self.segment_bytes && self.offset > 0 {
            self.rotate()?;
        }
        let mut buffer = Vec::with_capacity(size);
        let mut crc = self.last_crc;
        for bytes in &records {
            crc = chained_crc(crc, bytes);
            buffer.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            buffer.extend_from_slice(&crc.to_le_bytes());
            buffer.extend_from_slice(bytes);
        }
        use crate::fault::DiskFault;
        if crate::fault::disk() == DiskFault::Full {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (fault injection)",
            ));
        }
        self.file.write_all_at(&buffer, self.offset)?;
        if crate::fault::disk() == DiskFault::FailingFsync {
            return Err(io::Error::other("fdatasync failed (fault injection)"));
        }
        self.file.sync_data()?;
        self.offset += buffer.len() as u64;
        self.last_crc = crc;
        if let (Some(segment), Some(last)) = (self.segments.last_mut(), entries.last()) {
            // A conflicting tail may lower the highest live index: keep the
            // segment's bound as the highest ever written, which is safe.
            segment.last_index = segment.last_index.max(last.index);
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let (file, path) = create_segment(&self.dir, self.next_seq, self.segment_bytes)?;
        self.next_seq += 1;
        self.file = file;
        self.offset = 0;
        self.last_crc = 0;
        self.segments.push(Segment {
            path,
            last_index: 0,
        });
        Ok(())
    }

    /// Deletes segments holding only entries up to `index` (never the one
    /// being written).
    pub fn compact(&mut self, index: u64) -> io::Result<()> {
        while self.segments.len() > 1 && self.segments[0].last_index <= index {
            let segment = self.segments.remove(0);
            std::fs::remove_file(&segment.path)?;
        }
        Ok(())
    }

    /// Drops every entry: the log starts over after a snapshot.
    pub fn reset(&mut self) -> io::Result<()> {
        self.rotate()?;
        let current = self.segments.len() - 1;
        for segment in self.segments.drain(..current) {
            std::fs::remove_file(&segment.path)?;
        }
        sync_dir(&self.dir)
    }
}

fn create_segment(dir: &Path, seq: u64, bytes: u64) -> io::Result<(File, PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(format!("{seq:020}.wal"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(SEGMENT_MODE)
        .open(&path)?;
    preallocate(&file, bytes)?;
    file.sync_all()?;
    // The new name must survive a crash too.
    sync_dir(dir)?;
    Ok((file, path))
}

fn preallocate(file: &File, bytes: u64) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: posix_fallocate on a file descriptor we own; no memory is
    // shared with the kernel.
    let result = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, bytes as libc::off_t) };
    if result == 0 {
        Ok(())
    } else {
        // Not every filesystem can: fall back to a plain length.
        file.set_len(bytes)
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What replaying one segment found.
struct Replayed {
    /// Highest index the segment held.
    last_index: u64,
    /// Where its valid records end, and the last record's checksum.
    end: u64,
    crc: u32,
    /// Its records end in a torn write rather than in unwritten space.
    torn: bool,
}

/// Reads one segment's records into `entries` (whether they follow on
/// without a gap is for the caller to check against its snapshot).
fn replay(path: &Path, entries: &mut Vec<Entry>) -> io::Result<Replayed> {
    let bytes = std::fs::read(path)?;
    let mut offset = 0usize;
    let mut last_index = 0;
    let mut previous_crc = 0;
    let mut torn = false;
    while let Some(header) = bytes.get(offset..offset + HEADER) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len == 0 {
            break; // preallocated, never written
        }
        let payload = bytes.get(offset + HEADER..offset + HEADER + len);
        let Some(payload) = payload.filter(|p| chained_crc(previous_crc, p) == crc) else {
            torn = true; // cut short, or a torn write
            break;
        };
        let entry = Entry::parse_from_bytes(payload).map_err(|e| invalid(path, e))?;
        while entries.last().is_some_and(|e| e.index >= entry.index) {
            entries.pop();
        }
        last_index = last_index.max(entry.index);
        entries.push(entry);
        offset += HEADER + len;
        previous_crc = crc;
    }
    Ok(Replayed {
        last_index,
        end: offset as u64,
        crc: previous_crc,
        torn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("e{index}t{term}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn indexes(entries: &[Entry]) -> Vec<(u64, u64)> {
        entries.iter().map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn entries_survive_reopening_and_a_conflicting_tail_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, entries) = Wal::open(dir.path()).unwrap();
            assert!(entries.is_empty());
            wal.append(&[entry(1, 1), entry(2, 1), entry(3, 1)])
                .unwrap();
            wal.append(&[entry(2, 2)]).unwrap();
        }
        let (_, entries) = Wal::open(dir.path()).unwrap();
        assert_eq!(indexes(&entries), [(1, 1), (2, 2)]);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_written_over() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, _) = Wal::open(dir.path()).unwrap();
            wal.append(&[entry(1, 1), entry(2, 1)]).unwrap();
        }
        // Corrupt the second record's payload, as a crash mid-write would.
        let path = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        let first_len = entry(1, 1).write_to_bytes().unwrap().len() as u64;
        file.write_all_at(b"garbage", HEADER as u64 * 2 + first_len)
            .unwrap();
        {
            let (mut wal, entries) = Wal::open(dir.path()).unwrap();
            assert_eq!(indexes(&entries), [(1, 1)]);
            wal.append(&[entry(2, 3)]).unwrap();
        }
        let (_, entries) = Wal::open(dir.path()).unwrap();
        assert_eq!(indexes(&entries), [(1, 1), (2, 3)]);
    }

    fn only_segment(dir: &Path) -> PathBuf {
        std::fs::read_dir(dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
    }

    fn tear_second_record(path: &Path) {
        let file = OpenOptions::new().write(true).open(path).unwrap();
        let first_len = entry(1, 1).write_to_bytes().unwrap().len() as u64;
        file.write_all_at(b"garbage", HEADER as u64 * 2 + first_len)
            .unwrap();
    }

    #[test]
    fn a_torn_tail_followed_by_a_rotation_does_not_break_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, _) = Wal::open_sized(dir.path(), 4096).unwrap();
            wal.append(&[entry(1, 1), entry(2, 1)]).unwrap();
        }
        tear_second_record(&only_segment(dir.path()));
        {
            let (mut wal, entries) = Wal::open_sized(dir.path(), 4096).unwrap();
            assert_eq!(indexes(&entries), [(1, 1)]);
            // The segment is "full" just past its last good record, so the
            // next append rotates, leaving the torn bytes behind.
            wal.segment_bytes = wal.offset + 1;
            wal.append(&[entry(2, 3), entry(3, 3)]).unwrap();
            assert_eq!(wal.segments.len(), 2, "the append rotated");
        }
        let (_, entries) = Wal::open_sized(dir.path(), 4096).unwrap();
        assert_eq!(indexes(&entries), [(1, 1), (2, 3), (3, 3)]);
    }

    #[test]
    fn a_torn_tail_an_older_version_left_before_a_rotation_ends_that_segment() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let (mut wal, _) = Wal::open_sized(dir.path(), 4096).unwrap();
            wal.append(&[entry(1, 1), entry(2, 1)]).unwrap();
            let first = wal.segments[0].path.clone();
            wal.rotate().unwrap();
            wal.append(&[entry(2, 3)]).unwrap();
            first
        };
        // As the old code left it: garbage after the first segment's last
        // good record, and the log carried on in the next segment.
        tear_second_record(&first);
        let (_, entries) = Wal::open_sized(dir.path(), 4096).unwrap();
        assert_eq!(indexes(&entries), [(1, 1), (2, 3)]);
    }

    #[test]
    fn segments_are_private_to_the_agent() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let _ = Wal::open(dir.path()).unwrap();
        let mode = std::fs::metadata(only_segment(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn reset_and_compact_delete_whole_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        wal.append(&[entry(1, 1)]).unwrap();
        wal.rotate().unwrap();
        wal.append(&[entry(2, 1)]).unwrap();
        wal.compact(1).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(wal);
        let (mut wal, entries) = Wal::open(dir.path()).unwrap();
        assert_eq!(indexes(&entries), [(2, 1)]);
        wal.reset().unwrap();
        drop(wal);
        let (_, entries) = Wal::open(dir.path()).unwrap();
        assert!(entries.is_empty());
    }

    #[test]
    fn a_leftover_record_of_an_older_write_is_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, _) = Wal::open(dir.path()).unwrap();
            wal.append(&[entry(1, 1), entry(2, 1)]).unwrap();
        }
        // The first record is torn; the second survived on disk.
        let path = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"\xff\xff", HEADER as u64).unwrap();
        {
            let (mut wal, entries) = Wal::open(dir.path()).unwrap();
            assert!(entries.is_empty());
            // A new record of exactly the old first one's size lands before
            // the leftover second record.
            wal.append(&[entry(1, 2)]).unwrap();
        }
        let (_, entries) = Wal::open(dir.path()).unwrap();
        assert_eq!(indexes(&entries), [(1, 2)]);
    }
}
