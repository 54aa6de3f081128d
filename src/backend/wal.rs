//! The embedded store's write-ahead log: what makes an append durable with one sequential write and
//! one `fdatasync`, as etcd's WAL does, instead of a B-tree commit that writes pages all over the file.
//!
//! The log is one file of [`WAL_BYTES`], filled with zeros when created so that a sync never has
//! to record a new size or newly allocated blocks. Records follow each other from the start:
//!
//! ```text
//! length: u32 LE | crc32c(cycle, payload): u32 LE | cycle: u64 LE | payload
//! ```
//!
//! Each record belongs to a cycle, a random number. The store records the current cycle in its own
//! durable state, and starts a new one (writing again from the start of the file) only in a
//! durable commit of the store that has taken in every record of the old one. Reading stops at
//! the first record that is not whole, not of the current cycle, or not intact: what lies beyond
//! was written in an earlier cycle, or is the torn end of an append that was never acknowledged.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Size of the log file. Appends that would pass its end first start a new cycle.
const WAL_BYTES: u64 = 64 << 20;

const HEADER: usize = 16;

pub struct Wal {
    file: File,
    /// Where the next record goes.
    offset: u64,
    cycle: u64,
    /// Whether an append waits for its record to reach the disk (etcd's `--unsafe-no-fsync` turns
    /// it off).
    fsync: bool,
}

impl Wal {
    /// Opens the log at `path`, creating it if needed, and reads the payloads of `cycle`'s records
    /// in order. Appends then go after the last of them.
    pub fn open(path: &Path, cycle: u64) -> io::Result<(Wal, Vec<Vec<u8>>)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let length = file.metadata()?.len();
        if length < WAL_BYTES {
            // Zeros read as the end of the log. A fill cut short by a crash is finished here.
            let zeros = vec![0u8; 1 << 20];
            let mut at = length;
            while at < WAL_BYTES {
                let n = zeros.len().min((WAL_BYTES - at) as usize);
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        let mut records = Vec::new();
        let mut offset = 0u64;
        let mut header = [0u8; HEADER];
        while offset + HEADER as u64 <= WAL_BYTES {
            file.read_exact_at(&mut header, offset)?;
            let length = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as u64;
            let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
            let stored_cycle = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
            let end = offset + HEADER as u64 + length;
            if length == 0 || end > WAL_BYTES || stored_cycle != cycle {
                break;
            }
            let mut payload = vec![0u8; length as usize];
            file.read_exact_at(&mut payload, offset + HEADER as u64)?;
            if checksum(cycle, &payload) != crc {
                break;
            }
            records.push(payload);
            offset = end;
        }
        Ok((
            Wal {
                file,
                offset,
                cycle,
                fsync: true,
            },
            records,
        ))
    }

    /// Appends from now on leave their records to the operating system to write out, unsynced: a
    /// power cut or a crash of the machine may lose acknowledged writes.
    pub fn skip_fsync(&mut self) {
        self.fsync = false;
    }

    /// Whether a record of `payload` fits in the current cycle.
    pub fn fits(&self, payload: &[u8]) -> bool {
        self.offset + (HEADER + payload.len()) as u64 <= WAL_BYTES
    }

    /// Writes a record and syncs it (unless told not to): durable when this returns Ok. The caller has checked that it
    /// [`fits`](Wal::fits).
    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        let mut record = Vec::with_capacity(HEADER + payload.len());
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&checksum(self.cycle, payload).to_le_bytes());
        record.extend_from_slice(&self.cycle.to_le_bytes());
        record.extend_from_slice(payload);
        self.file.write_all_at(&record, self.offset)?;
        if self.fsync {
            let start = std::time::Instant::now();
            self.file.sync_data()?;
            crate::metrics::WAL_SYNCS.observe(start.elapsed().as_secs_f64());
        }
        self.offset += record.len() as u64;
        Ok(())
    }

    /// Starts cycle `cycle` at the start of the file. Only once the store has durably taken in
    /// every record of the current cycle and recorded `cycle` as the new one.
    pub fn restart(&mut self, cycle: u64) {
        self.cycle = cycle;
        self.offset = 0;
    }
}

fn checksum(cycle: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&cycle.to_le_bytes()), payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_until_another_cycle_or_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, records) = Wal::open(&path, 7).unwrap();
        assert!(records.is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), WAL_BYTES);
        for r in [&b"one"[..], b"two", b"three"] {
            wal.append(r).unwrap();
        }
        drop(wal);
        let (mut wal, records) = Wal::open(&path, 7).unwrap();
        assert_eq!(
            records,
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        // Another cycle over the start: its records only, the old ones beyond are not read.
        wal.restart(8);
        wal.append(b"four").unwrap();
        drop(wal);
        let (_, records) = Wal::open(&path, 8).unwrap();
        assert_eq!(records, vec![b"four".to_vec()]);
        let (_, records) = Wal::open(&path, 7).unwrap();
        assert!(records.is_empty());
        // A damaged byte ends the log at the record it is in.
        let (mut wal, _) = Wal::open(&path, 8).unwrap();
        wal.append(b"five").unwrap();
        drop(wal);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"X", (HEADER + 4 + HEADER) as u64)
            .unwrap();
        let (wal, records) = Wal::open(&path, 8).unwrap();
        assert_eq!(records, vec![b"four".to_vec()]);
        // Appends go after the last intact record, over the damaged one.
        assert_eq!(wal.offset, (HEADER + 4) as u64);
    }

    #[test]
    fn a_short_file_is_filled_and_keeps_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, _) = Wal::open(&path, 1).unwrap();
        wal.append(b"kept").unwrap();
        drop(wal);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(1000).unwrap();
        let (wal, records) = Wal::open(&path, 1).unwrap();
        assert_eq!(records, vec![b"kept".to_vec()]);
        assert!(wal.fits(&vec![0; 1 << 20]));
        assert!(!wal.fits(&vec![0; WAL_BYTES as usize]));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), WAL_BYTES);
    }
}
