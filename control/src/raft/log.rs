//! The durable raft log: segment files of framed entries, fsync'd before raft hears they are
//! stored, and recovered up to the last whole entry after a crash.
//!
//! ```text
//!   <dir>/log/<first index, 20 digits>.seg   records: [len u32 LE][crc32 u32 LE][sealed entry]
//!   <dir>/vote.json                          written whole: tmp, fsync, rename, fsync dir
//!   <dir>/purged.json                        the last purged log id (same)
//!   <dir>/committed.json                     a hint: overwritten in place, not fsync'd
//! ```
//!
//! `append` keeps the entries in memory (readable at once, as openraft requires) and queues the
//! bytes to one writer thread, which writes everything queued, calls `fdatasync` once, and only
//! then reports the entries flushed (group commit: 64 concurrent writers cost one fsync, not 64).
//! A follower's append, when nothing is queued, writes and syncs its entries itself, in raft's
//! own turn, without the two hand-overs between threads (`LogStore::write_now`).
//!
//! The last segment is preallocated ahead of its writes ([`PREALLOCATE`] at a time, `fallocate`
//! extending the file), so that an `fdatasync` flushes the records alone, not a new file size
//! with them (etcd's WAL does the same): 135 against 210 µs an fsync on the lab's disk. Zeros
//! past the last record are that room; the file is cut to its records when a segment is
//! closed, when the log is, and at open.
//!
//! The one exception is the leader's own new entries. openraft 0.9 waits for the leader's append
//! to be reported flushed before it sends the entries to the followers, which puts the leader's
//! fsync and the followers' in a row on every write. The log reports them at once instead, so
//! the leader's fsync runs while the followers write theirs, as the raft thesis allows (§10.2.1),
//! and what committing them lets anyone see waits for that fsync ([`Durability`]): the state
//! machine applies no entry the log does not hold on disk, `committed.json` names none, and the
//! followers are told no commit index past it. So a write is answered, and applied anywhere,
//! only once a majority holds it on disk, the leader included. Followers report after their
//! fsync, always: their answer is what the leader counts. Membership changes take the slow way.
//! Truncation and purging go through the same queue, so they are ordered with the writes, and
//! wait for it. At open, each segment is read to its last whole record: a torn tail (the crash
//! happened mid-write) is cut off; a bad record before the tail is corruption and an error.
//!
//! A sealed entry is the entry's JSON sealed with the manager's data key ([`crate::keys`]):
//! nonce, ciphertext, tag. The checksum covers the sealed bytes, so a torn tail is told from
//! the wrong key.

use std::{
    collections::BTreeMap,
    fmt::Debug,
    fs::{self, File, OpenOptions},
    io::{self, Read},
    ops::{Bound, RangeBounds},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
};

use tokio::sync::watch;

use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader,
    StorageError, StorageIOError, Vote,
    storage::{LogFlushed, RaftLogStorage},
};
use serde::{Serialize, de::DeserializeOwned};

use super::{Entry, NodeId, StorageResult, TypeConfig};
use crate::{
    durable::{FILE_MODE, sync_dir, write_durable},
    keys::{DataKey, Purpose},
};

/// A segment is closed and a new one started past this many bytes.
const SEGMENT_BYTES: u64 = 64 << 20;
/// The last segment is allocated this far ahead of its records.
const PREALLOCATE: u64 = 4 << 20;
/// `committed.json` is always this long (JSON padded with spaces).
const COMMITTED_BYTES: usize = 256;
/// Header of a record: length and CRC32 of the payload.
const HEADER: usize = 8;

fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
) -> impl FnOnce(io::Error) -> StorageError<NodeId> {
    move |e| StorageError::IO {
        source: StorageIOError::new(subject, verb, AnyError::new(&e)),
    }
}

/// Writes `value` as JSON to `path` whole and durably, 0600 (what a manager writes is its own).
pub(crate) fn write_json_durable<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    write_durable(path, &bytes, FILE_MODE)
}

/// Reads a JSON file written by [`write_json_durable`]; `None` when it does not exist.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Entries in memory, shared by the log and its readers.
#[derive(Debug, Default)]
struct Entries {
    /// Unpurged entries by index.
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId<NodeId>>,
}

/// How far the log is on disk, as the last write and fsync reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Synced {
    /// The last index a completed fsync covers (`None`: no entry yet).
    index: Option<u64>,
    /// A write or fsync failed: nothing past `index` will become durable.
    failed: bool,
}

/// What the writer thread is asked to do, in order.
enum WriterCommand {
    Append {
        records: Vec<(u64, Vec<u8>)>,
        /// `None` when the entries were reported flushed as they were queued (the leader's own).
        callback: Option<LogFlushed<TypeConfig>>,
    },
    /// Drop every entry from this index on.
    Truncate {
        from: u64,
        done: mpsc::SyncSender<io::Result<()>>,
    },
    /// Drop whole segments whose entries are all at or below this index.
    Purge {
        upto: u64,
        done: mpsc::SyncSender<io::Result<()>>,
    },
    /// Write the vote (after the appends before it are durable: raft's writes are serialized).
    Vote {
        vote: Vote<NodeId>,
        done: mpsc::SyncSender<io::Result<()>>,
    },
}

/// The log storage handed to openraft.
#[derive(Debug, Clone)]
pub struct LogStore {
    dir: PathBuf,
    /// Seals every record.
    key: DataKey,
    committed: Arc<Mutex<File>>,
    /// The last commit index raft told this log (0: none yet), for the metrics.
    committed_index: Arc<AtomicU64>,
    /// The entries in memory, and how far the writer has made them durable.
    durability: Durability,
    writer: Arc<WriterThread>,
    /// This manager's raft ID: whose entries are its own as leader.
    me: NodeId,
    /// The vote raft last asked this log to keep (from the moment it asks).
    vote: Arc<Mutex<Option<Vote<NodeId>>>>,
}

/// The writer thread and its queue. When the last [`LogStore`] clone goes, the queue closes;
/// the thread finishes what is queued, cuts the last segment to its records and ends, and the
/// drop waits for that (a log opened again finds the files as they were left).
///
/// The files are the [`Writer`]'s, behind a lock: the thread holds it while it works through
/// a batch, and a follower's append takes it itself when nothing is queued
/// ([`LogStore::write_now`]).
#[derive(Debug)]
struct WriterThread {
    ops: Option<mpsc::Sender<WriterCommandBox>>,
    /// Commands sent and not yet done (the thread counts them off after each batch).
    queued: Arc<AtomicUsize>,
    files: Arc<Mutex<Writer>>,
    thread: Option<thread::JoinHandle<()>>,
    /// Appends written in raft's turn, for the tests.
    #[cfg(test)]
    written_now: AtomicUsize,
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        drop(self.ops.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What of the log is on disk, for those who must not act on more: the state machine and the
/// raft clients (module docs).
#[derive(Debug, Clone)]
pub struct Durability {
    shared: Arc<Mutex<Entries>>,
    synced: watch::Receiver<Synced>,
}

impl Durability {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until every entry the log holds up to `index` is on disk. An error when a write
    /// failed first (raft then stops: nothing past the failure is applied).
    pub async fn reach(&self, index: u64) -> io::Result<()> {
        let target = {
            let shared = self.lock();
            let last = shared.entries.keys().next_back().copied();
            match last {
                Some(last) => index.min(last),
                // Nothing unpurged: what was purged had been applied, so was on disk.
                None => return Ok(()),
            }
        };
        let mut synced = self.synced.clone();
        let now = *synced
            .wait_for(|s| s.failed || s.index.is_some_and(|i| i >= target))
            .await
            .map_err(|_| io::Error::other("the raft log writer stopped"))?;
        if now.index.is_some_and(|i| i >= target) {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "raft log entry {target} never reached the disk: a log write failed"
            )))
        }
    }

    /// `committed` as far as this log holds it on disk: the commit index a leader may tell
    /// its followers (`None` when it holds none of it on disk).
    pub fn bound(&self, committed: Option<LogId<NodeId>>) -> Option<LogId<NodeId>> {
        let committed = committed?;
        let synced = *self.synced.borrow();
        let index = synced.index?;
        if committed.index <= index {
            return Some(committed);
        }
        let shared = self.lock();
        match shared.entries.get(&index) {
            Some(entry) => Some(entry.log_id),
            None => shared.last_purged.filter(|p| p.index == index),
        }
    }
}

/// Whether `entry` is one this manager appends as the leader `vote` names (granted, and
/// `me`), outside a membership change: one [`LogStore::append`] may report flushed at once.
fn own_leader_entry(vote: Option<&Vote<NodeId>>, me: NodeId, entry: &Entry) -> bool {
    vote.is_some_and(|vote| {
        vote.is_committed()
            && vote.leader_id().node_id == me
            && entry.log_id.leader_id == *vote.leader_id()
            && !matches!(entry.payload, EntryPayload::Membership(_))
    })
}

/// `WriterCommand` is not `Debug` (the callback is not); wrap it for the channel.
struct WriterCommandBox(WriterCommand);

impl Debug for WriterCommandBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriterCommand")
    }
}

/// A segment file: its first index and where each of its entries starts.
#[derive(Debug)]
struct Segment {
    first: u64,
    path: PathBuf,
    /// Byte offset of each entry, by index.
    offsets: BTreeMap<u64, u64>,
    /// Where its records end.
    len: u64,
    /// The file's size: `len` and the room allocated past it.
    allocated: u64,
}

/// The segment files' state, behind [`WriterThread::files`]: written by the writer thread, and
/// by a follower's append in raft's turn.
#[derive(Debug)]
struct Writer {
    dir: PathBuf,
    segments: Vec<Segment>,
    /// The last segment, open for appending.
    file: Option<File>,
    /// Set by the first failed write or sync: what is on disk past that point is unknown, so
    /// every later operation fails too (raft stops; a restart recovers from what is whole).
    failed: Option<String>,
    /// The last index written to the segment files (on disk after the next fsync).
    written: Option<u64>,
    /// Whether the file system allocates ahead (`fallocate`); cleared when it cannot.
    preallocate: bool,
    synced: watch::Sender<Synced>,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

/// Reads the segment `path` (starting at index `first`) up to its last whole record, cutting
/// off what follows when that is room allocated ahead, or a torn tail of the last segment
/// (`last_segment`, which is fsync'd once either way): its entries past `last_purged` go into
/// `entries`.
fn read_segment(
    (first, path): (u64, PathBuf),
    key: &DataKey,
    last_segment: bool,
    last_purged: Option<LogId<NodeId>>,
    entries: &mut BTreeMap<u64, Entry>,
) -> io::Result<Segment> {
    let mut bytes = Vec::new();
    File::open(&path)?.read_to_end(&mut bytes)?;
    let mut offsets = BTreeMap::new();
    let mut at = 0_usize;
    let mut synced = false;
    while at < bytes.len() {
        let whole = parse_record(&bytes[at..], key).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("raft log segment {} at byte {at}: {e}", path.display()),
            )
        })?;
        let Some((entry, size)) = whole else {
            // Zeros: room allocated ahead and not written (in a closed segment too, if
            // a crash came before its cut reached the disk).
            let room = bytes[at..].iter().all(|b| *b == 0);
            if room || (last_segment && torn_tail(&bytes[at..])) {
                // A torn tail: the crash came mid-write, before the fsync that would
                // have reported these bytes stored. Cut it off.
                if !room {
                    tracing::warn!(segment = %path.display(), at, "cutting a torn record off the raft log");
                }
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(at as u64)?;
                file.sync_all()?;
                synced = true;
                bytes.truncate(at);
                break;
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "raft log segment {} is corrupt at byte {at}",
                    path.display()
                ),
            ));
        };
        let index = entry.log_id.index;
        offsets.insert(index, at as u64);
        if last_purged.is_none_or(|p| index > p.index) {
            entries.insert(index, entry);
        }
        at += size;
    }
    // What a segment holds at open is taken as on disk (a crash's torn tail is cut above). What
    // the last segment holds may be in the page cache only (a process killed before its fsync):
    // made durable before it counts as such, once.
    if last_segment && !synced {
        File::open(&path)?.sync_all()?;
    }
    Ok(Segment {
        first,
        path,
        offsets,
        len: bytes.len() as u64,
        allocated: bytes.len() as u64,
    })
}

impl LogStore {
    /// The last commit index raft told this log, shared: it follows as raft commits.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed_index.clone()
    }

    /// What of this log is on disk, shared.
    pub fn durability(&self) -> Durability {
        self.durability.clone()
    }

    /// Opens (or creates) the log in `dir` for the manager whose raft ID is `me`, recovering
    /// what a crash left.
    pub fn open(dir: &Path, key: DataKey, me: NodeId) -> io::Result<Self> {
        let log_dir = dir.join("log");
        fs::create_dir_all(&log_dir)?;
        let last_purged: Option<LogId<NodeId>> = read_json(&dir.join("purged.json"))?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for item in fs::read_dir(&log_dir)? {
            let path = item?.path();
            let first = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok());
            match first {
                Some(first) => names.push((first, path)),
                // A leftover temporary file or anything else is not part of the log.
                None => continue,
            }
        }
        names.sort();
        let mut entries = BTreeMap::new();
        let mut segments = Vec::new();
        let count = names.len();
        for (n, name) in names.into_iter().enumerate() {
            segments.push(read_segment(
                name,
                &key,
                n + 1 == count,
                last_purged,
                &mut entries,
            )?);
        }
        // The entries must follow each other from the purge point: a hole means lost data.
        let mut expected = last_purged.map(|p| p.index + 1);
        for index in entries.keys() {
            if let Some(expected) = expected
                && *index != expected
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("raft log has a hole: entry {expected} is missing before {index}"),
                ));
            }
            expected = Some(index + 1);
        }
        let file = match segments.last() {
            Some(segment) => Some(OpenOptions::new().write(true).open(&segment.path)?),
            None => None,
        };
        let written = segments
            .iter()
            .rev()
            .find_map(|s| s.offsets.keys().next_back().copied())
            .or(last_purged.map(|p| p.index));
        let (synced_tx, synced) = watch::channel(Synced {
            index: written,
            failed: false,
        });
        let writer = Writer {
            dir: log_dir,
            segments,
            file,
            failed: None,
            written,
            preallocate: true,
            synced: synced_tx,
        };
        let (ops, receiver) = mpsc::channel::<WriterCommandBox>();
        let files = Arc::new(Mutex::new(writer));
        let queued = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (files, queued) = (files.clone(), queued.clone());
            thread::Builder::new()
                .name("raft-log".into())
                .spawn(move || Writer::run(&files, &queued, receiver))?
        };
        let committed = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join("committed.json"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            key,
            committed: Arc::new(Mutex::new(committed)),
            committed_index: Arc::default(),
            durability: Durability {
                shared: Arc::new(Mutex::new(Entries {
                    entries,
                    last_purged,
                })),
                synced,
            },
            writer: Arc::new(WriterThread {
                ops: Some(ops),
                queued,
                files,
                thread: Some(thread),
                #[cfg(test)]
                written_now: AtomicUsize::new(0),
            }),
            me,
            vote: Arc::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.durability.lock()
    }

    fn send(&self, op: WriterCommand) -> io::Result<()> {
        let ops = self
            .writer
            .ops
            .as_ref()
            .ok_or_else(|| io::Error::other("the raft log writer stopped"))?;
        self.writer.queued.fetch_add(1, Ordering::AcqRel);
        ops.send(WriterCommandBox(op)).map_err(|_| {
            self.writer.queued.fetch_sub(1, Ordering::AcqRel);
            io::Error::other("the raft log writer stopped")
        })
    }

    /// Writes `records` and syncs them in the caller's turn, then reports them through
    /// `callback`, when nothing is queued for the writer thread (what is queued must reach the
    /// disk first); otherwise hands `callback` back, with nothing done.
    ///
    /// A follower's append: the leader waits for its answer, and openraft for this append's
    /// report, so nothing else would run beside the write. Done here, the entries are on disk
    /// without two hand-overs between threads (to the writer and back to raft), as etcd's
    /// follower syncs in its raft loop. The caller's worker thread blocks for the write and
    /// its `fdatasync`; the runtime's other workers go on.
    fn write_now(
        &self,
        records: &[(u64, Vec<u8>)],
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), LogFlushed<TypeConfig>> {
        let queued = || self.writer.queued.load(Ordering::Acquire) != 0;
        // Checked first without the lock, so that raft's core never waits on the lock while the
        // writer thread works through a batch (it counts a batch off only after releasing the
        // lock). Only the core sends commands, and it is here, so nothing is queued after this
        // check; checked again under the lock all the same: a command sent meanwhile by anyone
        // else goes first.
        if queued() {
            return Err(callback);
        }
        let mut files = self.writer.files.lock().unwrap_or_else(|e| e.into_inner());
        if queued() {
            return Err(callback);
        }
        #[cfg(test)]
        self.writer.written_now.fetch_add(1, Ordering::Relaxed);
        let mut dirty = false;
        let written = files.write(records, &mut dirty);
        let synced = files.sync(&mut dirty);
        drop(files);
        callback.log_io_completed(outcome(written, &synced));
        Ok(())
    }

    /// Sends an op that answers on `done` and waits for the answer off the async runtime.
    async fn request(
        &self,
        op: impl FnOnce(mpsc::SyncSender<io::Result<()>>) -> WriterCommand,
    ) -> io::Result<()> {
        let (done, answer) = mpsc::sync_channel(1);
        self.send(op(done))?;
        tokio::task::spawn_blocking(move || answer.recv())
            .await
            .map_err(io::Error::other)?
            .map_err(|_| io::Error::other("the raft log writer stopped"))?
    }
}

/// Whether `rest`, which does not start with a whole record, is what a crash mid-append
/// leaves: a record cut short (its header or payload runs past the end of the file), a final
/// record whose payload is damaged (nothing but zeros follows it: the room allocated ahead, or
/// nothing at all), or zeros a file system may leave past the last write. A bad record with
/// more after it is corruption, never cut. (The length field has no checksum of its own: a
/// damaged length that points past the end of the file reads as a record cut short.)
fn torn_tail(rest: &[u8]) -> bool {
    if rest.iter().all(|b| *b == 0) {
        return true;
    }
    let Some(header) = rest.get(..HEADER) else {
        return true;
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    rest.get(HEADER.saturating_add(len)..)
        .is_none_or(|after| after.iter().all(|b| *b == 0))
}

/// One record at the start of `bytes`: the entry and the record's size, or `None` when the
/// record is incomplete or does not check out. A whole record (its checksum holds) that the
/// data key does not open is an error: the wrong key, or a record forged to match its checksum.
fn parse_record(bytes: &[u8], key: &DataKey) -> Result<Option<(Entry, usize)>, String> {
    let Some(header) = bytes.get(..HEADER) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let Some(payload) = bytes.get(HEADER..HEADER.saturating_add(len)) else {
        return Ok(None);
    };
    // Shorter than a nonce and a tag is no sealed record (zeros past the end read as one).
    if payload.len() < crate::keys::SEAL_OVERHEAD || crc32fast::hash(payload) != crc {
        return Ok(None);
    }
    let plain = key.open(Purpose::LogRecord, payload).ok_or(
        "the record does not open with this manager's data key (keys.json is not the one the log was written with, or the record was altered)",
    )?;
    let entry = serde_json::from_slice(&plain)
        .map_err(|e| format!("a sealed record holds no entry: {e}"))?;
    Ok(Some((entry, HEADER + len)))
}

fn record(entry: &Entry, key: &DataKey) -> io::Result<Vec<u8>> {
    let payload = key.seal(
        Purpose::LogRecord,
        &serde_json::to_vec(entry).map_err(io::Error::other)?,
    )?;
    let len =
        u32::try_from(payload.len()).map_err(|_| io::Error::other("raft entry over 4 GiB"))?;
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

impl Writer {
    /// The writer thread: works through what is queued, a batch at a time, holding `files`
    /// for each batch and counting it off `queued` once done.
    fn run(files: &Mutex<Self>, queued: &AtomicUsize, ops: mpsc::Receiver<WriterCommandBox>) {
        while let Ok(WriterCommandBox(first)) = ops.recv() {
            // Everything already queued goes into the same write and the same fsync.
            let mut batch = vec![first];
            while let Ok(WriterCommandBox(op)) = ops.try_recv() {
                batch.push(op);
            }
            let count = batch.len();
            files.lock().unwrap_or_else(|e| e.into_inner()).work(batch);
            queued.fetch_sub(count, Ordering::AcqRel);
        }
        let mut writer = files.lock().unwrap_or_else(|e| e.into_inner());
        // The log is closed: the last segment ends where its records do.
        if writer.failed.is_none()
            && let Err(e) = writer.trim()
        {
            tracing::warn!(error = %e, "could not cut the raft log's last segment to its records");
        }
    }

    /// Writes `records` to the segment files (on disk after the next [`Writer::sync`]).
    fn write(&mut self, records: &[(u64, Vec<u8>)], dirty: &mut bool) -> io::Result<()> {
        let result = self.guarded(|w| w.append(records));
        if result.is_ok() {
            self.written = records.last().map(|(i, _)| *i).or(self.written);
        }
        *dirty = true;
        result
    }

    /// One batch of commands, in order, with one fsync for the appends between the others.
    fn work(&mut self, batch: Vec<WriterCommand>) {
        let mut flushed = Vec::new();
        let mut dirty = false;
        for op in batch {
            match op {
                WriterCommand::Append { records, callback } => {
                    let result = self.write(&records, &mut dirty);
                    if let Some(callback) = callback {
                        flushed.push((callback, result));
                    }
                }
                other => {
                    // Appends before a truncate or purge are made durable first.
                    let synced = self.sync(&mut dirty);
                    complete(&mut flushed, &synced);
                    match other {
                        WriterCommand::Truncate { from, done } => {
                            let result = synced.and_then(|()| self.truncate(from));
                            if result.is_ok() {
                                self.written = self.written.min(from.checked_sub(1));
                                self.publish();
                            }
                            let _ = done.send(result);
                        }
                        WriterCommand::Purge { upto, done } => {
                            let _ = done.send(synced.and_then(|()| self.purge(upto)));
                        }
                        WriterCommand::Vote { vote, done } => {
                            let path = self.dir.with_file_name("vote.json");
                            let _ =
                                done.send(synced.and_then(|()| write_json_durable(&path, &vote)));
                        }
                        WriterCommand::Append { .. } => unreachable!("matched above"),
                    }
                }
            }
        }
        let synced = self.sync(&mut dirty);
        complete(&mut flushed, &synced);
    }

    /// Cuts the last segment's file to its records (drops the room allocated ahead), durably.
    fn trim(&mut self) -> io::Result<()> {
        if let (Some(file), Some(segment)) = (&self.file, self.segments.last_mut())
            && segment.allocated > segment.len
        {
            file.set_len(segment.len)?;
            file.sync_all()?;
            segment.allocated = segment.len;
        }
        Ok(())
    }

    /// Runs `op` unless an earlier write failed; a failure of `op` is remembered.
    fn guarded(&mut self, op: impl FnOnce(&mut Self) -> io::Result<()>) -> io::Result<()> {
        if let Some(failed) = &self.failed {
            return Err(io::Error::other(format!(
                "an earlier raft log write failed: {failed}"
            )));
        }
        let result = op(self);
        if let Err(e) = &result {
            tracing::error!(error = %e, "raft log write failed; the log refuses further writes");
            self.failed = Some(e.to_string());
        }
        result
    }

    fn sync(&mut self, dirty: &mut bool) -> io::Result<()> {
        let dirty = std::mem::take(dirty);
        let result = self.guarded(|w| match (&w.file, dirty) {
            (Some(file), true) => file.sync_data(),
            _ => Ok(()),
        });
        self.publish();
        result
    }

    /// Tells [`Durability`] how far the log is on disk, or that it failed.
    fn publish(&self) {
        let now = Synced {
            index: if self.failed.is_some() {
                self.synced.borrow().index
            } else {
                self.written
            },
            failed: self.failed.is_some(),
        };
        self.synced.send_if_modified(|s| {
            let changed = *s != now;
            *s = now;
            changed
        });
    }

    fn append(&mut self, records: &[(u64, Vec<u8>)]) -> io::Result<()> {
        let Some((first, _)) = records.first() else {
            return Ok(());
        };
        let roll = match self.segments.last() {
            None => true,
            Some(segment) => segment.len >= SEGMENT_BYTES,
        };
        if roll {
            // The old segment's records are already synced (sync precedes every op but
            // appends, and an append batch ends with one); cut it to them, start the new one
            // and make its name durable.
            if let Some(file) = &self.file {
                file.sync_data()?;
            }
            self.trim()?;
            let path = segment_path(&self.dir, *first);
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)?;
            sync_dir(&self.dir)?;
            self.segments.push(Segment {
                first: *first,
                path,
                offsets: BTreeMap::new(),
                len: 0,
                allocated: 0,
            });
            self.file = Some(file);
        }
        let segment = self.segments.last_mut().expect("one exists");
        let file = self.file.as_mut().expect("open with the last segment");
        let mut buffer = Vec::new();
        for (index, bytes) in records {
            segment
                .offsets
                .insert(*index, segment.len + buffer.len() as u64);
            buffer.extend_from_slice(bytes);
        }
        let end = segment.len + buffer.len() as u64;
        if end > segment.allocated && self.preallocate {
            let room = PREALLOCATE.max(buffer.len() as u64);
            match nix::fcntl::fallocate(
                &*file,
                nix::fcntl::FallocateFlags::empty(),
                segment.len as libc::off_t,
                room as libc::off_t,
            ) {
                Ok(()) => segment.allocated = segment.len + room,
                // Not supported, or no room for that much: the file grows as it is written
                // instead (the write says whether the records themselves fit).
                Err(e) => {
                    tracing::warn!(error = %e, "the raft log cannot allocate ahead; it grows as written");
                    self.preallocate = false;
                }
            }
        }
        {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&buffer, segment.len)?;
        }
        segment.len = end;
        segment.allocated = segment.allocated.max(end);
        Ok(())
    }

    fn truncate(&mut self, from: u64) -> io::Result<()> {
        while let Some(segment) = self.segments.last_mut() {
            if segment.first >= from {
                fs::remove_file(&segment.path)?;
                // Durable before the segment before it is cut: a removed segment that came back
                // after a power cut would leave a hole.
                sync_dir(&self.dir)?;
                self.segments.pop();
                self.file = None;
                continue;
            }
            if let Some(&offset) = segment.offsets.get(&from) {
                let file = OpenOptions::new().write(true).open(&segment.path)?;
                file.set_len(offset)?;
                file.sync_all()?;
                segment.offsets.split_off(&from);
                segment.len = offset;
                segment.allocated = offset;
            }
            break;
        }
        sync_dir(&self.dir)?;
        self.file = match self.segments.last() {
            Some(segment) => Some(OpenOptions::new().write(true).open(&segment.path)?),
            None => None,
        };
        Ok(())
    }

    fn purge(&mut self, upto: u64) -> io::Result<()> {
        // A segment goes when the next one starts at or below upto + 1 (all of it is purged);
        // the last segment goes when its last entry is purged too.
        let mut keep = Vec::new();
        let count = self.segments.len();
        for (n, segment) in std::mem::take(&mut self.segments).into_iter().enumerate() {
            let last = segment.offsets.keys().next_back().copied();
            let all_purged = last.is_none_or(|last| last <= upto);
            if all_purged {
                fs::remove_file(&segment.path)?;
                if n + 1 == count {
                    self.file = None;
                }
            } else {
                keep.push(segment);
            }
        }
        self.segments = keep;
        sync_dir(&self.dir)
    }
}

fn complete(flushed: &mut Vec<(LogFlushed<TypeConfig>, io::Result<()>)>, synced: &io::Result<()>) {
    for (callback, written) in flushed.drain(..) {
        callback.log_io_completed(outcome(written, synced));
    }
}

/// What an append came to: its write's failure, or the fsync's after it.
fn outcome(written: io::Result<()>, synced: &io::Result<()>) -> io::Result<()> {
    match (written, synced) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(io::Error::new(e.kind(), e.to_string())),
        (Ok(()), Ok(())) => Ok(()),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => Bound::Included(i),
            Bound::Excluded(&i) => Bound::Excluded(i),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Bound::Included(i),
            Bound::Excluded(&i) => Bound::Excluded(i),
            Bound::Unbounded => Bound::Unbounded,
        };
        Ok(self
            .lock()
            .entries
            .range((start, end))
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let shared = self.lock();
        let last = shared.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: shared.last_purged,
            last_log_id: last.or(shared.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let vote = *vote;
        // From now on, not before it is durable: appends under an earlier vote stop being the
        // leader's own at once.
        *self.vote.lock().unwrap_or_else(|e| e.into_inner()) = Some(vote);
        self.request(|done| WriterCommand::Vote { vote, done })
            .await
            .map_err(io_error(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        read_json(&self.dir.join("vote.json"))
            .map_err(io_error(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.committed_index
            .store(committed.map_or(0, |c| c.index), Ordering::Relaxed);
        // A hint that lets a restarted node apply what it knows is committed before it hears
        // from a leader; losing it only delays that. Overwritten in place, padded to a fixed
        // size, never fsync'd: it is on the path of every commit. A torn copy reads as none.
        // It names no entry the log does not hold on disk yet (module docs).
        let committed = self.durability.bound(committed);
        let mut bytes = serde_json::to_vec(&committed)
            .map_err(io::Error::other)
            .map_err(io_error(ErrorSubject::Store, ErrorVerb::Write))?;
        bytes.resize(COMMITTED_BYTES, b' ');
        let file = self.committed.clone();
        let write = move || -> io::Result<()> {
            use std::os::unix::fs::FileExt;
            let file = file.lock().unwrap_or_else(|e| e.into_inner());
            file.write_all_at(&bytes, 0)
        };
        write().map_err(io_error(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        let bytes = fs::read(self.dir.join("committed.json"))
            .map_err(io_error(ErrorSubject::Store, ErrorVerb::Read))?;
        let hint =
            serde_json::from_slice::<Option<LogId<NodeId>>>(bytes.trim_ascii()).unwrap_or(None);
        // A follower may note a commit index before the entries under it are flushed: the hint
        // is capped by what the log holds (at open, exactly what was durable).
        let shared = self.lock();
        let last = shared
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(shared.last_purged);
        Ok(hint.min(last))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let vote = *self.vote.lock().unwrap_or_else(|e| e.into_inner());
        let mut records = Vec::new();
        let mut own = true;
        {
            let mut shared = self.lock();
            for entry in entries {
                own &= own_leader_entry(vote.as_ref(), self.me, &entry);
                let bytes = record(&entry, &self.key)
                    .map_err(io_error(ErrorSubject::Logs, ErrorVerb::Write))?;
                records.push((entry.log_id.index, bytes));
                shared.entries.insert(entry.log_id.index, entry);
            }
        }
        // The leader's own entries (module docs) are flushed as far as raft is told, while the
        // writer makes them so; the others when the writer has.
        let (callback, now) = if own {
            (None, Some(callback))
        } else {
            match self.write_now(&records, callback) {
                Ok(()) => return Ok(()),
                Err(callback) => (Some(callback), None),
            }
        };
        self.send(WriterCommand::Append { records, callback })
            .map_err(io_error(ErrorSubject::Logs, ErrorVerb::Write))?;
        if let Some(callback) = now {
            callback.log_io_completed(Ok(()));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.lock().entries.split_off(&log_id.index);
        self.request(|done| WriterCommand::Truncate {
            from: log_id.index,
            done,
        })
        .await
        .map_err(io_error(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let path = self.dir.join("purged.json");
        let write = tokio::task::spawn_blocking(move || write_json_durable(&path, &log_id))
            .await
            .map_err(io::Error::other)
            .and_then(|r| r);
        write.map_err(io_error(ErrorSubject::Logs, ErrorVerb::Delete))?;
        {
            let mut shared = self.lock();
            shared.last_purged = Some(log_id);
            let keep = shared.entries.split_off(&(log_id.index + 1));
            shared.entries = keep;
        }
        self.request(|done| WriterCommand::Purge {
            upto: log_id.index,
            done,
        })
        .await
        .map_err(io_error(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::store::ChangeSet;

    /// The data key kept in `dir`.
    fn key(dir: &Path) -> DataKey {
        crate::keys::DataKeys::open(dir, None)
            .unwrap()
            .key()
            .clone()
    }

    /// The log in `dir`, sealed with the data key kept there.
    fn open(dir: &Path) -> io::Result<LogStore> {
        let keys = crate::keys::DataKeys::open(dir, None).map_err(io::Error::other)?;
        LogStore::open(dir, keys.key().clone(), 1)
    }

    /// Only entries this manager appends as the granted leader of their term, outside a
    /// membership change, are reported flushed before their fsync.
    #[test]
    fn only_the_granted_leaders_own_entries_skip_the_wait() {
        let mine = Vote::new_committed(1, 1);
        let own = entry(5);
        assert!(own_leader_entry(Some(&mine), 1, &own));
        // Not granted yet, no vote, or another manager's vote (a follower of term 1).
        assert!(!own_leader_entry(Some(&Vote::new(1, 1)), 1, &own));
        assert!(!own_leader_entry(None, 1, &own));
        assert!(!own_leader_entry(Some(&Vote::new_committed(1, 2)), 1, &own));
        // An entry of this manager's earlier term, sent back by a later leader.
        assert!(!own_leader_entry(Some(&Vote::new_committed(2, 1)), 1, &own));
        let membership = Entry {
            log_id: own.log_id,
            payload: EntryPayload::Membership(openraft::Membership::new(
                vec![std::collections::BTreeSet::from([1])],
                None,
            )),
        };
        assert!(!own_leader_entry(Some(&mine), 1, &membership));
    }

    /// What the log holds on disk bounds the commit index a leader tells, and an apply waits
    /// for it; the leader's own entries (reported at once) reach the disk all the same.
    #[tokio::test]
    async fn the_commit_index_told_and_applied_never_passes_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path()).unwrap();
        let durability = log.durability();
        assert_eq!(durability.bound(None), None);
        let beyond = LogId::new(CommittedLeaderId::new(1, 1), 9);
        assert_eq!(durability.bound(Some(beyond)), None, "nothing on disk yet");
        append(&mut log, 1..=3).await;
        durability.reach(3).await.unwrap();
        assert_eq!(durability.bound(Some(beyond)), Some(entry(3).log_id));
        assert_eq!(
            durability.bound(Some(entry(2).log_id)),
            Some(entry(2).log_id)
        );
        // As the granted leader of term 1.
        log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
        append(&mut log, 4..=6).await;
        durability.reach(6).await.unwrap();
        assert_eq!(durability.bound(Some(beyond)), Some(entry(6).log_id));
        // An index past the last entry waits only for what the log holds.
        durability.reach(100).await.unwrap();
        drop(log);
        let mut log = open(dir.path()).unwrap();
        assert_eq!(indices(&mut log).await, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(log.durability().bound(Some(beyond)), Some(entry(6).log_id));
    }

    #[tokio::test]
    async fn records_are_sealed_and_another_data_key_is_an_error_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path()).unwrap();
        append(&mut log, 1..=3).await;
        drop(log);
        let bytes = fs::read(&segments(dir.path())[0]).unwrap();
        assert!(
            !bytes.windows(8).any(|w| w == b"log_id\":"),
            "a record's JSON is in the segment in the clear"
        );
        let e = LogStore::open(dir.path(), DataKey::generate().unwrap(), 1).unwrap_err();
        assert!(e.to_string().contains("data key"), "{e}");
        // Nothing was cut off: the right key still reads all three.
        let mut log = open(dir.path()).unwrap();
        assert_eq!(indices(&mut log).await, vec![1, 2, 3]);
    }

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(super::super::Request {
                batch: vec![ChangeSet(Vec::new())],
            }),
        }
    }

    /// Appends `indices` and waits until they are durable.
    async fn append(log: &mut LogStore, indices: std::ops::RangeInclusive<u64>) {
        use openraft::storage::RaftLogStorageExt;
        log.blocking_append(indices.map(entry)).await.unwrap();
    }

    async fn indices(log: &mut LogStore) -> Vec<u64> {
        log.try_get_log_entries(..)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = fs::read_dir(dir.join("log"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        all.sort();
        all
    }

    /// Waits until `n` commands are queued for `log`'s writer thread and not yet done.
    async fn queued(log: &LogStore, n: usize) {
        for _ in 0..1000 {
            if log.writer.queued.load(Ordering::SeqCst) == n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("never {n} commands queued");
    }

    /// A follower's append is written in raft's own turn only when nothing is queued for the
    /// writer thread; otherwise it goes behind what is (here the leader's own entries, reported
    /// before their fsync, while the writer thread is held up), and the segment holds the
    /// entries in raft's order.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_append_written_in_raft_s_turn_never_overtakes_the_queue() {
        use openraft::storage::RaftLogStorageExt;
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path()).unwrap();
        log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
        let theirs = |index| {
            let mut e = entry(index);
            e.log_id.leader_id = CommittedLeaderId::new(1, 2);
            e
        };
        let written_now = |log: &LogStore| log.writer.written_now.load(Ordering::SeqCst);
        // Nothing queued: written in raft's turn.
        queued(&log, 0).await;
        log.blocking_append([theirs(1)]).await.unwrap();
        assert_eq!(written_now(&log), 1);
        // The writer thread held up (its lock taken here) with the leader's own entries queued.
        let (files, (locked, is_locked), (release, released)) = (
            log.writer.files.clone(),
            mpsc::channel(),
            mpsc::channel::<()>(),
        );
        let holder = thread::spawn(move || {
            let _held = files.lock().unwrap();
            locked.send(()).unwrap();
            let _ = released.recv();
        });
        is_locked.recv().unwrap();
        log.blocking_append((2..=51).map(entry)).await.unwrap();
        let mut follower = log.clone();
        let behind = tokio::spawn(async move { follower.blocking_append([theirs(52)]).await });
        queued(&log, 2).await;
        assert!(
            !behind.is_finished(),
            "reported before the writer thread wrote it"
        );
        release.send(()).unwrap();
        holder.join().unwrap();
        behind.await.unwrap().unwrap();
        assert_eq!(
            written_now(&log),
            1,
            "written in raft's turn past the queue"
        );
        log.durability().reach(52).await.unwrap();
        drop(log);
        let mut entries = BTreeMap::new();
        let segment = segments(dir.path()).pop().unwrap();
        let read = read_segment((1, segment), &key(dir.path()), true, None, &mut entries).unwrap();
        assert_eq!(
            entries.keys().copied().collect::<Vec<_>>(),
            (1..=52).collect::<Vec<_>>()
        );
        let offsets: Vec<u64> = read.offsets.values().copied().collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "the segment holds the entries out of order"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_torn_tail_is_cut_and_everything_before_it_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path()).unwrap();
        append(&mut log, 1..=10).await;
        drop(log);
        // A crash mid-write: half a record at the end.
        let segment = segments(dir.path()).pop().unwrap();
        let whole = fs::metadata(&segment).unwrap().len();
        let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
        file.write_all(&record(&entry(11), &key(dir.path())).unwrap()[..20])
            .unwrap();
        drop(file);
        let mut log = open(dir.path()).unwrap();
        assert_eq!(indices(&mut log).await, (1..=10).collect::<Vec<_>>());
        assert_eq!(fs::metadata(&segment).unwrap().len(), whole);
        // And the log goes on from there.
        append(&mut log, 11..=12).await;
        drop(log);
        let mut log = open(dir.path()).unwrap();
        assert_eq!(indices(&mut log).await, (1..=12).collect::<Vec<_>>());
    }

    /// The last segment has room allocated ahead of its records while the log is open, and
    /// ends where its records do once it is closed; room a crash left behind, in the last
    /// segment or in one closed before the crash, reads as no record.
    #[tokio::test(flavor = "multi_thread")]
    async fn room_allocated_ahead_is_cut_when_closed_and_read_as_nothing_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path()).unwrap();
        append(&mut log, 1..=3).await;
        let segment = segments(dir.path()).pop().unwrap();
        let records: usize = (1..=3)
            .map(|i| record(&entry(i), &key(dir.path())).unwrap().len())
            .sum();
        assert_eq!(fs::metadata(&segment).unwrap().len(), PREALLOCATE);
        drop(log);
        assert_eq!(fs::metadata(&segment).unwrap().len(), records as u64);
        // A crash with room left in a segment that is no longer the last.
        let mut bytes = fs::read(&segment).unwrap();
        bytes.extend_from_slice(&[0; 8192]);
        fs::write(&segment, &bytes).unwrap();
        fs::write(
            segment_path(&dir.path().join("log"), 4),
            record(&entry(4), &key(dir.path())).unwrap(),
        )
        .unwrap();
        let mut log = open(dir.path()).unwrap();
        assert_eq!(indices(&mut log).await, vec![1, 2, 3, 4]);
        append(&mut log, 5..=6).await;
        drop(log);
        let mut log = open(dir.path()).unwrap();
        assert_eq!(indices(&mut log).await, vec![1, 2, 3, 4, 5, 6]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_flipped_bit_before_the_tail_is_an_error_not_a_silent_loss() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path()).unwrap();
        append(&mut log, 1..=3).await;
        drop(log);
        // Roll a second segment by hand so the damaged one is not the last.
        let first = segments(dir.path()).pop().unwrap();
        fs::write(
            segment_path(&dir.path().join("log"), 4),
            record(&entry(4), &key(dir.path())).unwrap(),
        )
        .unwrap();
        let mut bytes = fs::read(&first).unwrap();
        bytes[HEADER + 3] ^= 0x40;
        fs::write(&first, bytes).unwrap();
        let e = open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("is corrupt at byte 0"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_damaged_record_in_the_last_segment_with_records_after_it_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path()).unwrap();
        append(&mut log, 1..=5).await;
        drop(log);
        let segment = segments(dir.path()).pop().unwrap();
        let before = fs::read(&segment).unwrap();
        let mut bytes = before.clone();
        // Entry 2's payload: a flipped bit with entries 3 to 5 whole after it.
        let second = record(&entry(1), &key(dir.path())).unwrap().len();
        bytes[second + HEADER + 2] ^= 0x01;
        fs::write(&segment, &bytes).unwrap();
        let e = open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("is corrupt at byte"), "{e}");
        // Nothing was cut: the file is as the damage left it.
        assert_eq!(fs::read(&segment).unwrap(), bytes);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_damaged_final_record_and_a_zeroed_tail_are_torn_tails() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path()).unwrap();
        append(&mut log, 1..=3).await;
        drop(log);
        let segment = segments(dir.path()).pop().unwrap();
        let whole = fs::read(&segment).unwrap();
        // A whole-length last record whose bytes did not all reach the disk.
        let mut damaged = whole.clone();
        let n = damaged.len();
        damaged[n - 2] ^= 0xff;
        fs::write(&segment, &damaged).unwrap();
        let mut log = open(dir.path()).unwrap();
        assert_eq!(indices(&mut log).await, vec![1, 2]);
        drop(log);
        // Zeros past the last record (a file system extended the file before the crash).
        let mut zeroed = fs::read(&segment).unwrap();
        zeroed.extend_from_slice(&[0; 4096]);
        fs::write(&segment, &zeroed).unwrap();
        let mut log = open(dir.path()).unwrap();
        assert_eq!(indices(&mut log).await, vec![1, 2]);
        drop(log);
        // A damaged last record with the room allocated ahead after it (a power cut while
        // the log was open): a torn tail too.
        let mut room = fs::read(&segment).unwrap();
        let n = room.len();
        room[n - 2] ^= 0xff;
        room.extend_from_slice(&[0; 8192]);
        fs::write(&segment, &room).unwrap();
        let mut log = open(dir.path()).unwrap();
        assert_eq!(indices(&mut log).await, vec![1]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn truncation_and_purging_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path()).unwrap();
        append(&mut log, 1..=20).await;
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 15))
            .await
            .unwrap();
        append(&mut log, 15..=16).await;
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 5))
            .await
            .unwrap();
        drop(log);
        let mut log = open(dir.path()).unwrap();
        assert_eq!(indices(&mut log).await, (6..=16).collect::<Vec<_>>());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(5));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(16));
        // Purging everything removes the segment files; the log goes on after the purge point.
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 16))
            .await
            .unwrap();
        assert!(
            segments(dir.path()).is_empty(),
            "{:?}",
            segments(dir.path())
        );
        append(&mut log, 17..=17).await;
        drop(log);
        let mut log = open(dir.path()).unwrap();
        assert_eq!(indices(&mut log).await, vec![17]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_committed_hint_never_runs_past_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path()).unwrap();
        append(&mut log, 1..=10).await;
        // A follower notes a commit index whose entries were not flushed when it crashed.
        log.save_committed(Some(LogId::new(CommittedLeaderId::new(1, 1), 50)))
            .await
            .unwrap();
        drop(log);
        let mut log = open(dir.path()).unwrap();
        assert_eq!(
            log.read_committed().await.unwrap().map(|l| l.index),
            Some(10)
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_vote_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path()).unwrap();
        let vote = Vote::new(3, 7);
        log.save_vote(&vote).await.unwrap();
        drop(log);
        let mut log = open(dir.path()).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    }
}
