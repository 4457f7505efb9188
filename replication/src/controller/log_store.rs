//! The controller quorum's durable side: the metadata log in a directory, on plain
//! `std::fs`.
//!
//! Small, synchronous I/O off the data path: the node thread of a controller voter
//! calls [`MetadataLogStore::persist`] for each [`Step`] before sending its messages;
//! the metadata log is a few records per second. Every error is returned, never
//! swallowed: a node whose persistence failed must stop (Raft's promises rest on what
//! it acknowledged being on disk).
//!
//! The directory:
//! - `entries-<generation>.log`: the entries after the snapshot, appended as frames
//!   `[len u32 LE][crc32 u32 LE][index u64 LE][term u64 LE][data]`, where `len` counts
//!   the bytes after the CRC and the CRC (`crc32fast`) covers them. A frame whose index
//!   is not after the previous one replaces the entries from its index on (Raft
//!   overwrites a conflicting suffix). fsync after each append.
//! - `snapshot.json`: the last [`Snapshot`] and the generation of the entries file
//!   that goes with it.
//! - `hard_state.json`: the last [`HardState`].
//!
//! Both JSON files are written crash-safely: write a new file, fsync it, rename it over
//! the old one, fsync the directory. A snapshot (installed from the leader or our own
//! compaction) writes the remaining entries to a new generation's file first, then the
//! snapshot naming that generation: the rename switches both at once, and the old
//! file is deleted after. Within a step the entries go before the hard state, so a
//! persisted commit index never runs ahead of the persisted log.
//!
//! [`MetadataLogStore::open`] reads it back: a torn last frame (cut short, or a bad CRC
//! on the frame that ends the file, or zeros to the end) is dropped and cut off;
//! any other damage is an error.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::controller::quorum::{HardState, LogEntry, Recovered, Snapshot, Step};

/// Bytes of a frame header: length and CRC.
const FRAME_HEADER_BYTES: usize = 8;
/// Bytes of an entry's index and term, the start of every frame's body.
const ENTRY_HEADER_BYTES: usize = 16;
/// The largest frame body accepted: a proposal plus its header, with room.
const FRAME_BODY_BYTES_MAX: usize = 4 << 20;
const _: () = assert!(
    crate::controller::quorum::PROPOSAL_BYTES_MAX + ENTRY_HEADER_BYTES <= FRAME_BODY_BYTES_MAX
);

const SNAPSHOT_FILE: &str = "snapshot.json";
const HARD_STATE_FILE: &str = "hard_state.json";

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    generation: u64,
    snapshot: Snapshot,
}

/// The metadata log of one controller voter, in its directory. Owned by that voter's
/// node thread.
pub struct MetadataLogStore {
    dir: PathBuf,
    generation: u64,
    file: File,
    /// A copy of the entries after the snapshot, to rewrite them at a snapshot.
    entries: Vec<LogEntry>,
}

impl MetadataLogStore {
    /// Opens (or creates) the log in `dir` and returns what it holds.
    pub fn open(dir: &Path) -> io::Result<(MetadataLogStore, Recovered)> {
        fs::create_dir_all(dir)?;
        let snapshot_file: Option<SnapshotFile> = read_json(&dir.join(SNAPSHOT_FILE))?;
        let hard_state: HardState = read_json(&dir.join(HARD_STATE_FILE))?.unwrap_or_default();
        let generation = snapshot_file.as_ref().map_or(0, |s| s.generation);
        let snapshot = snapshot_file.map(|s| s.snapshot);
        let snap_index = snapshot.as_ref().map_or(0, |s| s.index);
        // Leftovers of an interrupted write or of a generation switch.
        for e in fs::read_dir(dir)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            let stale_entries = name.starts_with("entries-") && name != entries_name(generation);
            if name.ends_with(".tmp") || stale_entries {
                fs::remove_file(dir.join(&name))?;
            }
        }
        let path = dir.join(entries_name(generation));
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (mut entries, good_len) = parse_frames(&bytes, &path)?;
        if good_len < bytes.len() {
            file.set_len(good_len as u64)?;
            file.sync_all()?;
        }
        entries.retain(|e| e.index > snap_index);
        if let Some(first) = entries.first()
            && first.index != snap_index + 1
        {
            return Err(corrupt(
                &path,
                format!(
                    "first entry {}, expected {} (right after the snapshot)",
                    first.index,
                    snap_index + 1
                ),
            ));
        }
        sync_dir(dir)?;
        let recovered = Recovered {
            hard_state,
            snapshot,
            entries: entries.clone(),
        };
        let store = MetadataLogStore {
            dir: dir.to_path_buf(),
            generation,
            file,
            entries,
        };
        Ok((store, recovered))
    }

    /// Persists a step (snapshot, entries, compaction, hard state, in that order) and
    /// fsyncs before returning. On error the node must stop.
    pub fn persist(&mut self, step: &Step) -> io::Result<()> {
        if let Some(s) = &step.snapshot {
            self.entries.clear();
            merge(&mut self.entries, &step.entries);
            self.entries.retain(|e| e.index > s.index);
            self.switch_generation(s)?;
        } else if !step.entries.is_empty() {
            let mut buf = Vec::new();
            for e in &step.entries {
                encode_frame(e, &mut buf);
            }
            self.file.write_all(&buf)?;
            self.file.sync_data()?;
            merge(&mut self.entries, &step.entries);
        }
        if let Some(c) = &step.compaction {
            self.entries.retain(|e| e.index > c.index);
            self.switch_generation(c)?;
        }
        if let Some(hs) = &step.hard_state {
            write_atomic(&self.dir, HARD_STATE_FILE, &to_json(hs)?)?;
        }
        Ok(())
    }

    /// The entries held after the snapshot.
    pub fn entries(&self) -> &[LogEntry] {
        &self.entries
    }

    /// Writes the entries kept to a new generation's file, then the snapshot naming it.
    fn switch_generation(&mut self, snapshot: &Snapshot) -> io::Result<()> {
        let next = self.generation + 1;
        let path = self.dir.join(entries_name(next));
        let mut buf = Vec::new();
        for e in &self.entries {
            encode_frame(e, &mut buf);
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        file.set_len(0)?;
        file.write_all(&buf)?;
        file.sync_all()?;
        let record = SnapshotFile {
            generation: next,
            snapshot: snapshot.clone(),
        };
        write_atomic(&self.dir, SNAPSHOT_FILE, &to_json(&record)?)?;
        fs::remove_file(self.dir.join(entries_name(self.generation)))?;
        self.generation = next;
        self.file = file;
        Ok(())
    }
}

fn entries_name(generation: u64) -> String {
    format!("entries-{generation}.log")
}

/// Appends `new` to `entries`, replacing any entry at or after its first index.
fn merge(entries: &mut Vec<LogEntry>, new: &[LogEntry]) {
    if let Some(first) = new.first() {
        entries.retain(|e| e.index < first.index);
        entries.extend_from_slice(new);
    }
}

fn encode_frame(e: &LogEntry, buf: &mut Vec<u8>) {
    let body_len = ENTRY_HEADER_BYTES + e.data.len();
    assert!(
        body_len <= FRAME_BODY_BYTES_MAX,
        "entry larger than a frame"
    );
    let start = buf.len();
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&e.index.to_le_bytes());
    buf.extend_from_slice(&e.term.to_le_bytes());
    buf.extend_from_slice(&e.data);
    let crc = crc32fast::hash(&buf[start + FRAME_HEADER_BYTES..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The entries the frames hold (overwrites applied) and the length of the good
/// prefix; a torn last frame ends the prefix, other damage is an error.
fn parse_frames(bytes: &[u8], path: &Path) -> io::Result<(Vec<LogEntry>, usize)> {
    let mut entries: Vec<LogEntry> = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest.iter().all(|&b| b == 0) || rest.len() < FRAME_HEADER_BYTES {
            break; // torn: nothing or a partial header past the last write
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len > FRAME_BODY_BYTES_MAX {
            return Err(corrupt(
                path,
                format!(
                    "frame at byte {pos} of {len} bytes, expected at most {FRAME_BODY_BYTES_MAX}"
                ),
            ));
        }
        let end = FRAME_HEADER_BYTES + len;
        if end > rest.len() {
            break; // torn: the last frame is cut short
        }
        let body = &rest[FRAME_HEADER_BYTES..end];
        let last = end == rest.len();
        if crc32fast::hash(body) != crc {
            if last {
                break; // torn: the last frame's bytes did not all reach the disk
            }
            return Err(corrupt(path, format!("bad CRC in the frame at byte {pos}")));
        }
        if len < ENTRY_HEADER_BYTES {
            return Err(corrupt(
                path,
                format!(
                    "frame at byte {pos} of {len} bytes, expected at least {ENTRY_HEADER_BYTES}"
                ),
            ));
        }
        let index = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
        let term = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
        if let Some(prev) = entries.last()
            && index > prev.index + 1
        {
            return Err(corrupt(
                path,
                format!(
                    "entry {index} after entry {}, expected at most {}",
                    prev.index,
                    prev.index + 1
                ),
            ));
        }
        let e = LogEntry {
            index,
            term,
            data: body[ENTRY_HEADER_BYTES..].to_vec(),
        };
        merge(&mut entries, std::slice::from_ref(&e));
        pos += end;
    }
    Ok((entries, pos))
}

fn corrupt(path: &Path, what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

fn to_json<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec_pretty(value).map_err(io::Error::other)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| corrupt(path, e.to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Write `name.tmp`, fsync it, rename it to `name`, fsync the directory.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::metadata::ClusterMetadata;

    fn entry(index: u64, term: u64) -> LogEntry {
        LogEntry {
            index,
            term,
            data: format!("[{index}]").into_bytes(),
        }
    }

    fn step(entries: Vec<LogEntry>, commit: u64) -> Step {
        Step {
            entries,
            hard_state: Some(HardState {
                term: 2,
                vote: Some(1),
                commit,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_with_overwrite_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, r) = MetadataLogStore::open(dir.path()).unwrap();
        assert_eq!(r, Recovered::default());
        s.persist(&step((1..=5).map(|i| entry(i, 1)).collect(), 2))
            .unwrap();
        // A new leader replaces 4 and 5.
        s.persist(&step(vec![entry(4, 2)], 3)).unwrap();
        let (_, r) = MetadataLogStore::open(dir.path()).unwrap();
        assert_eq!(
            r.entries
                .iter()
                .map(|e| (e.index, e.term))
                .collect::<Vec<_>>(),
            vec![(1, 1), (2, 1), (3, 1), (4, 2)]
        );
        assert_eq!(r.hard_state.commit, 3);
        let (mut s, _) = MetadataLogStore::open(dir.path()).unwrap();
        let compaction = Snapshot {
            index: 3,
            term: 1,
            voters: vec![0, 1, 2],
            metadata: ClusterMetadata::new(),
        };
        s.persist(&Step {
            compaction: Some(compaction.clone()),
            ..Default::default()
        })
        .unwrap();
        s.persist(&step(vec![entry(5, 2)], 5)).unwrap();
        let (_, r) = MetadataLogStore::open(dir.path()).unwrap();
        assert_eq!(r.snapshot, Some(compaction));
        assert_eq!(r.entries, vec![entry(4, 2), entry(5, 2)]);
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("entries-"))
            .collect();
        assert_eq!(names, vec!["entries-1.log".to_string()]);
    }

    #[test]
    fn installed_snapshot_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = MetadataLogStore::open(dir.path()).unwrap();
        s.persist(&step((1..=3).map(|i| entry(i, 1)).collect(), 1))
            .unwrap();
        let snap = Snapshot {
            index: 10,
            term: 3,
            voters: vec![0],
            metadata: ClusterMetadata::new(),
        };
        s.persist(&Step {
            snapshot: Some(snap.clone()),
            ..Default::default()
        })
        .unwrap();
        let (_, r) = MetadataLogStore::open(dir.path()).unwrap();
        assert_eq!(r.snapshot, Some(snap));
        assert!(r.entries.is_empty());
    }

    #[test]
    fn torn_last_entry_dropped_other_damage_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = MetadataLogStore::open(dir.path()).unwrap();
        s.persist(&step((1..=3).map(|i| entry(i, 1)).collect(), 1))
            .unwrap();
        drop(s);
        let path = dir.path().join("entries-0.log");
        let good = fs::read(&path).unwrap();
        // Cut the last frame short.
        fs::write(&path, &good[..good.len() - 3]).unwrap();
        let (_, r) = MetadataLogStore::open(dir.path()).unwrap();
        assert_eq!(r.entries.len(), 2);
        let frame_bytes = good.len() / 3;
        assert_eq!(
            fs::metadata(&path).unwrap().len() as usize,
            2 * frame_bytes,
            "cut off"
        );
        // A flipped bit in the last frame: torn, dropped.
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        fs::write(&path, &bad).unwrap();
        assert_eq!(
            MetadataLogStore::open(dir.path()).unwrap().1.entries.len(),
            2
        );
        // Zeros past the end: torn.
        let mut zeros = good.clone();
        zeros.extend_from_slice(&[0; 100]);
        fs::write(&path, &zeros).unwrap();
        assert_eq!(
            MetadataLogStore::open(dir.path()).unwrap().1.entries.len(),
            3
        );
        // A flipped bit in the first frame: an error.
        let mut bad = good.clone();
        bad[FRAME_HEADER_BYTES + ENTRY_HEADER_BYTES + 1] ^= 1;
        fs::write(&path, &bad).unwrap();
        let e = MetadataLogStore::open(dir.path()).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("bad CRC"), "{e}");
        // A length beyond any frame in the first frame: an error, not a torn tail.
        let mut bad = good.clone();
        bad[3] = 0x7f;
        fs::write(&path, &bad).unwrap();
        assert!(MetadataLogStore::open(dir.path()).is_err());
        // A damaged hard state file: an error.
        fs::write(&path, &good).unwrap();
        fs::write(dir.path().join(HARD_STATE_FILE), b"{\"term\":").unwrap();
        assert!(MetadataLogStore::open(dir.path()).is_err());
    }
}
