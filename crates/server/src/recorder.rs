//! Recording (`--data-dir`): every space a source of this node feeds is recorded while live,
//! as its LL-HLS segments, so that its replay can be served after it ends, also after a
//! restart or a crash.
//!
//! On disk, per space, `{data-dir}/{id}/`: `init.mp4` (the init segment), `meta.json` (title
//! and times) and `segments.lvr`, the segments appended one record each
//! ([`levee_core::recording`]), each record flushed to the disk (`fdatasync`) before the next,
//! so a crash loses at most the segment being written. At start, every recording is scanned and
//! a torn or damaged tail is cut off (counted, logged with its reason); recordings older than
//! `--retention` are deleted. All recordings together take at most `--max-recording-bytes`:
//! beyond, a segment is not written (counted and logged once per space), and the live
//! broadcast goes on. A disk error stops that space's recording, never its broadcast.
//!
//! The recorder reads the track through a bounded tap ([`RECORD_TAP`] packets): if it falls
//! that far behind, what it lost is counted and the recording has a gap.

use crate::config::RecordConfig;
pub use crate::counters::RecordCounters;
use crate::hub::{Hub, RecordLink, Space};
use levee_core::hls::Hls;
use levee_core::packet::TapRead;
use levee_core::recording;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Packets queued between a track and its recorder (60 s of 20-ms packets).
pub const RECORD_TAP: usize = 3_000;
/// The file of a recording's segments.
pub const SEGMENTS_FILE: &str = "segments.lvr";
/// The init segment's file.
pub const INIT_FILE: &str = "init.mp4";
/// A recording's final audience numbers (`docs/audience.md`), written once its space ended
/// and its listeners left.
pub const AUDIENCE_FILE: &str = "audience.json";
/// Largest audience file read back.
pub const MAX_AUDIENCE_FILE: u64 = 64 * 1024;
/// How often recordings past `--retention` are looked for while running.
pub const SWEEP_EVERY: Duration = Duration::from_secs(3_600);

/// This node's recorder.
pub struct Recorder {
    dir: PathBuf,
    max_bytes: u64,
    used: AtomicU64,
    recording: Mutex<HashSet<String>>,
    /// Counters.
    pub counters: RecordCounters,
}

fn file_len(p: &Path) -> u64 {
    fs::metadata(p).map_or(0, |m| m.len())
}

impl Recorder {
    /// Opens `cfg.dir` (creating it): deletes what is older than the retention, cuts torn
    /// tails, counts the bytes held. The error says what failed.
    pub fn open(cfg: &RecordConfig, dir: &Path) -> Result<Arc<Recorder>, String> {
        fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create --data-dir {}: {e}", dir.display()))?;
        let r = Recorder {
            dir: dir.to_owned(),
            max_bytes: cfg.max_bytes,
            used: AtomicU64::new(0),
            recording: Mutex::new(HashSet::new()),
            counters: RecordCounters::default(),
        };
        let used = r.sweep(cfg.retention, true)?;
        r.used.store(used, Relaxed);
        Ok(Arc::new(r))
    }

    /// Walks the recordings: deletes those older than `retention` (not one being written),
    /// cuts torn tails (with `repair`, at start only: later the writers own their files) and
    /// returns the bytes held.
    fn sweep(&self, retention: Duration, repair: bool) -> Result<u64, String> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| format!("cannot read --data-dir {}: {e}", self.dir.display()))?;
        let mut used = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(id) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !path.is_dir() || !levee_core::space::is_valid_id(id) {
                continue;
            }
            let segments = path.join(SEGMENTS_FILE);
            let age = fs::metadata(&segments)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok());
            let writing = self.recording.lock().expect("recording lock").contains(id);
            if !writing && age.is_some_and(|a| a > retention) {
                match fs::remove_dir_all(&path) {
                    Ok(()) => {
                        self.counters.expired.fetch_add(1, Relaxed);
                        tracing::info!(space = %id, "recording older than --retention deleted");
                    }
                    Err(e) => {
                        tracing::warn!(space = %id, "cannot delete an expired recording: {e}")
                    }
                }
                continue;
            }
            if repair {
                if let Err(e) = self.repair(&segments) {
                    tracing::warn!(space = %id, "recording not checked: {e}");
                }
            }
            used += file_len(&segments) + file_len(&path.join(INIT_FILE));
        }
        Ok(used)
    }

    /// Deletes space `id`'s recording (its host asked); `Err` says why not.
    pub fn delete(&self, id: &str) -> Result<(), String> {
        if self.recording.lock().expect("recording lock").contains(id) {
            return Err("the space is being recorded".into());
        }
        let dir = self.space_dir(id);
        let bytes = file_len(&dir.join(SEGMENTS_FILE)) + file_len(&dir.join(INIT_FILE));
        fs::remove_dir_all(&dir).map_err(|e| format!("cannot delete the recording: {e}"))?;
        let _ = self
            .used
            .fetch_update(Relaxed, Relaxed, |u| Some(u.saturating_sub(bytes)));
        Ok(())
    }

    /// Cuts a torn or damaged tail off a recording file.
    fn repair(&self, segments: &Path) -> std::io::Result<()> {
        if !segments.exists() {
            return Ok(());
        }
        let len = file_len(segments);
        let scan = scan_file(segments)?;
        if let Some(why) = scan.torn {
            tracing::warn!(
                file = %segments.display(),
                "recording: {why}; cut at byte {} of {len}, {} whole segments kept",
                scan.valid_len,
                scan.entries.len()
            );
            OpenOptions::new()
                .write(true)
                .open(segments)?
                .set_len(scan.valid_len)?;
            self.counters.torn_cut.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    /// The directory of space `id`'s recording (`id` is a valid space id).
    pub fn space_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Bytes the recordings take now.
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Relaxed)
    }
}

impl RecordLink for Arc<Recorder> {
    fn record(&self, space: &Arc<Space>) {
        let id = space.snapshot().id;
        if !self
            .recording
            .lock()
            .expect("recording lock")
            .insert(id.clone())
        {
            return;
        }
        // Taken now, before the source's first packet is published: nothing of it is missed.
        let tap = space.track.tap(RECORD_TAP);
        tokio::spawn(record(self.clone(), space.clone(), id, tap));
    }
    fn counters(&self) -> &RecordCounters {
        &self.as_ref().counters
    }
    fn used_bytes(&self) -> u64 {
        self.as_ref().used_bytes()
    }
    fn delete(&self, id: &str) -> Result<(), String> {
        self.as_ref().delete(id)
    }
    fn writing(&self, id: &str) -> bool {
        self.recording.lock().expect("recording lock").contains(id)
    }
    fn keep_audience(&self, id: &str, json: &str) -> Result<bool, String> {
        let dir = self.space_dir(id);
        if !dir.join(SEGMENTS_FILE).is_file() {
            return Ok(false);
        }
        // Written whole or not at all: a temporary file, flushed, then renamed.
        let tmp = dir.join(format!("{AUDIENCE_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(json.as_bytes())?;
            f.sync_data()?;
            fs::rename(&tmp, dir.join(AUDIENCE_FILE))
        };
        write().map(|()| true).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("{}: {e}", dir.join(AUDIENCE_FILE).display())
        })
    }
    fn kept_audience(&self, id: &str) -> Option<Result<serde_json::Value, String>> {
        let path = self.space_dir(id).join(AUDIENCE_FILE);
        let len = fs::metadata(&path).ok()?.len();
        if len > MAX_AUDIENCE_FILE {
            return Some(Err(format!(
                "{} is {len} bytes, over {MAX_AUDIENCE_FILE}",
                path.display()
            )));
        }
        Some(
            fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                .and_then(|v: serde_json::Value| match v["views"].as_u64() {
                    Some(_) => Ok(v),
                    None => Err("no views in it".into()),
                })
                .map_err(|e| format!("{} is unreadable: {e}", path.display())),
        )
    }
}

/// Starts recording with `cfg` when it names a directory; the hub is told of the recorder.
pub fn start(hub: &Arc<Hub>, cfg: &RecordConfig) -> Result<Option<Arc<Recorder>>, String> {
    let Some(dir) = &cfg.dir else {
        return Ok(None);
    };
    let r = Recorder::open(cfg, dir)?;
    let _ = hub.recorder.set(Box::new(r.clone()));
    // Retention while running: a sweep every SWEEP_EVERY.
    let (sweeper, retention) = (Arc::downgrade(&r), cfg.retention);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        every.tick().await;
        loop {
            every.tick().await;
            let Some(r) = sweeper.upgrade() else { return };
            let _ = tokio::task::spawn_blocking(move || {
                if let Ok(used) = r.sweep(retention, false) {
                    r.used.store(used, Relaxed);
                }
            })
            .await;
        }
    });
    Ok(Some(r))
}

/// The open recording of one space.
struct Writer {
    file: File,
    /// The next segment to write (older ones are already there).
    next_msn: Option<u64>,
    over_quota: bool,
}

fn open_writer(dir: &Path, init: &[u8], meta: &str) -> std::io::Result<Writer> {
    fs::create_dir_all(dir)?;
    for (name, bytes) in [(INIT_FILE, init), ("meta.json", meta.as_bytes())] {
        let tmp = dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, bytes)?;
        fs::rename(&tmp, dir.join(name))?;
    }
    let path = dir.join(SEGMENTS_FILE);
    let scan = if path.exists() {
        scan_file(&path)?
    } else {
        recording::scan(&[])
    };
    let file = OpenOptions::new().create(true).append(true).open(&path)?;
    if scan.torn.is_some() {
        file.set_len(scan.valid_len)?;
    }
    Ok(Writer {
        file,
        next_msn: scan.entries.last().map(|e| e.segment.msn + 1),
        over_quota: false,
    })
}

async fn record(
    rec: Arc<Recorder>,
    space: Arc<Space>,
    id: String,
    tap: Arc<Mutex<levee_core::packet::Tap>>,
) {
    let mut hls = Hls::new(space.track.head());
    let info = space.snapshot();
    let meta = serde_json::json!({
        "id": info.id,
        "title": info.title,
        "created_at": info.created_at,
        "host_key_sha256": levee_core::space::hex(&info.host_key_sha256),
    })
    .to_string();
    let dir = rec.space_dir(&id);
    let init = hls.init();
    let opened = tokio::task::spawn_blocking(move || open_writer(&dir, &init, &meta)).await;
    let mut writer = match opened {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => {
            rec.counters.errors.fetch_add(1, Relaxed);
            tracing::error!(space = %id, "recording not started: {e}");
            rec.recording.lock().expect("recording lock").remove(&id);
            return;
        }
        Err(_) => return,
    };
    loop {
        let tapped = space.track.tapped.notified();
        tokio::pin!(tapped);
        tapped.as_mut().enable();
        loop {
            let read = tap.lock().expect("tap lock").read();
            match read {
                TapRead::Packet(p) => {
                    hls.push(&p);
                }
                TapRead::Lost(n) => {
                    rec.counters.lost_packets.fetch_add(n, Relaxed);
                }
                TapRead::Empty => break,
            }
        }
        let ended = space.track.ended();
        if ended {
            hls.end();
        }
        let due: Vec<_> = hls
            .whole_segments()
            .filter(|m| writer.next_msn.is_none_or(|n| *m >= n))
            .filter_map(|m| hls.whole(m))
            .collect();
        for (bytes, seg) in due {
            writer.next_msn = Some(seg.msn + 1);
            let len = (recording::HEADER + bytes.len()) as u64;
            if rec.used.load(Relaxed) + len > rec.max_bytes {
                rec.counters.refused_quota.fetch_add(1, Relaxed);
                if !writer.over_quota {
                    writer.over_quota = true;
                    tracing::warn!(space = %id, "recording stopped: --max-recording-bytes reached");
                }
                continue;
            }
            let record = recording::encode(&seg, &bytes);
            let file = writer.file;
            let written = tokio::task::spawn_blocking(move || {
                let mut f = file;
                let r = f.write_all(&record).and_then(|_| f.sync_data());
                (f, r)
            })
            .await;
            match written {
                Ok((f, Ok(()))) => {
                    writer.file = f;
                    rec.used.fetch_add(len, Relaxed);
                    rec.counters.segments.fetch_add(1, Relaxed);
                    rec.counters.bytes.fetch_add(len, Relaxed);
                }
                Ok((_, Err(e))) => {
                    rec.counters.errors.fetch_add(1, Relaxed);
                    tracing::error!(space = %id, "recording stopped: {e}");
                    rec.recording.lock().expect("recording lock").remove(&id);
                    return;
                }
                Err(_) => return,
            }
        }
        if ended {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), tapped).await;
    }
    rec.recording.lock().expect("recording lock").remove(&id);
}

/// Scans a recording file one record at a time (at most one segment in memory, whatever the
/// file's length): its whole records, the end of the last one, and why it stopped early.
pub fn scan_file(path: &Path) -> std::io::Result<recording::Scan> {
    use std::os::unix::fs::FileExt;
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let (mut entries, mut at, mut rec) = (Vec::<recording::Entry>::new(), 0u64, Vec::new());
    let torn = loop {
        if at == len {
            break None;
        }
        let mut head = [0u8; recording::HEADER];
        if file.read_exact_at(&mut head, at).is_err() {
            break Some("a record's header is cut short");
        }
        let n = u32::from_be_bytes([head[32], head[33], head[34], head[35]]);
        if n > recording::MAX_SEGMENT_BYTES {
            break Some("a record is longer than a segment may be");
        }
        rec.clear();
        rec.extend_from_slice(&head);
        rec.resize(recording::HEADER + n as usize, 0);
        let data_at = at + recording::HEADER as u64;
        if file
            .read_exact_at(&mut rec[recording::HEADER..], data_at)
            .is_err()
        {
            break Some("a record's bytes are cut short");
        }
        let one = recording::scan(&rec);
        let Some(e) = one.entries.first().filter(|_| one.torn.is_none()) else {
            break one.torn;
        };
        if entries
            .last()
            .is_some_and(|l| l.segment.msn >= e.segment.msn)
        {
            break Some("a record does not follow the one before it");
        }
        entries.push(recording::Entry {
            offset: data_at,
            ..*e
        });
        at += rec.len() as u64;
    };
    Ok(recording::Scan {
        entries,
        valid_len: at,
        torn,
    })
}

/// A recording read back for replay: its entries, and the end of the last whole record.
pub fn read_back(dir: &Path) -> Result<(Vec<recording::Entry>, u64), String> {
    let path = dir.join(SEGMENTS_FILE);
    let scan = scan_file(&path).map_err(|_| "no recording".to_owned())?;
    if let Some(why) = scan.torn {
        tracing::warn!(file = %path.display(), "recording read back up to byte {}: {why}", scan.valid_len);
    }
    Ok((scan.entries, scan.valid_len))
}

/// The bytes of `entry` from `dir`'s recording, checked again against their record's CRC.
pub fn read_segment(dir: &Path, entry: &recording::Entry) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::FileExt;
    let file = File::open(dir.join(SEGMENTS_FILE)).map_err(|e| format!("cannot open: {e}"))?;
    let start = entry.offset - recording::HEADER as u64;
    let mut rec = vec![0u8; recording::HEADER + entry.len as usize];
    file.read_exact_at(&mut rec, start)
        .map_err(|e| format!("cannot read: {e}"))?;
    let scan = recording::scan(&rec);
    match (scan.torn, scan.entries.first()) {
        (None, Some(e)) if e.segment == entry.segment => Ok(rec[recording::HEADER..].to_vec()),
        (why, _) => Err(format!(
            "the segment on disk is damaged: {}",
            why.unwrap_or("it changed")
        )),
    }
}
