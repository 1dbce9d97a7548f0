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
//!
//! The log is not held in memory: opening and appending return each entry's
//! [`Slot`] (its term and where its record lies), and [`Wal::read`] reads a
//! record back, checking its checksum again, when raft needs an entry that
//! is no longer cached.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::Entry;

/// Size a segment is preallocated to; a new one starts past it.
const SEGMENT_BYTES: u64 = 64 << 20;
/// Segments hold the raft log: only this agent's user may read them.
const SEGMENT_MODE: u32 = 0o600;
const HEADER: usize = 8;

struct Segment {
    /// Sequence number, from the file name.
    seq: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Highest index written to this segment (0: none).
    last_index: u64,
}

/// Where an entry's record lies, and what its checksum chains from: enough
/// to read it back and know it is the record that was written.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    pub index: u64,
    pub term: u64,
    segment: u64,
    /// Offset of the record's header in the segment.
    offset: u64,
    /// Length of its payload.
    len: u32,
    previous_crc: u32,
}

pub struct Wal {
    dir: PathBuf,
    /// In sequence order; the last is the one written to.
    segments: Vec<Segment>,
    /// Where the next record goes in the last segment.
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
    /// Opens the log in `dir` and returns the slots of the entries it holds,
    /// in order.
    pub fn open(dir: &Path) -> io::Result<(Wal, Vec<Slot>)> {
        Wal::open_sized(dir, SEGMENT_BYTES)
    }

    fn open_sized(dir: &Path, segment_bytes: u64) -> io::Result<(Wal, Vec<Slot>)> {
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
        let mut slots: Vec<Slot> = Vec::new();
        let mut segments = Vec::new();
        let mut end_of_last = (0, 0, false);
        for (seq, path) in &paths {
            let file = Arc::new(OpenOptions::new().read(true).write(true).open(path)?);
            let replayed = replay(path, &file, *seq, &mut slots)?;
            segments.push(Segment {
                seq: *seq,
                path: path.clone(),
                file,
                last_index: replayed.last_index,
            });
            end_of_last = (replayed.end, replayed.crc, replayed.torn);
        }
        let next_seq = paths.last().map_or(0, |(seq, _)| seq + 1);
        let mut wal = match segments.last() {
            Some(segment) => {
                let (end, crc, torn) = end_of_last;
                if torn {
                    // The write that never completed is cut off here, so
                    // whatever happens next (an append over it, or a
                    // rotation) no garbage stays after the last record.
                    tracing::warn!(segment = %segment.path.display(), offset = end, "the raft log ends in a torn write (a crash mid-append); it is cut off");
                    segment.file.write_all_at(&[0; HEADER], end)?;
                    segment.file.sync_data()?;
                }
                Wal {
                    dir: dir.to_path_buf(),
                    segments,
                    offset: end,
                    next_seq,
                    last_crc: crc,
                    segment_bytes,
                }
            }
            None => Wal {
                dir: dir.to_path_buf(),
                segments: vec![create_segment(dir, next_seq, segment_bytes)?],
                offset: 0,
                next_seq: next_seq + 1,
                last_crc: 0,
                segment_bytes,
            },
        };
        if wal.offset >= wal.segment_bytes {
            wal.rotate()?;
        }
        Ok((wal, slots))
    }

    /// Appends entries durably (one write, one `fdatasync`) and returns
    /// their slots.
    #[cfg(test)]
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<Vec<Slot>> {
        let (slots, unsynced) = self.write(entries)?;
        unsynced.sync()?;
        Ok(slots)
    }

    /// Writes entries and returns their slots, and the `fdatasync` still
    /// owed before they count as durable (it may run on another thread).
    /// Nothing may rely on them being on disk until it has returned; if it
    /// fails, the log is not to be used again (the raft loop stops).
    pub fn write(&mut self, entries: &[Entry]) -> io::Result<(Vec<Slot>, Unsynced)> {
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
        let segment = self.segments.last().expect("a segment is always open").seq;
        let mut buffer = Vec::with_capacity(size);
        let mut slots = Vec::with_capacity(entries.len());
        let mut crc = self.last_crc;
        for (entry, bytes) in entries.iter().zip(&records) {
            slots.push(Slot {
                index: entry.index,
                term: entry.term,
                segment,
                offset: self.offset + buffer.len() as u64,
                len: bytes.len() as u32,
                previous_crc: crc,
            });
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
        let current = self.segments.last_mut().expect("a segment is always open");
        current.file.write_all_at(&buffer, self.offset)?;
        let unsynced = Unsynced {
            file: current.file.clone(),
        };
        self.offset += buffer.len() as u64;
        self.last_crc = crc;
        if let Some(last) = entries.last() {
            // A conflicting tail may lower the highest live index: keep the
            // segment's bound as the highest ever written, which is safe.
            current.last_index = current.last_index.max(last.index);
        }
        Ok((slots, unsynced))
    }

    /// Reads back the entry at `slot`, checking that the record is the one
    /// written there (its checksum chain and its index).
    pub fn read(&self, slot: &Slot) -> io::Result<Entry> {
        let segment = self
            .segments
            .iter()
            .find(|segment| segment.seq == slot.segment)
            .ok_or_else(|| {
                invalid(
                    &self.dir,
                    format!(
                        "entry {} is in segment {}, which is gone",
                        slot.index, slot.segment
                    ),
                )
            })?;
        let mut record = vec![0; HEADER + slot.len as usize];
        segment.file.read_exact_at(&mut record, slot.offset)?;
        let (header, payload) = record.split_at(HEADER);
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len != slot.len || chained_crc(slot.previous_crc, payload) != crc {
            return Err(invalid(
                &segment.path,
                format!(
                    "the record of entry {} at offset {} changed on disk since it was written",
                    slot.index, slot.offset
                ),
            ));
        }
        let entry = Entry::parse_from_bytes(payload).map_err(|e| invalid(&segment.path, e))?;
        if entry.index != slot.index {
            return Err(invalid(
                &segment.path,
                format!(
                    "offset {} holds entry {}, not entry {}",
                    slot.offset, entry.index, slot.index
                ),
            ));
        }
        Ok(entry)
    }

    fn rotate(&mut self) -> io::Result<()> {
        let segment = create_segment(&self.dir, self.next_seq, self.segment_bytes)?;
        self.next_seq += 1;
        self.offset = 0;
        self.last_crc = 0;
        self.segments.push(segment);
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

fn create_segment(dir: &Path, seq: u64, bytes: u64) -> io::Result<Segment> {
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
    Ok(Segment {
        seq,
        path,
        file: Arc::new(file),
        last_index: 0,
    })
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

/// Entries written to a segment but not yet synced: see [`Wal::write`].
#[must_use = "the entries are not durable until synced"]
pub struct Unsynced {
    file: Arc<File>,
}

impl Unsynced {
    pub fn sync(self) -> io::Result<()> {
        use crate::fault::DiskFault;
        match crate::fault::disk() {
            DiskFault::FailingFsync => {
                return Err(io::Error::other("fdatasync failed (fault injection)"));
            }
            DiskFault::Slow => std::thread::sleep(crate::fault::SLOW_FSYNC),
            DiskFault::Healthy | DiskFault::Full => {}
        }
        crate::telemetry::WAL_FSYNC.time(|| self.file.sync_data())
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

/// Reads one segment's records into `slots` (whether they follow on
/// without a gap is for the caller to check against its snapshot).
fn replay(path: &Path, file: &File, seq: u64, slots: &mut Vec<Slot>) -> io::Result<Replayed> {
    let mut bytes = Vec::new();
    (&*file).read_to_end(&mut bytes)?;
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
        while slots.last().is_some_and(|s| s.index >= entry.index) {
            slots.pop();
        }
        last_index = last_index.max(entry.index);
        slots.push(Slot {
            index: entry.index,
            term: entry.term,
            segment: seq,
            offset: offset as u64,
            len: len as u32,
            previous_crc,
        });
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

    fn indexes(slots: &[Slot]) -> Vec<(u64, u64)> {
        slots.iter().map(|s| (s.index, s.term)).collect()
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

    #[test]
    fn entries_are_read_back_by_slot_after_appending_rotating_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let written = [entry(1, 1), entry(2, 1), entry(3, 2)];
        let slots = {
            let (mut wal, _) = Wal::open_sized(dir.path(), 4096).unwrap();
            let mut slots = wal.append(&written[..2]).unwrap();
            wal.rotate().unwrap();
            slots.extend(wal.append(&written[2..]).unwrap());
            for (slot, entry) in slots.iter().zip(&written) {
                assert_eq!(&wal.read(slot).unwrap(), entry);
            }
            slots
        };
        let (wal, replayed) = Wal::open_sized(dir.path(), 4096).unwrap();
        assert_eq!(indexes(&replayed), indexes(&slots));
        for (slot, entry) in replayed.iter().zip(&written) {
            assert_eq!(&wal.read(slot).unwrap(), entry);
        }
    }

    #[test]
    fn a_record_changed_on_disk_after_it_was_written_is_refused_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        let slots = wal.append(&[entry(1, 1), entry(2, 1)]).unwrap();
        tear_second_record(&only_segment(dir.path()));
        assert_eq!(wal.read(&slots[0]).unwrap(), entry(1, 1));
        let err = wal.read(&slots[1]).unwrap_err().to_string();
        assert!(
            err.contains("entry 2") && err.contains("changed on disk"),
            "{err}"
        );
    }
}
