//! The relay's own event log: append-only segment files on local disk.
//!
//! Each record is `len u32 | crc32 u32 | seq u64 | time_micros u64 | did_len u8 | did | frame`
//! (little endian), where `len` counts everything after the crc and the crc covers the same
//! bytes. A segment is named by the first seq it holds (`{seq:020}.seg`), so finding the
//! segment for a cursor is a binary search over file names, and garbage collection deletes
//! whole segments whose newest event is older than the replay window.
//!
//! Durability: `append_batch` writes a batch and then `fdatasync`s before returning, and the
//! sequencer only broadcasts a batch after that, so no event is ever sent that a crash could
//! lose, and seqs are never reused. A torn write at the tail (crash mid-batch) is detected by
//! length/crc on open and truncated away; those events were never broadcast.
//!
//! Seeking: each segment has a sparse in-memory index, one `(seq, offset)` pair per
//! `index_stride_bytes` of records, so reading after a cursor seeks close to it instead of
//! scanning the segment from its start (a consumer replaying a 256 MiB segment in 1 MiB
//! chunks would otherwise read the segment's first half again for every chunk). The writer
//! indexes what it writes; an older segment is indexed by one header-only pass the first time
//! it is read, so start-up never scans the log.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

const HEADER_BYTES: usize = 8; // len + crc
const FIXED_BODY_BYTES: usize = 8 + 8 + 1; // seq + time + did_len

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("event log I/O: {0}")]
    Io(#[from] io::Error),
    #[error("event log record at {path}:{offset} is corrupt: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: &'static str },
    #[error("seq {seq} is not above the log head {head}")]
    SeqNotIncreasing { seq: u64, head: u64 },
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub seq: u64,
    pub time_micros: u64,
    pub did: String,
    pub frame: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    index: Arc<RwLock<SeekIndex>>,
}

impl Segment {
    fn new(first_seq: u64, path: PathBuf, complete: bool) -> Segment {
        let index = SeekIndex { entries: Vec::new(), complete, next_offset: 0 };
        Segment { first_seq, path, index: Arc::new(RwLock::new(index)) }
    }
}

/// Sparse `(seq, offset)` pairs of one segment, in order.
#[derive(Debug, Default)]
struct SeekIndex {
    entries: Vec<(u64, u64)>,
    /// Whether the entries cover the whole segment (false: not indexed since start-up).
    complete: bool,
    /// The offset at which the next entry is due.
    next_offset: u64,
}

impl SeekIndex {
    fn note(&mut self, seq: u64, offset: u64, stride: u64) {
        if offset >= self.next_offset {
            self.entries.push((seq, offset));
            self.next_offset = offset + stride.max(1);
        }
    }

    /// The offset of the last indexed record with seq at or below `seq` (0 = segment start).
    fn offset_for(&self, seq: u64) -> u64 {
        let at = self.entries.partition_point(|(s, _)| *s <= seq);
        at.checked_sub(1).map_or(0, |i| self.entries[i].1)
    }
}

/// Settings for the log; each has a default used by `relay serve`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    /// Start a new segment after this many bytes.
    pub segment_bytes: u64,
    /// `fdatasync` after every batch (turning this off trades crash safety for speed; tests only).
    pub sync: bool,
    /// Bytes of records between two entries of a segment's seek index: a read after a cursor
    /// scans at most this much before its first record, and the index costs 16 bytes per
    /// stride in memory (32 KiB per 256 MiB segment at the default).
    pub index_stride_bytes: u64,
}

/// Default of [`LogConfig::index_stride_bytes`].
pub const DEFAULT_INDEX_STRIDE_BYTES: u64 = 128 * 1024;

pub struct EventLog {
    config: LogConfig,
    segments: Vec<Segment>,
    active: Option<File>,
    active_len: u64,
    head: u64,
    /// The bytes of the batch being written, kept between batches: a fresh multi-megabyte
    /// buffer per batch came from new pages each time (the allocator returns freed pages
    /// to the kernel), and faulting them in was ~5 % of the relay's CPU at saturation.
    write_buffer: Vec<u8>,
}

/// A batch buffer larger than this is not kept for the next batch (a rare huge batch should
/// not pin its memory).
const KEPT_WRITE_BUFFER_BYTES: usize = 16 << 20;

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

fn parse_segment_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".seg")?.parse().ok()
}

fn encode_record(seq: u64, time_micros: u64, did: &str, frame: &[u8], out: &mut Vec<u8>) {
    let did = &did.as_bytes()[..did.len().min(255)];
    let body_len = FIXED_BODY_BYTES + did.len() + frame.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // crc, filled below
    let body_start = out.len();
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&time_micros.to_le_bytes());
    out.push(did.len() as u8);
    out.extend_from_slice(did);
    out.extend_from_slice(frame);
    let crc = crc32fast::hash(&out[body_start..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Reads one record; `Ok(None)` at a clean end, `Err` on a torn or corrupt record.
fn read_record(reader: &mut impl Read, max_body: usize) -> Result<Option<(LogRecord, u64)>, &'static str> {
    let mut header = [0u8; HEADER_BYTES];
    match read_full(reader, &mut header) {
        Ok(0) => return Ok(None),
        Ok(HEADER_BYTES) => {}
        Ok(_) => return Err("truncated header"),
        Err(_) => return Err("read error"),
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if !(FIXED_BODY_BYTES..=max_body).contains(&len) {
        return Err("bad record length");
    }
    let mut body = vec![0u8; len];
    if read_full(reader, &mut body) != Ok(len) {
        return Err("truncated body");
    }
    if crc32fast::hash(&body) != crc {
        return Err("checksum mismatch");
    }
    let seq = u64::from_le_bytes(body[0..8].try_into().map_err(|_| "short")?);
    let time_micros = u64::from_le_bytes(body[8..16].try_into().map_err(|_| "short")?);
    let did_len = body[16] as usize;
    if FIXED_BODY_BYTES + did_len > len {
        return Err("bad did length");
    }
    let did = String::from_utf8(body[17..17 + did_len].to_vec()).map_err(|_| "did not utf-8")?;
    let frame = body[17 + did_len..].to_vec();
    Ok(Some((LogRecord { seq, time_micros, did, frame }, (HEADER_BYTES + len) as u64)))
}

/// Reads one record's length, seq and time and skips its body (building a seek index needs
/// no frames or checksums: records are checked when they are read for real).
fn skip_record(reader: &mut BufReader<File>) -> Result<Option<(u64, u64, u64)>, &'static str> {
    let mut head = [0u8; HEADER_BYTES + 16];
    match read_full(reader, &mut head) {
        Ok(0) => return Ok(None),
        Ok(n) if n == head.len() => {}
        Ok(_) => return Err("truncated header"),
        Err(_) => return Err("read error"),
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if !(FIXED_BODY_BYTES..=MAX_RECORD_BODY).contains(&len) {
        return Err("bad record length");
    }
    let seq = u64::from_le_bytes(head[8..16].try_into().map_err(|_| "short")?);
    let time = u64::from_le_bytes(head[16..24].try_into().map_err(|_| "short")?);
    reader.seek_relative((len - 16) as i64).map_err(|_| "seek error")?;
    Ok(Some((seq, time, (HEADER_BYTES + len) as u64)))
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> Result<usize, ()> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(()),
        }
    }
    Ok(filled)
}

/// Largest record body accepted when reading (a 5 MB frame plus headers).
const MAX_RECORD_BODY: usize = 5_000_000 + FIXED_BODY_BYTES + 255;

impl EventLog {
    /// Opens (or creates) the log, truncating a torn tail.
    pub fn open(config: LogConfig) -> Result<EventLog, LogError> {
        fs::create_dir_all(&config.dir)?;
        let mut segments: Vec<Segment> = fs::read_dir(&config.dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter_map(|path| {
                parse_segment_name(&path).map(|first_seq| Segment::new(first_seq, path, false))
            })
            .collect();
        segments.sort_by_key(|s| s.first_seq);
        let mut log =
            EventLog { config, segments, active: None, active_len: 0, head: 0, write_buffer: Vec::new() };
        log.recover_tail()?;
        Ok(log)
    }

    /// Scans the newest segment: finds the head seq and cuts off any torn record.
    fn recover_tail(&mut self) -> Result<(), LogError> {
        while let Some(last) = self.segments.last().cloned() {
            let file = OpenOptions::new().read(true).write(true).open(&last.path)?;
            let mut reader = BufReader::new(&file);
            let mut valid_len = 0u64;
            let mut head = None;
            let mut index = SeekIndex { complete: true, ..SeekIndex::default() };
            while let Ok(Some((record, size))) = read_record(&mut reader, MAX_RECORD_BODY) {
                index.note(record.seq, valid_len, self.config.index_stride_bytes);
                valid_len += size;
                head = Some(record.seq);
            }
            drop(reader);
            *last.index.write().unwrap_or_else(|p| p.into_inner()) = index;
            if file.metadata()?.len() != valid_len {
                tracing::warn!(segment = %last.path.display(), valid_len, "truncating torn tail of the event log");
                file.set_len(valid_len)?;
                file.sync_data()?;
            }
            match head {
                Some(seq) => {
                    self.head = seq;
                    self.active_len = valid_len;
                    let mut file = file;
                    file.seek(SeekFrom::End(0))?;
                    self.active = Some(file);
                    return Ok(());
                }
                None => {
                    // An empty newest segment: drop it and look at the previous one.
                    fs::remove_file(&last.path)?;
                    self.segments.pop();
                }
            }
        }
        Ok(())
    }

    /// The highest seq written (0 when empty).
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The lowest seq still stored, if any.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.segments.first().map(|s| s.first_seq)
    }

    /// Appends events (seq strictly increasing) and makes them durable before returning.
    /// All or nothing: when a write fails (a full disk, an I/O error), whatever part of the
    /// batch reached the files is cut off again, so the same batch can be retried later and
    /// the log never holds a torn record or a seq gap.
    pub fn append_batch(&mut self, records: &[(u64, u64, &str, &[u8])]) -> Result<(), LogError> {
        let mark = (self.segments.len(), self.active_len);
        let result = self.append_batch_unguarded(records);
        if result.is_err() {
            if let Err(error) = self.roll_back(mark) {
                tracing::error!(%error, "could not cut a failed batch off the event log; it is cut on the next start");
            }
        }
        result
    }

    /// Returns the files to the state before a failed append: segments started by it are
    /// removed, and the segment that was active is truncated to its old length.
    fn roll_back(&mut self, (segments, active_len): (usize, u64)) -> Result<(), LogError> {
        let mut reopened = false;
        while self.segments.len() > segments {
            if let Some(segment) = self.segments.pop() {
                self.active = None;
                reopened = true;
                if let Err(error) = fs::remove_file(&segment.path) {
                    if error.kind() != io::ErrorKind::NotFound {
                        return Err(error.into());
                    }
                }
            }
        }
        let Some(last) = self.segments.last() else {
            self.active = None;
            self.active_len = 0;
            return Ok(());
        };
        if reopened {
            self.active = Some(OpenOptions::new().append(true).open(&last.path)?);
        }
        if let Some(file) = &self.active {
            file.set_len(active_len)?;
        }
        self.active_len = active_len;
        Ok(())
    }

    fn append_batch_unguarded(&mut self, records: &[(u64, u64, &str, &[u8])]) -> Result<(), LogError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buffer = std::mem::take(&mut self.write_buffer);
        buffer.clear();
        buffer.reserve(records.iter().map(|r| r.3.len() + 64).sum());
        let result = self.encode_and_write(records, &mut buffer);
        if buffer.capacity() <= KEPT_WRITE_BUFFER_BYTES {
            self.write_buffer = buffer;
        }
        result
    }

    fn encode_and_write(
        &mut self,
        records: &[(u64, u64, &str, &[u8])],
        buffer: &mut Vec<u8>,
    ) -> Result<(), LogError> {
        let mut head = self.head;
        // Index entries are published after the write, so a reader never seeks past the data.
        let mut entries: Vec<(Arc<RwLock<SeekIndex>>, u64, u64)> = Vec::with_capacity(records.len());
        for (seq, time, did, frame) in records {
            if *seq <= head {
                return Err(LogError::SeqNotIncreasing { seq: *seq, head });
            }
            head = *seq;
            if self.active.is_none() || self.active_len >= self.config.segment_bytes {
                self.write_out(buffer)?;
                buffer.clear();
                self.start_segment(*seq)?;
            }
            if let Some(segment) = self.segments.last() {
                entries.push((segment.index.clone(), *seq, self.active_len));
            }
            let before = buffer.len();
            encode_record(*seq, *time, did, frame, buffer);
            self.active_len += (buffer.len() - before) as u64;
        }
        self.write_out(buffer)?;
        if self.config.sync {
            if let Some(file) = &self.active {
                file.sync_data()?;
            }
        }
        self.head = head;
        for (index, seq, offset) in entries {
            index.write().unwrap_or_else(|p| p.into_inner()).note(
                seq,
                offset,
                self.config.index_stride_bytes,
            );
        }
        Ok(())
    }

    fn write_out(&mut self, bytes: &[u8]) -> Result<(), LogError> {
        if let (Some(file), false) = (self.active.as_mut(), bytes.is_empty()) {
            file.write_all(bytes)?;
        }
        Ok(())
    }

    fn start_segment(&mut self, first_seq: u64) -> Result<(), LogError> {
        if let (Some(file), true) = (&self.active, self.config.sync) {
            file.sync_data()?;
        }
        let path = self.config.dir.join(segment_name(first_seq));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if self.config.sync {
            // Make the new file's directory entry durable too.
            File::open(&self.config.dir)?.sync_all()?;
        }
        self.segments.push(Segment::new(first_seq, path, true));
        self.active = Some(file);
        self.active_len = 0;
        Ok(())
    }

    /// A cheap snapshot that readers use without holding the writer's lock during I/O.
    pub fn view(&self) -> LogView {
        LogView {
            segments: self.segments.clone(),
            head: self.head,
            active_len: self.active_len,
            stride: self.config.index_stride_bytes,
        }
    }

    /// Reads up to `max_events` records with seq > `after` (see [`LogView::read_after`]).
    pub fn read_after(
        &self,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        self.view().read_after(after, max_events, max_bytes)
    }

    /// Deletes whole segments whose events are all older than `cutoff_micros`; never the active one.
    /// Returns how many segments were removed.
    pub fn collect_garbage(&mut self, cutoff_micros: u64) -> Result<usize, LogError> {
        let mut removed = 0;
        while self.segments.len() > 1 {
            // A segment's newest event is just before the next segment's first one; read its
            // last record's time by scanning (segments are bounded in size).
            let newest = self.newest_time(&self.segments[0])?;
            if newest.is_some_and(|t| t >= cutoff_micros) {
                break;
            }
            let segment = self.segments.remove(0);
            fs::remove_file(&segment.path)?;
            removed += 1;
        }
        Ok(removed)
    }

    /// The time of a sealed segment's last record: a seek to its last index entry, then a
    /// header-only scan of the rest.
    fn newest_time(&self, segment: &Segment) -> Result<Option<u64>, LogError> {
        ensure_indexed(segment, self.config.index_stride_bytes)?;
        let offset = segment.index.read().unwrap_or_else(|p| p.into_inner()).offset_for(u64::MAX);
        let mut reader = BufReader::with_capacity(64 * 1024, File::open(&segment.path)?);
        reader.seek(SeekFrom::Start(offset))?;
        let mut newest = None;
        while let Ok(Some((_, time, _))) = skip_record(&mut reader) {
            newest = Some(time);
        }
        Ok(newest)
    }
}

/// Builds a segment's seek index if this process has not written or read it yet.
fn ensure_indexed(segment: &Segment, stride: u64) -> Result<(), LogError> {
    if segment.index.read().unwrap_or_else(|p| p.into_inner()).complete {
        return Ok(());
    }
    let mut index = segment.index.write().unwrap_or_else(|p| p.into_inner());
    if index.complete {
        return Ok(()); // another reader built it meanwhile
    }
    let mut reader = BufReader::with_capacity(256 * 1024, File::open(&segment.path)?);
    let mut built = SeekIndex { complete: true, ..SeekIndex::default() };
    let mut offset = 0u64;
    loop {
        match skip_record(&mut reader) {
            Ok(Some((seq, _, size))) => {
                built.note(seq, offset, stride);
                offset += size;
            }
            Ok(None) => break,
            Err(reason) => return Err(LogError::Corrupt { path: segment.path.clone(), offset, reason }),
        }
    }
    *index = built;
    Ok(())
}

/// The segments and head at one moment; reading needs no lock on the writer.
#[derive(Debug, Clone)]
pub struct LogView {
    segments: Vec<Segment>,
    head: u64,
    /// Bytes of the newest segment written when the view was taken: a reader stops there
    /// rather than meet a batch being written.
    active_len: u64,
    stride: u64,
}

impl LogView {
    pub fn head(&self) -> u64 {
        self.head
    }

    pub fn oldest_seq(&self) -> Option<u64> {
        self.segments.first().map(|s| s.first_seq)
    }

    /// Reads up to `max_events` records with seq > `after`, stopping after `max_bytes` of frames.
    pub fn read_after(
        &self,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        // The segment that can hold `after + 1`: the last one starting at or below it.
        let start =
            self.segments.partition_point(|s| s.first_seq <= after.saturating_add(1)).saturating_sub(1);
        let newest = self.segments.len().saturating_sub(1);
        for (position, segment) in self.segments.iter().enumerate().skip(start) {
            let file = match File::open(&segment.path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // collected meanwhile
                Err(e) => return Err(e.into()),
            };
            let limit = if position == newest { self.active_len } else { u64::MAX };
            let mut offset = 0u64;
            if position == start && after >= segment.first_seq {
                if let Err(error) = ensure_indexed(segment, self.stride) {
                    if !segment.path.exists() {
                        continue; // collected meanwhile
                    }
                    return Err(error);
                }
                let index = segment.index.read().unwrap_or_else(|p| p.into_inner());
                offset = index.offset_for(after.saturating_add(1)).min(limit);
            }
            let mut file = file;
            file.seek(SeekFrom::Start(offset))?;
            let mut reader = BufReader::with_capacity(256 * 1024, file.take(limit.saturating_sub(offset)));
            loop {
                match read_record(&mut reader, MAX_RECORD_BODY) {
                    Ok(Some((record, size))) => {
                        offset += size;
                        if record.seq <= after {
                            continue;
                        }
                        if record.seq > self.head {
                            return Ok(out); // being written right now
                        }
                        bytes += record.frame.len();
                        out.push(record);
                        if out.len() >= max_events || bytes >= max_bytes {
                            return Ok(out);
                        }
                    }
                    Ok(None) => break,
                    Err(reason) => {
                        return Err(LogError::Corrupt { path: segment.path.clone(), offset, reason });
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("relay-log-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn config(dir: &Path, segment_bytes: u64) -> LogConfig {
        LogConfig { dir: dir.to_path_buf(), segment_bytes, sync: false, index_stride_bytes: 64 }
    }

    #[test]
    fn append_read_reopen_and_segment() {
        let dir = temp_dir("basic");
        let mut log = EventLog::open(config(&dir, 200)).expect("open");
        for seq in 1..=50u64 {
            let frame = vec![seq as u8; 30];
            log.append_batch(&[(seq, seq * 10, "did:plc:a", &frame)]).expect("append");
        }
        assert!(log.segments.len() > 3, "small segments roll over");
        let all = log.read_after(0, 1000, usize::MAX).expect("read");
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=50).collect::<Vec<_>>());
        let tail = log.read_after(45, 1000, usize::MAX).expect("read");
        assert_eq!(tail.first().map(|r| r.seq), Some(46));
        assert_eq!(log.read_after(10, 3, usize::MAX).expect("read").len(), 3);
        drop(log);
        let reopened = EventLog::open(config(&dir, 200)).expect("reopen");
        assert_eq!(reopened.head(), 50);
        assert!(reopened.read_after(50, 10, usize::MAX).expect("read").is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn reads_after_every_cursor_through_the_seek_index() {
        let dir = temp_dir("seek");
        let mut log = EventLog::open(config(&dir, 2_000)).expect("open");
        let mut rng = fastrand::Rng::with_seed(7);
        let mut seq = 0u64;
        while seq < 300 {
            let batch: Vec<(u64, Vec<u8>)> = (0..rng.usize(1..6))
                .map(|_| (seq + 1, vec![0u8; rng.usize(0..120)]))
                .enumerate()
                .map(|(i, (s, f))| (s + i as u64, f))
                .collect();
            seq += batch.len() as u64;
            let records: Vec<(u64, u64, &str, &[u8])> =
                batch.iter().map(|(s, f)| (*s, *s, "did:plc:a", f.as_slice())).collect();
            log.append_batch(&records).expect("append");
        }
        let check = |log: &EventLog| {
            for after in 0..=seq {
                let got: Vec<u64> =
                    log.read_after(after, 7, usize::MAX).expect("read").iter().map(|r| r.seq).collect();
                let want: Vec<u64> = (after + 1..=seq.min(after + 7)).collect();
                assert_eq!(got, want, "after {after}");
            }
        };
        check(&log);
        drop(log);
        // Reopened: older segments are indexed on their first read.
        let log = EventLog::open(config(&dir, 2_000)).expect("reopen");
        assert!(!log.segments[0].index.read().unwrap().complete);
        check(&log);
        assert!(log.segments.iter().all(|s| s.index.read().unwrap().complete));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_view_stops_at_what_was_written_when_it_was_taken() {
        let dir = temp_dir("view");
        let mut log = EventLog::open(config(&dir, 1 << 20)).expect("open");
        log.append_batch(&[(1, 1, "did:plc:a", b"one"), (2, 2, "did:plc:a", b"two")]).expect("append");
        let view = log.view();
        // Half a record appended behind the view's back (a batch being written).
        let path = log.segments[0].path.clone();
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(&[40, 0, 0, 0, 1, 2, 3]).expect("write");
        let seqs: Vec<u64> =
            view.read_after(0, 10, usize::MAX).expect("read").iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 2]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn torn_tail_is_truncated() {
        let dir = temp_dir("torn");
        let mut log = EventLog::open(config(&dir, 1 << 20)).expect("open");
        log.append_batch(&[(1, 1, "did:plc:a", b"one"), (2, 2, "did:plc:a", b"two")]).expect("append");
        let path = log.segments[0].path.clone();
        drop(log);
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(&[40, 0, 0, 0, 1, 2, 3]).expect("write garbage");
        drop(file);
        let mut log = EventLog::open(config(&dir, 1 << 20)).expect("reopen");
        assert_eq!(log.head(), 2);
        log.append_batch(&[(3, 3, "did:plc:a", b"three")]).expect("append after recovery");
        let seqs: Vec<u64> = log.read_after(0, 10, usize::MAX).expect("read").iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_batch_leaves_nothing_behind_and_can_be_retried() {
        let dir = temp_dir("rollback");
        let mut log = EventLog::open(config(&dir, 200)).expect("open");
        for seq in 1..=5u64 {
            log.append_batch(&[(seq, seq, "did:plc:a", &[seq as u8; 30])]).expect("append");
        }
        let files_before = fs::read_dir(&dir).expect("dir").count();
        // A batch that writes records across a segment boundary, then fails on its last one.
        let frames: Vec<Vec<u8>> = (6..=20u64).map(|seq| vec![seq as u8; 30]).collect();
        let mut batch: Vec<(u64, u64, &str, &[u8])> =
            (6..=20u64).zip(&frames).map(|(seq, f)| (seq, seq, "did:plc:a", f.as_slice())).collect();
        batch.push((3, 3, "did:plc:a", b"stale"));
        assert!(log.append_batch(&batch).is_err());
        assert_eq!(log.head(), 5);
        assert_eq!(fs::read_dir(&dir).expect("dir").count(), files_before, "segments it started are gone");
        assert_eq!(log.read_after(0, 100, 1 << 20).expect("read").len(), 5);
        // The same events (without the bad one) go in afterwards, and a reopen sees no tear.
        batch.pop();
        log.append_batch(&batch).expect("retry");
        drop(log);
        let log = EventLog::open(config(&dir, 200)).expect("reopen");
        let seqs: Vec<u64> = log.read_after(0, 100, 1 << 20).expect("read").iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    }

    #[test]
    fn rejects_non_increasing_seq_and_collects_garbage() {
        let dir = temp_dir("gc");
        let mut log = EventLog::open(config(&dir, 100)).expect("open");
        for seq in 1..=30u64 {
            log.append_batch(&[(seq, seq, "did:plc:a", &[0u8; 40])]).expect("append");
        }
        assert!(matches!(log.append_batch(&[(30, 31, "d", b"x")]), Err(LogError::SeqNotIncreasing { .. })));
        let before = log.segments.len();
        let removed = log.collect_garbage(20).expect("gc");
        assert!(removed > 0 && log.segments.len() == before - removed);
        let oldest = log.oldest_seq().expect("oldest");
        assert!(oldest > 1 && oldest <= 20);
        let remaining = log.read_after(0, 100, usize::MAX).expect("read");
        assert_eq!(remaining.first().map(|r| r.seq), Some(oldest));
        assert_eq!(remaining.last().map(|r| r.seq), Some(30));
        let _ = fs::remove_dir_all(&dir);
    }
}
