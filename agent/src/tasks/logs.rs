//! Tasks' logs on the node: `<data root>/tasks/logs/<task>/`, one line per line the task wrote
//! (`<RFC 3339 time> <stdout|stderr> <text>`), in `current`, rotated to `previous` at
//! [`FILE_MAX`] (so at most twice that per task), kept after the task ends for the
//! [`KEPT`] most recent tasks.
//!
//! - **exec tasks** write to two FIFOs in that directory, opened read-write for them so that
//!   they never see a closed pipe; `shoald` reads the FIFOs, stamps each line and appends it.
//!   When `shoald` is down, their output waits in the pipe (a task blocks once the pipe is
//!   full) and the restarted daemon takes it from there.
//! - **docker tasks** are logged by the engine while their container exists; the daemon copies
//!   those lines here before it removes the container, so the logs outlive it as exec tasks'.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_api::logs::{LogLine, LogsQuery, Stream};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

/// A log file's size at which it is rotated.
pub(crate) const FILE_MAX: u64 = 4 << 20;
/// Ended tasks whose logs a node keeps.
const KEPT: usize = 64;
/// The longest line kept; longer ones are split.
const LINE_MAX: usize = shoal_control::manager::logs::MAX_LINE;
/// Lines per message to the leader.
const BATCH: usize = shoal_control::manager::logs::MAX_LINES_PER_MESSAGE;
/// How often a followed log file is looked at again.
const POLL: Duration = Duration::from_millis(200);

/// The directory of `task`'s logs.
pub(crate) fn dir_of(tasks_dir: &Path, task: &str) -> PathBuf {
    tasks_dir.join("logs").join(task)
}

/// Appends stamped lines to a task's log, rotating it.
pub(crate) struct Writer {
    dir: PathBuf,
    file: File,
    size: u64,
}

impl Writer {
    /// Opens (or creates) the log of the task whose directory is `dir`.
    pub(crate) fn open(dir: &Path) -> io::Result<Writer> {
        fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("current"))?;
        let size = file.metadata()?.len();
        Ok(Writer {
            dir: dir.to_owned(),
            file,
            size,
        })
    }

    /// Appends one line written at `time` (split if longer than [`LINE_MAX`]).
    pub(crate) fn line(&mut self, time: &str, stream: Stream, text: &str) -> io::Result<()> {
        let text = text.trim_end_matches(['\n', '\r']);
        let mut rest = text;
        loop {
            let mut cut = rest.len().min(LINE_MAX);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (part, tail) = rest.split_at(cut);
            let record = format!("{time} {} {part}\n", stream.name());
            if self.size + record.len() as u64 > FILE_MAX && self.size > 0 {
                self.rotate()?;
            }
            self.file.write_all(record.as_bytes())?;
            self.size += record.len() as u64;
            if tail.is_empty() {
                return Ok(());
            }
            rest = tail;
        }
    }

    /// Appends a line as the engine gives it with timestamps: `<RFC 3339 time> <text>`.
    pub(crate) fn stamped(&mut self, stream: Stream, line: &str) -> io::Result<()> {
        let (time, text) = line.split_once(' ').unwrap_or((line, ""));
        self.line(time, stream, text)
    }

    fn rotate(&mut self) -> io::Result<()> {
        fs::rename(self.dir.join("current"), self.dir.join("previous"))?;
        *self = Writer::open(&self.dir)?;
        Ok(())
    }
}

/// Now, as log lines are stamped.
pub(crate) fn stamp() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Makes the FIFOs an exec task writes to and starts copying them into its log. Returns the
/// task's standard output and error.
pub(crate) fn capture(tasks_dir: &Path, task: &str) -> Result<(File, File), String> {
    let dir = dir_of(tasks_dir, task);
    let fail = |e: io::Error| format!("setting up the task's logs in {}: {e}", dir.display());
    fs::create_dir_all(&dir).map_err(fail)?;
    prune(tasks_dir, task);
    let mut ends = Vec::new();
    for stream in [Stream::Stdout, Stream::Stderr] {
        let fifo = dir.join(stream.name());
        match nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(fail(io::Error::from(e))),
        }
        // Read-write: opening does not wait for a reader, and the task never writes to a pipe
        // without one (it holds one itself).
        let end = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .map_err(fail)?;
        ends.push(end);
    }
    resume(tasks_dir, task)?;
    let stderr = ends.pop().expect("two ends");
    let stdout = ends.pop().expect("two ends");
    Ok((stdout, stderr))
}

/// Starts copying a running exec task's FIFOs into its log (at its start, and when a restarted
/// daemon adopts it). The copies end when the task and all it started are gone.
pub(crate) fn resume(tasks_dir: &Path, task: &str) -> Result<(), String> {
    let dir = dir_of(tasks_dir, task);
    let writer = Writer::open(&dir)
        .map_err(|e| format!("opening the task's log in {}: {e}", dir.display()))?;
    let writer = Arc::new(Mutex::new(writer));
    for stream in [Stream::Stdout, Stream::Stderr] {
        let fifo = dir.join(stream.name());
        let receiver = tokio::net::unix::pipe::OpenOptions::new()
            .open_receiver(&fifo)
            .map_err(|e| format!("opening {}: {e}", fifo.display()))?;
        let writer = writer.clone();
        tokio::spawn(async move {
            // A line longer than LINE_MAX is taken in parts: output without newlines cannot
            // grow the daemon.
            let mut lines =
                tokio::io::AsyncReadExt::take(tokio::io::BufReader::new(receiver), LINE_MAX as u64);
            let mut line = Vec::new();
            loop {
                line.clear();
                lines.set_limit(LINE_MAX as u64);
                match lines.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line);
                        let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
                        if let Err(e) = w.line(&stamp(), stream, &text) {
                            tracing::warn!(error = %e, "writing a task's log");
                        }
                    }
                }
            }
        });
    }
    Ok(())
}

/// Opens a task's log to copy lines into (with [`Writer::stamped`]), making room for it.
pub(crate) fn keeper(tasks_dir: &Path, task: &str) -> io::Result<Writer> {
    prune(tasks_dir, task);
    Writer::open(&dir_of(tasks_dir, task))
}

/// Removes the FIFOs of an exec task that ended: its log can be pruned from now on.
pub(crate) fn ended(tasks_dir: &Path, task: &str) {
    let dir = dir_of(tasks_dir, task);
    for stream in [Stream::Stdout, Stream::Stderr] {
        let _ = fs::remove_file(dir.join(stream.name()));
    }
}

/// Removes the logs of the oldest ended tasks beyond [`KEPT`] (never `keep`'s, nor those of
/// running exec tasks, which still have their FIFOs).
fn prune(tasks_dir: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(tasks_dir.join("logs")) else {
        return;
    };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_name() != keep)
        .filter(|e| !e.path().join(Stream::Stdout.name()).exists())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if dirs.len() < KEPT {
        return;
    }
    dirs.sort();
    for (_, dir) in &dirs[..dirs.len() + 1 - KEPT] {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Whether this node has logs of `task`.
pub(crate) fn has(tasks_dir: &Path, task: &str) -> bool {
    dir_of(tasks_dir, task).join("current").exists()
}

/// A stored line, parsed.
fn parse(task: &str, record: &str) -> Option<LogLine> {
    let mut parts = record.splitn(3, ' ');
    let time = parts.next()?.to_owned();
    let stream = match parts.next()? {
        "stderr" => Stream::Stderr,
        _ => Stream::Stdout,
    };
    Some(LogLine {
        task_id: task.to_owned(),
        time,
        stream,
        text: parts.next().unwrap_or("").to_owned(),
    })
}

/// Whether a line passes `--since`.
pub(crate) fn after(line_time: &str, since: Option<&OffsetDateTime>) -> bool {
    match since {
        None => true,
        Some(since) => OffsetDateTime::parse(line_time, &Rfc3339).is_ok_and(|t| t >= *since),
    }
}

/// `--since` of a query.
pub(crate) fn since_of(query: &LogsQuery) -> Option<OffsetDateTime> {
    query
        .since
        .as_deref()
        .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
}

/// Sends the stored lines of `task` that `query` asks for to `out`, in batches; with
/// `follow`, goes on with new lines until `out` closes. Returns when done. What is stored is
/// read under a permit of `reading`, so that a request for many tasks holds few logs in
/// memory at once.
pub(crate) async fn serve(
    tasks_dir: &Path,
    task: &str,
    query: &LogsQuery,
    out: &mpsc::Sender<Vec<LogLine>>,
    reading: &tokio::sync::Semaphore,
) {
    let dir = dir_of(tasks_dir, task);
    let Ok(permit) = reading.acquire().await else {
        return;
    };
    let since = since_of(query);
    // What is there now: previous, then current up to where it ends.
    let mut lines = Vec::new();
    let previous = fs::read_to_string(dir.join("previous")).unwrap_or_default();
    let Ok(mut current) = File::open(dir.join("current")) else {
        return;
    };
    let mut text = String::new();
    if current.read_to_string(&mut text).is_err() {
        return;
    }
    // Only whole lines: a partial last one is read again when followed.
    let whole = text.rfind('\n').map_or(0, |i| i + 1);
    let mut offset = whole as u64;
    for record in previous.lines().chain(text[..whole].lines()) {
        if let Some(line) = parse(task, record).filter(|l| after(&l.time, since.as_ref())) {
            lines.push(line);
        }
    }
    if let Some(tail) = query.tail {
        let keep = usize::try_from(tail).unwrap_or(usize::MAX);
        lines.drain(..lines.len().saturating_sub(keep));
    }
    for chunk in lines.chunks(BATCH) {
        if out.send(chunk.to_vec()).await.is_err() {
            return;
        }
    }
    drop(lines);
    drop(permit);
    if !query.follow {
        return;
    }
    let Ok(meta) = current.metadata() else { return };
    let mut inode = meta.ino();
    loop {
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = out.closed() => return,
        }
        let Some(mut fresh) = whole_lines_from(&current, &mut offset, task) else {
            return;
        };
        // Rotated: the old file is final once renamed (the writer writes only to the new one),
        // so what it got since it was read above is read now, then the new one from its start.
        let now = fs::metadata(dir.join("current")).map(|m| m.ino()).ok();
        let rotated = now.is_some_and(|n| n != inode);
        if rotated {
            fresh.extend(whole_lines_from(&current, &mut offset, task).unwrap_or_default());
        }
        for chunk in fresh.chunks(BATCH) {
            if out.send(chunk.to_vec()).await.is_err() {
                return;
            }
        }
        if rotated && let Ok(file) = File::open(dir.join("current")) {
            current = file;
            offset = 0;
            inode = now.unwrap_or_default();
        }
    }
}

/// The whole lines of `file` from `offset` on, `offset` moved past them (a partial last line
/// is left to be read again). `None` when the file cannot be read.
fn whole_lines_from(file: &File, offset: &mut u64, task: &str) -> Option<Vec<LogLine>> {
    let mut file = file;
    file.seek(SeekFrom::Start(*offset)).ok()?;
    let mut reader = BufReader::new(file);
    let mut lines = Vec::new();
    let mut record = String::new();
    while reader.read_line(&mut record).unwrap_or(0) > 0 {
        if !record.ends_with('\n') {
            break;
        }
        *offset += record.len() as u64;
        if let Some(line) = parse(task, record.trim_end_matches('\n')) {
            lines.push(line);
        }
        record.clear();
    }
    Some(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_rotates_at_its_bound_and_reads_back_in_order() {
        let dir = std::env::temp_dir().join(format!("shoal-logs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let task_dir = dir_of(&dir, "t1");
        let mut w = Writer::open(&task_dir).unwrap();
        let line = "x".repeat(1000);
        let count = (2 * FILE_MAX / 1000) as usize + 100;
        for i in 0..count {
            w.line(&stamp(), Stream::Stdout, &format!("{i} {line}"))
                .unwrap();
        }
        let size = |f: &str| fs::metadata(task_dir.join(f)).unwrap().len();
        assert!(size("current") <= FILE_MAX && size("previous") <= FILE_MAX);
        // A long line is split, not lost.
        w.line(&stamp(), Stream::Stderr, &"y".repeat(LINE_MAX + 5))
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tx, mut rx) = mpsc::channel(1024);
        let query = LogsQuery {
            tail: Some(3),
            ..Default::default()
        };
        let reading = tokio::sync::Semaphore::new(1);
        rt.block_on(serve(&dir, "t1", &query, &tx, &reading));
        drop(tx);
        let got: Vec<LogLine> = std::iter::from_fn(|| rx.try_recv().ok())
            .flatten()
            .collect();
        assert_eq!(got.len(), 3);
        assert!(got[0].text.starts_with(&format!("{} ", count - 1)));
        assert_eq!(got[1].text.len(), LINE_MAX);
        assert_eq!(
            (got[2].text.as_str(), got[2].stream),
            ("yyyyy", Stream::Stderr)
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
