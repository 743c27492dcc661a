//! The embedded store's write-ahead log.
//!
//! Every group commit appends one frame of physical row changes (put or
//! delete, table, key, value) and syncs it; redb then commits the same
//! changes without a sync, and is made durable in the background at a
//! checkpoint, after which the log starts over. A sync of a few sequential
//! pages costs far less than a copy-on-write B-tree commit, which rewrites a
//! leaf and its branches in every table touched.
//!
//! The file is written with zeros once and reused: appending into blocks the
//! file already owns means a sync writes data pages only, never metadata.
//! Each start-over bumps a generation number kept in the header; frames carry
//! it, so frames of an older generation left behind in the file end the
//! replay just like a torn frame does.
//!
//! Replaying changes is idempotent: every record sets a row to a value or
//! removes it, so replaying a log whose changes already reached redb (a crash
//! between a checkpoint and the log's start-over) yields the same rows.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"KILNWAL1";
const HEADER_LEN: u64 = 16;
/// Frame header: length of payload, CRC-32 of generation + payload, generation.
const FRAME_HEADER_LEN: usize = 16;
pub const DEFAULT_SIZE: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("write-ahead log {0}: not a Kiln log (bad header)")]
    BadHeader(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TableId {
    Messages = 1,
    Queue = 2,
    Pending = 3,
    Status = 4,
    Kv = 5,
    Expires = 6,
}

impl TableId {
    fn from_u8(b: u8) -> Option<TableId> {
        Some(match b {
            1 => TableId::Messages,
            2 => TableId::Queue,
            3 => TableId::Pending,
            4 => TableId::Status,
            5 => TableId::Kv,
            6 => TableId::Expires,
            _ => return None,
        })
    }
}

/// One physical change, as read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put {
        table: TableId,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Remove {
        table: TableId,
        key: Vec<u8>,
    },
}

/// Appends changes to a frame payload being built.
pub fn record_put(frame: &mut Vec<u8>, table: TableId, key: &[u8], value: &[u8]) {
    frame.push(b'p');
    frame.push(table as u8);
    frame.extend_from_slice(&(key.len() as u32).to_le_bytes());
    frame.extend_from_slice(key);
    frame.extend_from_slice(&(value.len() as u32).to_le_bytes());
    frame.extend_from_slice(value);
}

pub fn record_remove(frame: &mut Vec<u8>, table: TableId, key: &[u8]) {
    frame.push(b'r');
    frame.push(table as u8);
    frame.extend_from_slice(&(key.len() as u32).to_le_bytes());
    frame.extend_from_slice(key);
}

fn crc(generation: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&generation.to_le_bytes());
    h.update(payload);
    h.finalize()
}

pub struct Wal {
    file: File,
    path: PathBuf,
    generation: u64,
    /// Where the next frame goes.
    position: u64,
    /// Where the last frame appended starts (until the log starts over).
    last_frame_at: Option<u64>,
    size: u64,
}

impl Wal {
    /// Opens (or creates) the log and returns it with the changes of its
    /// current generation, in order, for the caller to replay.
    pub fn open(path: &Path, size: u64) -> Result<(Wal, Vec<Change>), WalError> {
        let io = |source| WalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < HEADER_LEN {
            let mut wal = Wal {
                file,
                path: path.to_path_buf(),
                generation: 1,
                position: HEADER_LEN,
                last_frame_at: None,
                size: size.max(HEADER_LEN),
            };
            wal.preallocate().map_err(io)?;
            return Ok((wal, Vec::new()));
        }
        let mut contents = Vec::with_capacity(len as usize);
        file.read_to_end(&mut contents).map_err(io)?;
        let Some(Replay {
            generation,
            changes,
            used,
        }) = replay(&contents)
        else {
            return Err(WalError::BadHeader(path.to_path_buf()));
        };
        Ok((
            Wal {
                file,
                path: path.to_path_buf(),
                generation,
                position: HEADER_LEN + used as u64,
                last_frame_at: None,
                size: len,
            },
            changes,
        ))
    }

    fn io_err(&self, source: std::io::Error) -> WalError {
        WalError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Writes the header and zeros over the whole file, once.
    fn preallocate(&mut self) -> std::io::Result<()> {
        let zeros = vec![0u8; 1 << 20];
        self.file.seek(SeekFrom::Start(HEADER_LEN))?;
        let mut left = self.size - HEADER_LEN;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            self.file.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        self.write_header()?;
        self.file.sync_all()?;
        if let Some(dir) = self.path.parent() {
            // The new file's name must survive a crash too.
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    fn write_header(&mut self) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&header(self.generation))
    }

    /// Bytes of frames since the last start-over.
    pub fn used(&self) -> u64 {
        self.position - HEADER_LEN
    }

    /// True when a frame of `payload_len` bytes no longer fits in the file.
    pub fn is_full_for(&self, payload_len: usize) -> bool {
        self.position + (FRAME_HEADER_LEN + payload_len) as u64 > self.size
    }

    /// Appends one frame and syncs it: durable on return.
    pub fn append(&mut self, payload: &[u8]) -> Result<(), WalError> {
        if payload.is_empty() {
            return Ok(());
        }
        let frame = frame(self.generation, payload);
        let result = (|| {
            self.file.seek(SeekFrom::Start(self.position))?;
            self.file.write_all(&frame)?;
            self.file.sync_data()
        })();
        result.map_err(|e| self.io_err(e))?;
        self.last_frame_at = Some(self.position);
        self.position += frame.len() as u64;
        if self.position > self.size {
            self.size = self.position;
        }
        Ok(())
    }

    /// Takes back the last frame appended (its changes did not reach the
    /// store, and whoever asked was told so): its header is zeroed, which
    /// ends a replay there, as a torn frame does.
    pub fn retract_last(&mut self) -> Result<(), WalError> {
        let Some(start) = self.last_frame_at.take() else {
            return Ok(());
        };
        let result = (|| {
            self.file.seek(SeekFrom::Start(start))?;
            self.file.write_all(&[0u8; FRAME_HEADER_LEN])?;
            self.file.sync_data()
        })();
        result.map_err(|e| self.io_err(e))?;
        self.position = start;
        Ok(())
    }

    /// Starts over after a checkpoint: everything logged so far is durable
    /// elsewhere. A crash before this is synced only means a harmless replay.
    pub fn start_over(&mut self) -> Result<(), WalError> {
        self.generation += 1;
        let result = (|| {
            self.write_header()?;
            self.file.sync_data()
        })();
        result.map_err(|e| self.io_err(e))?;
        self.position = HEADER_LEN;
        self.last_frame_at = None;
        Ok(())
    }
}

/// A frame as `append` writes it.
pub fn frame(generation: u64, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc(generation, payload).to_le_bytes());
    frame.extend_from_slice(&generation.to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The header of a log of `generation`, as written at its start.
pub fn header(generation: u64) -> [u8; HEADER_LEN as usize] {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..].copy_from_slice(&generation.to_le_bytes());
    header
}

/// What a log file's bytes hold.
#[derive(Debug, PartialEq, Eq)]
pub struct Replay {
    pub generation: u64,
    /// The changes of the current generation's intact frames, in order.
    pub changes: Vec<Change>,
    /// The bytes those frames take after the header.
    pub used: usize,
}

/// Reads a whole log file; None when it is not a Kiln log. No I/O, so the
/// fuzzer drives it too.
pub fn replay(contents: &[u8]) -> Option<Replay> {
    let head = contents.get(..HEADER_LEN as usize)?;
    if &head[..8] != MAGIC {
        return None;
    }
    let generation = u64::from_le_bytes(head[8..16].try_into().ok()?);
    let (changes, used) = parse_frames(&contents[HEADER_LEN as usize..], generation);
    Some(Replay {
        generation,
        changes,
        used,
    })
}

/// The changes of every intact frame of `generation`, and the bytes they
/// take; stops at the first torn, corrupt or older frame.
fn parse_frames(mut data: &[u8], generation: u64) -> (Vec<Change>, usize) {
    let mut changes = Vec::new();
    let mut used = 0;
    while data.len() >= FRAME_HEADER_LEN {
        let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let sum = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
        let frame_gen = u64::from_le_bytes(data[8..16].try_into().unwrap_or_default());
        if len == 0 || frame_gen != generation || data.len() < FRAME_HEADER_LEN + len {
            break;
        }
        let payload = &data[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len];
        if crc(generation, payload) != sum {
            break;
        }
        let Some(parsed) = parse_payload(payload) else {
            break;
        };
        changes.extend(parsed);
        used += FRAME_HEADER_LEN + len;
        data = &data[FRAME_HEADER_LEN + len..];
    }
    (changes, used)
}

fn parse_payload(mut p: &[u8]) -> Option<Vec<Change>> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if p.len() < n {
            return None;
        }
        let (head, rest) = p.split_at(n);
        *p = rest;
        Some(head)
    }
    fn take_bytes(p: &mut &[u8]) -> Option<Vec<u8>> {
        let len = u32::from_le_bytes(take(p, 4)?.try_into().ok()?) as usize;
        Some(take(p, len)?.to_vec())
    }
    let mut out = Vec::new();
    while !p.is_empty() {
        let kind = take(&mut p, 1)?[0];
        let table = TableId::from_u8(take(&mut p, 1)?[0])?;
        let key = take_bytes(&mut p)?;
        out.push(match kind {
            b'p' => Change::Put {
                table,
                key,
                value: take_bytes(&mut p)?,
            },
            b'r' => Change::Remove { table, key },
            _ => return None,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(changes: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut f = Vec::new();
        for (k, v) in changes {
            match v {
                Some(v) => record_put(&mut f, TableId::Kv, k.as_bytes(), v.as_bytes()),
                None => record_remove(&mut f, TableId::Kv, k.as_bytes()),
            }
        }
        f
    }

    #[test]
    fn a_retracted_frame_is_not_replayed_and_its_place_is_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kiln.wal");
        {
            let (mut wal, _) = Wal::open(&path, 1 << 16).expect("open");
            wal.append(&frame_of(&[("a", Some("1"))])).expect("append");
            wal.append(&frame_of(&[("b", Some("2"))])).expect("append");
            wal.retract_last().expect("retract");
            wal.retract_last().expect("only the last one can be");
        }
        let (mut wal, changes) = Wal::open(&path, 1 << 16).expect("reopen");
        assert_eq!(changes, vec![put("a", "1")]);
        wal.append(&frame_of(&[("c", Some("3"))])).expect("append");
        drop(wal);
        let (_, changes) = Wal::open(&path, 1 << 16).expect("reopen");
        assert_eq!(changes, vec![put("a", "1"), put("c", "3")]);
    }

    fn put(k: &str, v: &str) -> Change {
        Change::Put {
            table: TableId::Kv,
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
        }
    }

    #[test]
    fn replays_frames_of_the_current_generation_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kiln.wal");
        {
            let (mut wal, changes) = Wal::open(&path, 1 << 16).expect("open");
            assert!(changes.is_empty());
            wal.append(&frame_of(&[("a", Some("1")), ("b", Some("2"))]))
                .expect("append");
            wal.append(&frame_of(&[("a", None)])).expect("append");
        }
        let (mut wal, changes) = Wal::open(&path, 1 << 16).expect("reopen");
        assert_eq!(changes.len(), 3);
        assert_eq!(
            changes[2],
            Change::Remove {
                table: TableId::Kv,
                key: b"a".to_vec()
            }
        );
        // After a start-over, the old frames still in the file are ignored
        // and new frames overwrite them from the start.
        wal.start_over().expect("start over");
        wal.append(&frame_of(&[("c", Some("3"))])).expect("append");
        drop(wal);
        let (_, changes) = Wal::open(&path, 1 << 16).expect("reopen");
        assert_eq!(
            changes,
            vec![Change::Put {
                table: TableId::Kv,
                key: b"c".to_vec(),
                value: b"3".to_vec()
            }]
        );
    }

    #[test]
    fn a_torn_or_corrupt_tail_ends_the_replay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kiln.wal");
        {
            let (mut wal, _) = Wal::open(&path, 1 << 16).expect("open");
            wal.append(&frame_of(&[("a", Some("1"))])).expect("append");
            wal.append(&frame_of(&[("b", Some("2"))])).expect("append");
        }
        // Flip a byte of the second frame's payload.
        let mut bytes = std::fs::read(&path).expect("read");
        let second = HEADER_LEN as usize + FRAME_HEADER_LEN + frame_of(&[("a", Some("1"))]).len();
        bytes[second + FRAME_HEADER_LEN + 3] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let (mut wal, changes) = Wal::open(&path, 1 << 16).expect("reopen");
        assert_eq!(changes.len(), 1, "only the intact first frame");
        // The next append goes right after the last intact frame.
        wal.append(&frame_of(&[("c", Some("3"))])).expect("append");
        drop(wal);
        let (_, changes) = Wal::open(&path, 1 << 16).expect("reopen");
        assert_eq!(changes.len(), 2);
    }

    #[test]
    fn a_frame_larger_than_the_file_grows_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kiln.wal");
        let big = "x".repeat(100_000);
        {
            let (mut wal, _) = Wal::open(&path, 4096).expect("open");
            assert!(wal.is_full_for(big.len()));
            wal.append(&frame_of(&[("big", Some(&big))]))
                .expect("append");
        }
        let (_, changes) = Wal::open(&path, 4096).expect("reopen");
        assert_eq!(changes.len(), 1);
    }
}
