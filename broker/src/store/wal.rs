//! The store's write-ahead log: a batch is durable once its writes are in this log and
//! the log is synced; the engine (fjall) is given them afterwards, on a thread of its own.
//!
//! Why: fjall holds a tree's version lock across fsyncs at the end of a compaction
//! (docs/BENCHMARKS.md), and every write to that tree waits for it. With the engine
//! written on the commit's path, an answer waited for those fsyncs (retention's longest
//! waits, the tail of a burst of ticks). Appending to a file of our own takes no lock
//! anyone else holds, and the segments are allocated ahead, so a sync writes only data.
//!
//! Layout: `<dir>/<ordinal>.wal`, segments numbered from 1, each allocated at its full
//! size before it is used (the unwritten rest reads as zeros). A record:
//!
//! ```text
//! length   u32 LE   bytes of the body
//! crc      u32 LE   CRC-32 (IEEE) of the body
//! body     number u64 LE, count u32 LE, then `count` writes:
//!          tree u8, key length u32 LE, key, present u8 (0: removed, 1: set),
//!          [value length u32 LE, value]
//! ```
//!
//! Records are numbered without gaps. The engine records the number of the last record it
//! was given (`log_applied`, in the same engine batch), so a start replays exactly the
//! records above it. A segment is removed once the engine has synced every record in it.
//!
//! Reading stops at the first header of zeros (the allocated rest) or the first record
//! that does not check: a crash can tear only the last records written. A record that
//! does not check but is followed by one that does, numbered after it, is damage, not a
//! torn tail: the start refuses rather than drop acknowledged writes.

use super::engine::Write;
use super::{io_error, StoreError, StoreResult};
use std::fs::File;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const HEADER: usize = 8;
/// No record the broker writes comes near this; a header that claims more is not one.
const MAX_BODY: u32 = 1 << 30;

fn segment_path(dir: &Path, ordinal: u64) -> PathBuf {
    dir.join(format!("{ordinal:020}.wal"))
}

/// The segments in `dir`, by ordinal, oldest first.
fn segments(dir: &Path) -> StoreResult<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("read the log directory", dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("read the log directory", dir, e))?;
        let name = entry.file_name();
        let Some(ordinal) = name
            .to_str()
            .and_then(|name| name.strip_suffix(".wal"))
            .and_then(|stem| stem.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((ordinal, entry.path()));
    }
    found.sort();
    Ok(found)
}

fn sync_dir(dir: &Path) -> StoreResult<()> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| io_error("sync the log directory", dir, e))
}

/// Appends the record of `writes`, numbered `number`, to `out`.
pub fn encode_record(number: u64, writes: &[Write], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.extend_from_slice(&number.to_le_bytes());
    out.extend_from_slice(&(writes.len() as u32).to_le_bytes());
    for write in writes {
        out.push(write.tree as u8);
        out.extend_from_slice(&(write.key.len() as u32).to_le_bytes());
        out.extend_from_slice(&write.key);
        match &write.value {
            Some(value) => {
                out.push(1);
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
            None => out.push(0),
        }
    }
    let body = &out[start + HEADER..];
    let (length, crc) = (body.len() as u32, crc32fast::hash(body));
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// What is at one offset of a segment.
enum Found {
    /// A record that checks: its number and writes, and the offset after it.
    Record(u64, Vec<Write>, usize),
    /// Zeros: nothing was written here.
    End,
    /// Bytes that are not a whole record that checks.
    Bad,
}

fn read_at(bytes: &[u8], at: usize) -> Found {
    let Some(header) = bytes.get(at..at + HEADER) else {
        return match bytes
            .get(at..)
            .is_none_or(|rest| rest.iter().all(|b| *b == 0))
        {
            true => Found::End,
            false => Found::Bad,
        };
    };
    if header.iter().all(|b| *b == 0) {
        return Found::End;
    }
    let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if length > MAX_BODY {
        return Found::Bad;
    }
    let length = length as usize;
    let Some(body) = bytes.get(at + HEADER..at + HEADER + length) else {
        return Found::Bad;
    };
    if crc32fast::hash(body) != crc {
        return Found::Bad;
    }
    match decode_body(body) {
        Some((number, writes)) => Found::Record(number, writes, at + HEADER + length),
        None => Found::Bad,
    }
}

/// The number and writes of a record's body; `None` if it does not parse.
fn decode_body(body: &[u8]) -> Option<(u64, Vec<Write>)> {
    let mut rest = body;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (taken, left) = (rest.get(..n)?, rest.get(n..)?);
        rest = left;
        Some(taken)
    };
    let number = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?);
    let mut writes = Vec::with_capacity((count as usize).min(body.len() / 6));
    for _ in 0..count {
        let tree = usize::from(take(1)?[0]);
        let key_length = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let key = take(key_length)?.to_vec();
        let value = match take(1)?[0] {
            0 => None,
            1 => {
                let length = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
                Some(take(length)?.to_vec())
            }
            _ => return None,
        };
        writes.push(Write { tree, key, value });
    }
    take(1).is_none().then_some((number, writes))
}

/// What a replay found.
#[derive(Debug, Default, PartialEq)]
pub struct Replayed {
    /// The highest record number in the log (or the engine's `applied`, if higher).
    pub last: u64,
    /// Records given to `apply`.
    pub applied: u64,
    /// Damage found and passed over (`repair` only): what and where.
    pub damage: Option<String>,
}

/// Reads the log in `dir` and gives `apply` every record numbered above `applied`, in
/// order. Damage (see the module's doc) is an error, unless `repair`: then the replay
/// stops before it and says so.
pub fn replay(
    dir: &Path,
    applied: u64,
    repair: bool,
    mut apply: impl FnMut(u64, Vec<Write>) -> StoreResult<()>,
) -> StoreResult<Replayed> {
    let mut replayed = Replayed {
        last: applied,
        ..Default::default()
    };
    let found = segments(dir)?;
    let mut expected: Option<u64> = None;
    for (index, (_, path)) in found.iter().enumerate() {
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut file| file.read_to_end(&mut bytes))
            .map_err(|e| io_error("read the log segment", path, e))?;
        let mut at = 0;
        loop {
            match read_at(&bytes, at) {
                Found::Record(number, writes, next) => {
                    if let Some(expected) = expected.filter(|expected| *expected != number) {
                        let damage = format!(
                            "the log {} holds record {number} where record {expected} belongs (offset {at})",
                            path.display()
                        );
                        return damage_found(damage, repair, replayed);
                    }
                    if number > applied {
                        if replayed.applied == 0 && number != applied + 1 {
                            let damage = format!(
                                "the log {} starts again at record {number}, but the store holds only up to record {applied}: records in between are missing",
                                path.display()
                            );
                            return damage_found(damage, repair, replayed);
                        }
                        apply(number, writes)?;
                        replayed.applied += 1;
                    }
                    replayed.last = replayed.last.max(number);
                    expected = Some(number + 1);
                    at = next;
                }
                Found::End => break,
                Found::Bad => {
                    // Slid over byte by byte, not followed by lengths: the damage may be
                    // in a length.
                    let lowest = expected.unwrap_or(1);
                    let after_it = record_after(&bytes, at + 1, lowest)
                        .or_else(|| first_number_in_later_segments(&found[index + 1..], lowest));
                    match after_it {
                        Some(number) if number > applied => {
                            let damage = format!(
                                "the log {} has a damaged record at offset {at}, followed by record {number}: acknowledged writes would be lost",
                                path.display()
                            );
                            return damage_found(damage, repair, replayed);
                        }
                        Some(_) => {
                            tracing::warn!(segment = %path.display(), offset = at, "a damaged record in the log, among records the store already holds");
                        }
                        None => {}
                    }
                    // A torn tail: the last records written before a crash.
                    return Ok(replayed);
                }
            }
        }
    }
    Ok(replayed)
}

fn damage_found(damage: String, repair: bool, mut replayed: Replayed) -> StoreResult<Replayed> {
    if repair {
        replayed.damage = Some(damage);
        return Ok(replayed);
    }
    Err(StoreError::Damaged(damage))
}

/// The number of the first record that checks in the first of `later` segments that has
/// one, numbered at least `lowest`.
fn first_number_in_later_segments(later: &[(u64, PathBuf)], lowest: u64) -> Option<u64> {
    later.iter().find_map(|(_, path)| {
        let bytes = std::fs::read(path).ok()?;
        record_after(&bytes, 0, lowest)
    })
}

/// The number of the first record that checks anywhere in `bytes` from `from` on,
/// numbered from `lowest` to 2^32 above it (found by sliding over the bytes: cheap tests of
/// the header and the number first, the CRC only where they pass).
fn record_after(bytes: &[u8], from: usize, lowest: u64) -> Option<u64> {
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    };
    (from..bytes.len()).find_map(|at| {
        let length = word(at)? as u32 as usize;
        if length < 12 || at + HEADER + length > bytes.len() {
            return None;
        }
        let number = word(at + HEADER)?;
        if number < lowest || number - lowest > 1 << 32 {
            return None;
        }
        match read_at(bytes, at) {
            Found::Record(number, ..) => Some(number),
            _ => None,
        }
    })
}

/// Removes every segment in `dir` (their records are all in the engine, synced).
pub fn remove_all(dir: &Path) -> StoreResult<()> {
    remove_through(dir, u64::MAX)
}

/// Removes the segments numbered up to `ordinal`.
pub fn remove_through(dir: &Path, ordinal: u64) -> StoreResult<()> {
    for (found, path) in segments(dir)? {
        if found <= ordinal {
            std::fs::remove_file(&path)
                .map_err(|e| io_error("remove the log segment", &path, e))?;
        }
    }
    Ok(())
}

/// A segment allocated at its full size, ready to be written from its start.
pub struct Segment {
    file: File,
    ordinal: u64,
    path: PathBuf,
}

/// Creates segment `ordinal` in `dir`, allocated to `bytes` (so that writing into it
/// changes no size), durable with its name.
pub fn allocate(dir: &Path, ordinal: u64, bytes: u64) -> StoreResult<Segment> {
    let path = segment_path(dir, ordinal);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io_error("create the log segment", &path, e))?;
    let allocated = rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, bytes)
        .map_err(std::io::Error::from);
    match allocated {
        Ok(()) => {}
        // Not every file system allocates ahead; a size that grows as it is written is
        // only slower to sync. On a full disk the segment starts empty all the same: the
        // store opens, and a write fails only if the space is still short then.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::Unsupported | std::io::ErrorKind::StorageFull
            ) =>
        {
            tracing::debug!(segment = %path.display(), error = %e, "log segment not allocated ahead");
        }
        Err(e) => return Err(io_error("allocate the log segment", &path, e)),
    }
    file.sync_all()
        .map_err(|e| io_error("sync the log segment", &path, e))?;
    sync_dir(dir)?;
    Ok(Segment {
        file,
        ordinal,
        path,
    })
}

/// The next segment, allocated ahead by whoever has time (the applier's thread), taken by
/// the writer when its segment is full.
pub type Spare = Arc<Mutex<Option<Segment>>>;

/// Appends records and syncs them; one per store, used by the committer's thread.
pub struct LogWriter {
    dir: PathBuf,
    segment_bytes: u64,
    current: Segment,
    written: u64,
    /// A segment closed since the last sync: synced with the next.
    closed: Option<Segment>,
    spare: Spare,
    buffer: Vec<u8>,
}

impl LogWriter {
    /// A log in `dir` (created if missing) whose records so far are all in the engine,
    /// synced: they are removed, and writing starts in a new segment.
    pub fn start(dir: &Path, segment_bytes: u64) -> StoreResult<LogWriter> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("create the log directory", dir, e))?;
        let next = segments(dir)?.last().map_or(1, |(ordinal, _)| ordinal + 1);
        remove_all(dir)?;
        let current = allocate(dir, next, segment_bytes)?;
        let spare = allocate(dir, next + 1, segment_bytes)?;
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            segment_bytes,
            current,
            written: 0,
            closed: None,
            spare: Arc::new(Mutex::new(Some(spare))),
            buffer: Vec::new(),
        })
    }

    /// Where the applier's thread puts the segment after the next.
    pub fn spare(&self) -> Spare {
        self.spare.clone()
    }

    /// Appends record `number` (not yet durable: see [`LogWriter::sync`]). Returns the
    /// ordinal of the segment this closed, if it did: once the engine has synced, that
    /// segment and those before it may go.
    pub fn append(&mut self, number: u64, writes: &[Write]) -> StoreResult<Option<u64>> {
        self.buffer.clear();
        encode_record(number, writes, &mut self.buffer);
        let length = self.buffer.len() as u64;
        let mut closed_now = None;
        if self.written > 0 && self.written + length > self.segment_bytes {
            closed_now = Some(self.next_segment()?);
        }
        let path = &self.current.path;
        self.current
            .file
            .write_all(&self.buffer)
            .map_err(|e| io_error("append to the log segment", path, e))?;
        self.written += length;
        Ok(closed_now)
    }

    /// Moves to the spare segment (allocating one here if none is ready).
    fn next_segment(&mut self) -> StoreResult<u64> {
        let ordinal = self.current.ordinal + 1;
        // Under the spare's lock, so that the applier cannot be allocating the same one.
        let mut slot = self
            .spare
            .lock()
            .map_err(|_| StoreError::Engine("the log's spare segment lock is poisoned".into()))?;
        let next = match slot.take() {
            Some(spare) if spare.ordinal == ordinal => spare,
            // One allocated further ahead stays for when its turn comes.
            other => {
                *slot = other.filter(|spare| spare.ordinal > ordinal);
                allocate(&self.dir, ordinal, self.segment_bytes)?
            }
        };
        drop(slot);
        let closed = std::mem::replace(&mut self.current, next);
        // Synced before the next sync is done, which covers records in either.
        if let Some(older) = self.closed.replace(closed) {
            sync_data(&older)?;
        }
        self.written = 0;
        Ok(ordinal - 1)
    }

    /// Makes every record appended so far durable.
    pub fn sync(&mut self) -> StoreResult<()> {
        if let Some(closed) = self.closed.take() {
            sync_data(&closed)?;
        }
        sync_data(&self.current)
    }
}

fn sync_data(segment: &Segment) -> StoreResult<()> {
    segment
        .file
        .sync_data()
        .map_err(|e| io_error("sync the log segment", &segment.path, e))
}

/// Allocates the segment after `closed + 1` into `spare` (the applier's thread does this
/// once the writer has taken the one before).
pub fn prepare_spare(
    dir: &Path,
    closed: u64,
    segment_bytes: u64,
    spare: &Spare,
) -> StoreResult<()> {
    let ordinal = closed + 2;
    // Under the lock the writer takes it with: the writer, short of a spare, allocates
    // one itself, and both must not create the same file.
    let mut slot = spare
        .lock()
        .map_err(|_| StoreError::Engine("the log's spare segment lock is poisoned".into()))?;
    if slot.is_some() || segment_path(dir, ordinal).exists() {
        return Ok(());
    }
    *slot = Some(allocate(dir, ordinal, segment_bytes)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(tree: usize, key: &str, value: Option<&str>) -> Write {
        Write {
            tree,
            key: key.as_bytes().to_vec(),
            value: value.map(|value| value.as_bytes().to_vec()),
        }
    }

    fn batch(number: u64) -> Vec<Write> {
        // Ends in a byte that is not zero: a record cut short of its last byte must not
        // read whole from the zeros after it.
        vec![
            write(5, &format!("old-{number}"), None),
            write(
                1,
                &format!("run-{number}"),
                Some(&"x".repeat(number as usize % 40)),
            ),
            write(8, "commit", Some(&number.to_string())),
        ]
    }

    /// A record as the replay gives it.
    type Record = (u64, Vec<Write>);

    /// Every record the replay gives.
    fn replayed(dir: &Path, applied: u64) -> StoreResult<(Replayed, Vec<Record>)> {
        let mut got = Vec::new();
        let outcome = replay(dir, applied, false, |number, writes| {
            got.push((number, writes));
            Ok(())
        })?;
        Ok((outcome, got))
    }

    fn same(a: &[Write], b: &[Write]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(a, b)| a.tree == b.tree && a.key == b.key && a.value == b.value)
    }

    #[test]
    fn records_come_back_in_order_across_segments_above_what_the_engine_holds() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogWriter::start(dir.path(), 512).unwrap();
        let mut closed = Vec::new();
        for number in 1..=40 {
            closed.extend(log.append(number, &batch(number)).unwrap());
            log.sync().unwrap();
        }
        assert!(closed.len() >= 3, "small segments fill: {closed:?}");
        let (outcome, got) = replayed(dir.path(), 0).unwrap();
        assert_eq!((outcome.last, outcome.applied), (40, 40));
        for (number, writes) in &got {
            assert!(same(writes, &batch(*number)), "record {number}");
        }
        assert_eq!(
            got.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            (1..=40).collect::<Vec<_>>()
        );
        let (outcome, got) = replayed(dir.path(), 25).unwrap();
        assert_eq!((outcome.last, outcome.applied), (40, 15));
        assert_eq!(got.first().map(|(n, _)| *n), Some(26));
        // The engine ahead of the log (a crash between its apply and the log's sync).
        let (outcome, got) = replayed(dir.path(), 45).unwrap();
        assert_eq!((outcome.last, outcome.applied, got.len()), (45, 0, 0));
    }

    #[test]
    fn a_record_larger_than_a_segment_has_one_to_itself() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogWriter::start(dir.path(), 256).unwrap();
        let big = vec![write(1, "big", Some(&"y".repeat(2000)))];
        log.append(1, &batch(1)).unwrap();
        assert!(log.append(2, &big).unwrap().is_some());
        log.append(3, &batch(3)).unwrap();
        log.sync().unwrap();
        let (_, got) = replayed(dir.path(), 0).unwrap();
        assert_eq!(got.len(), 3);
        assert!(same(&got[1].1, &big));
    }

    #[test]
    fn a_torn_tail_ends_the_replay_at_the_last_whole_record_wherever_it_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = Vec::new();
        for number in 1..=3 {
            encode_record(number, &batch(number), &mut record);
        }
        let two = {
            let mut two = Vec::new();
            encode_record(1, &batch(1), &mut two);
            encode_record(2, &batch(2), &mut two);
            two.len()
        };
        let path = segment_path(dir.path(), 1);
        for cut in two..record.len() {
            // What a crash leaves: the last record's start, then the allocated zeros (or
            // whatever the disk had).
            let mut bytes = record[..cut].to_vec();
            bytes.resize(record.len() + 64, 0);
            std::fs::write(&path, &bytes).unwrap();
            let (outcome, got) = replayed(dir.path(), 0).unwrap();
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(outcome.last, 2);
        }
    }

    #[test]
    fn a_damaged_record_followed_by_a_good_one_is_refused_as_damage() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for number in 1..=3 {
            starts.push(bytes.len());
            encode_record(number, &batch(number), &mut bytes);
        }
        bytes.resize(bytes.len() + 64, 0);
        let path = segment_path(dir.path(), 1);
        // A byte of record 2's body flipped.
        let mut damaged = bytes.clone();
        damaged[starts[1] + HEADER + 3] ^= 0x40;
        std::fs::write(&path, &damaged).unwrap();
        let Err(StoreError::Damaged(why)) = replayed(dir.path(), 0) else {
            panic!("damage in the middle must be refused");
        };
        assert!(
            why.contains("followed by record 3") && why.contains(".wal"),
            "{why}"
        );
        // A length damaged: the records after it are found all the same.
        for byte in [0, 2, 3] {
            let mut damaged = bytes.clone();
            damaged[starts[1] + byte] ^= 0x5a;
            std::fs::write(&path, &damaged).unwrap();
            assert!(
                matches!(replayed(dir.path(), 0), Err(StoreError::Damaged(_))),
                "length byte {byte}"
            );
        }
        let mut damaged = bytes.clone();
        damaged[starts[1] + HEADER + 3] ^= 0x40;
        std::fs::write(&path, &damaged).unwrap();
        // The same, when the engine already holds every record: nothing is lost.
        let (outcome, got) = replayed(dir.path(), 3).unwrap();
        assert_eq!((outcome.last, got.len()), (3, 0));
        // `repair` keeps what comes before the damage and says where it stopped.
        let mut got = 0;
        let outcome = replay(dir.path(), 0, true, |_, _| {
            got += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(got, 1);
        assert!(outcome.damage.is_some_and(|why| why.contains("offset")));
        // Damage at the end of one segment with records in the next.
        std::fs::write(&path, &bytes[..starts[2] - 5]).unwrap();
        let mut next = Vec::new();
        encode_record(3, &batch(3), &mut next);
        std::fs::write(segment_path(dir.path(), 2), &next).unwrap();
        assert!(matches!(
            replayed(dir.path(), 0),
            Err(StoreError::Damaged(_))
        ));
    }

    #[test]
    fn missing_records_between_the_engine_and_the_log_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        for number in 7..=9 {
            encode_record(number, &batch(number), &mut bytes);
        }
        std::fs::write(segment_path(dir.path(), 4), &bytes).unwrap();
        assert!(replayed(dir.path(), 6).is_ok());
        let Err(StoreError::Damaged(why)) = replayed(dir.path(), 4) else {
            panic!("records 5 and 6 are in neither");
        };
        assert!(
            why.contains("record 7") && why.contains("up to record 4"),
            "{why}"
        );
        // A number out of its place.
        let mut bytes = Vec::new();
        for number in [1, 2, 4] {
            encode_record(number, &batch(number), &mut bytes);
        }
        std::fs::write(segment_path(dir.path(), 4), &bytes).unwrap();
        assert!(matches!(
            replayed(dir.path(), 0),
            Err(StoreError::Damaged(_))
        ));
    }

    /// The writer, short of a spare, allocates one itself while the applier prepares
    /// spares: neither may fail on a file the other made, and nothing is lost.
    #[test]
    fn spares_prepared_beside_a_writer_that_outruns_them_collide_with_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogWriter::start(dir.path(), 256).unwrap();
        let spare = log.spare();
        let path = dir.path().to_path_buf();
        let preparing = std::thread::spawn(move || {
            for closed in 1..150 {
                prepare_spare(&path, closed, 256, &spare).unwrap();
            }
        });
        for number in 1..=200 {
            log.append(number, &batch(number)).unwrap();
        }
        log.sync().unwrap();
        preparing.join().unwrap();
        let (outcome, got) = replayed(dir.path(), 0).unwrap();
        assert_eq!((outcome.last, got.len()), (200, 200));
    }

    #[test]
    fn starting_removes_what_the_engine_holds_and_allocates_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogWriter::start(dir.path(), 4096).unwrap();
        log.append(1, &batch(1)).unwrap();
        log.sync().unwrap();
        drop(log);
        let log = LogWriter::start(dir.path(), 4096).unwrap();
        let names: Vec<u64> = segments(dir.path())
            .unwrap()
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(
            names,
            vec![3, 4],
            "the old ones gone, a new one and its spare"
        );
        for (_, path) in segments(dir.path()).unwrap() {
            assert_eq!(std::fs::metadata(path).unwrap().len(), 4096);
        }
        assert_eq!(replayed(dir.path(), 0).unwrap().0.last, 0);
        drop(log);
    }

    #[test]
    fn hostile_bytes_in_a_segment_are_an_end_or_damage_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..300 {
            let mut bytes = Vec::new();
            encode_record(1, &batch(1), &mut bytes);
            for _ in 0..(round % 97) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(seed as u8);
            }
            if round % 3 == 0 {
                // A header that claims a plausible length over garbage.
                bytes.splice(0..0, [16u8, 0, 0, 0, 1, 2, 3, 4]);
            }
            std::fs::write(segment_path(dir.path(), 1), &bytes).unwrap();
            let _ = replayed(dir.path(), 0);
        }
    }
}
