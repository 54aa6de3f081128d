//! bbolt's file format, which etcd keeps its data in and `etcdctl snapshot` copies: enough to
//! write a database of top-level buckets and to read one back.
//!
//! A file is a sequence of pages of one size. Pages 0 and 1 are meta pages (the newer valid one
//! wins), then the freelist, then B+tree pages: branch pages list `(first key, child page)`, leaf
//! pages list `(key, value)`; a page whose contents do not fit spills into the pages after it
//! (its overflow). The root bucket's leaves name each bucket and where its tree starts:
//!
//! ```text
//! page 0, 1   meta: magic, version 2, page size, root bucket → page 3, freelist → page 2, txid
//! page 2      freelist (empty)
//! page 3      leaf of the root bucket: "key" → {root: 4}, "meta" → {root: 9}
//! page 4      branch of "key": [rev 2 → page 5, rev 90 → page 6, ...]
//! ```
//!
//! Every integer is little-endian, as bbolt writes them on the machines etcd runs on.

use std::collections::{BTreeMap, HashSet};
use std::io::{Seek, SeekFrom, Write};

pub const PAGE_SIZE: usize = 4096;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META: u16 = 0x04;
const FREELIST: u16 = 0x10;
/// A leaf element whose value is a bucket header.
const BUCKET_ELEMENT: u32 = 0x01;
/// A bucket header: the root page and the bucket's sequence.
const BUCKET_HEADER: usize = 16;

/// A bucket's keys and values (written in key order, whatever order they come in).
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Buckets by name.
pub type Buckets = BTreeMap<Vec<u8>, Entries>;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not a bbolt database: {0}")]
    NotBbolt(String),
    #[error("corrupt bbolt database: {0}")]
    Corrupt(String),
}

fn fnv64a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A database being written page by page to `out`, trees in key order. Meta pages are written
/// last, in the space kept for them at the start, so `out` must seek.
pub struct Writer<W: Write + Seek> {
    out: W,
    pages: u64,
}

/// A tree being written, a leaf at a time: its elements come in key order.
pub struct Tree {
    /// The leaf being filled: its elements' bytes and their count.
    leaf: Vec<(Vec<u8>, Vec<u8>, u32)>,
    size: usize,
    /// Each leaf written: its first key and page.
    leaves: Vec<(Vec<u8>, u64)>,
}

/// The body of a leaf page holding `elements`.
fn leaf_body(elements: &[(Vec<u8>, Vec<u8>, u32)]) -> Vec<u8> {
    let mut body = vec![0u8; elements.len() * ELEMENT];
    for (i, (k, v, flags)) in elements.iter().enumerate() {
        let at = i * ELEMENT;
        let pos = body.len() - at;
        body[at..at + 4].copy_from_slice(&flags.to_le_bytes());
        body[at + 4..at + 8].copy_from_slice(&(pos as u32).to_le_bytes());
        body[at + 8..at + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
        body[at + 12..at + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
        body.extend_from_slice(k);
        body.extend_from_slice(v);
    }
    body
}

impl Default for Tree {
    fn default() -> Tree {
        Tree {
            leaf: Vec::new(),
            size: PAGE_HEADER,
            leaves: Vec::new(),
        }
    }
}

impl Tree {
    /// Adds an element after those added before (a larger key); writes the leaf it fills.
    pub fn push<W: Write + Seek>(
        &mut self,
        w: &mut Writer<W>,
        key: &[u8],
        value: &[u8],
        flags: u32,
    ) -> std::io::Result<()> {
        let grown = self.size + ELEMENT + key.len() + value.len();
        if !self.leaf.is_empty() && grown > PAGE_SIZE {
            self.write_leaf(w)?;
        }
        self.size += ELEMENT + key.len() + value.len();
        self.leaf.push((key.to_vec(), value.to_vec(), flags));
        Ok(())
    }

    fn write_leaf<W: Write + Seek>(&mut self, w: &mut Writer<W>) -> std::io::Result<()> {
        let first = self.leaf.first().map(|e| e.0.clone()).unwrap_or_default();
        let id = w.page(LEAF, self.leaf.len(), &leaf_body(&self.leaf))?;
        self.leaves.push((first, id));
        self.leaf.clear();
        self.size = PAGE_HEADER;
        Ok(())
    }

    /// Writes the last leaf and the branches above the leaves; returns the root page.
    pub fn finish<W: Write + Seek>(mut self, w: &mut Writer<W>) -> std::io::Result<u64> {
        if !self.leaf.is_empty() || self.leaves.is_empty() {
            self.write_leaf(w)?;
        }
        let mut level = self.leaves;
        while level.len() > 1 {
            let mut upper = Vec::new();
            for chunk in level.chunks(branch_fanout(&level)) {
                let mut body = vec![0u8; chunk.len() * ELEMENT];
                for (i, (k, child)) in chunk.iter().enumerate() {
                    let at = i * ELEMENT;
                    let pos = body.len() - at;
                    body[at..at + 4].copy_from_slice(&(pos as u32).to_le_bytes());
                    body[at + 4..at + 8].copy_from_slice(&(k.len() as u32).to_le_bytes());
                    body[at + 8..at + 16].copy_from_slice(&child.to_le_bytes());
                    body.extend_from_slice(k);
                }
                upper.push((chunk[0].0.clone(), w.page(BRANCH, chunk.len(), &body)?));
            }
            level = upper;
        }
        Ok(level[0].1)
    }
}

impl<W: Write + Seek> Writer<W> {
    /// Starts a database: room for the two meta pages, then the (empty) freelist.
    pub fn new(mut out: W) -> std::io::Result<Writer<W>> {
        out.write_all(&[0; 2 * PAGE_SIZE])?;
        let mut w = Writer { out, pages: 2 };
        w.page(FREELIST, 0, &[])?;
        Ok(w)
    }

    /// Appends a page (and its overflow) with `body` after the header; returns its id.
    fn page(&mut self, flags: u16, count: usize, body: &[u8]) -> std::io::Result<u64> {
        let id = self.pages;
        let pages = (PAGE_HEADER + body.len()).div_ceil(PAGE_SIZE).max(1);
        let mut header = [0u8; PAGE_HEADER];
        header[0..8].copy_from_slice(&id.to_le_bytes());
        header[8..10].copy_from_slice(&flags.to_le_bytes());
        header[10..12].copy_from_slice(&(count as u16).to_le_bytes());
        header[12..16].copy_from_slice(&((pages - 1) as u32).to_le_bytes());
        self.out.write_all(&header)?;
        self.out.write_all(body)?;
        self.out
            .write_all(&vec![0; pages * PAGE_SIZE - PAGE_HEADER - body.len()])?;
        self.pages += pages as u64;
        Ok(id)
    }

    /// Writes a whole tree of `elements` (in any order); returns its root page.
    pub fn tree(&mut self, elements: &[(Vec<u8>, Vec<u8>)]) -> std::io::Result<u64> {
        let mut sorted: Vec<&(Vec<u8>, Vec<u8>)> = elements.iter().collect();
        sorted.sort_unstable_by_key(|(k, _)| k);
        let mut tree = Tree::default();
        for (k, v) in sorted {
            tree.push(self, k, v, 0)?;
        }
        tree.finish(self)
    }

    /// Ends the database: the root bucket, naming each bucket (name → root page, in any order),
    /// then the meta pages. Returns `out` and the database's length.
    pub fn finish(mut self, buckets: &[(Vec<u8>, u64)]) -> std::io::Result<(W, u64)> {
        let mut sorted: Vec<&(Vec<u8>, u64)> = buckets.iter().collect();
        sorted.sort_unstable_by_key(|(name, _)| name);
        let mut root = Tree::default();
        for (name, page) in sorted {
            let mut header = page.to_le_bytes().to_vec();
            header.extend_from_slice(&0u64.to_le_bytes());
            root.push(&mut self, name, &header, BUCKET_ELEMENT)?;
        }
        let root = root.finish(&mut self)?;
        let high_water = self.pages;
        self.meta(0, root, high_water, 2)?;
        self.meta(1, root, high_water, 1)?;
        self.out
            .seek(SeekFrom::Start(high_water * PAGE_SIZE as u64))?;
        self.out.flush()?;
        Ok((self.out, high_water * PAGE_SIZE as u64))
    }

    fn meta(&mut self, id: u64, root: u64, high_water: u64, txid: u64) -> std::io::Result<()> {
        let mut meta = Vec::with_capacity(64);
        meta.extend_from_slice(&MAGIC.to_le_bytes());
        meta.extend_from_slice(&VERSION.to_le_bytes());
        meta.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        meta.extend_from_slice(&0u32.to_le_bytes());
        meta.extend_from_slice(&root.to_le_bytes());
        meta.extend_from_slice(&0u64.to_le_bytes());
        meta.extend_from_slice(&2u64.to_le_bytes());
        meta.extend_from_slice(&high_water.to_le_bytes());
        meta.extend_from_slice(&txid.to_le_bytes());
        let checksum = fnv64a(&meta);
        meta.extend_from_slice(&checksum.to_le_bytes());
        let mut header = [0u8; PAGE_HEADER];
        header[0..8].copy_from_slice(&id.to_le_bytes());
        header[8..10].copy_from_slice(&META.to_le_bytes());
        self.out.seek(SeekFrom::Start(id * PAGE_SIZE as u64))?;
        self.out.write_all(&header)?;
        self.out.write_all(&meta)
    }
}

/// How many children a branch page takes so that its keys fit in one page.
fn branch_fanout(level: &[(Vec<u8>, u64)]) -> usize {
    let longest = level.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    ((PAGE_SIZE - PAGE_HEADER) / (ELEMENT + longest)).max(2)
}

/// A bbolt database holding `buckets`, in memory.
#[cfg(test)]
pub fn write(buckets: &Buckets) -> Vec<u8> {
    let written = (|| {
        let mut w = Writer::new(std::io::Cursor::new(Vec::new()))?;
        let mut roots = Vec::new();
        for (name, entries) in buckets {
            roots.push((name.clone(), w.tree(entries)?));
        }
        w.finish(&roots)
    })();
    written.expect("writing to memory").0.into_inner()
}

/// A bbolt database being read, or an inline bucket's page within one.
#[derive(Clone, Copy)]
struct Reader<'a> {
    file: &'a [u8],
    page_size: usize,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl<'a> Reader<'a> {
    /// A page with its overflow, checked to lie inside the file.
    fn page(&self, id: u64) -> Result<&'a [u8], FormatError> {
        let start = (id as usize)
            .checked_mul(self.page_size)
            .filter(|s| s + PAGE_HEADER <= self.file.len())
            .ok_or_else(|| {
                FormatError::Corrupt(format!("page {id} is past the end of the file"))
            })?;
        let overflow = u32_at(self.file, start + 12) as usize;
        let end = (overflow + 1)
            .checked_mul(self.page_size)
            .and_then(|size| start.checked_add(size))
            .filter(|end| *end <= self.file.len() && *end >= start + PAGE_HEADER)
            .ok_or_else(|| {
                FormatError::Corrupt(format!("page {id} runs past the end of the file"))
            })?;
        Ok(&self.file[start..end])
    }

    /// The tree rooted at page `root`, walked in key order.
    fn walk(self, root: u64) -> Walk<'a> {
        Walk {
            reader: self,
            root: Some(root),
            stack: Vec::new(),
            visited: HashSet::new(),
            failed: false,
        }
    }

    /// The entries of a bucket from its header (and inline page, if its root is 0).
    fn bucket(self, header: &'a [u8]) -> Result<Walk<'a>, FormatError> {
        if header.len() < BUCKET_HEADER {
            return Err(FormatError::Corrupt("a bucket header is cut short".into()));
        }
        Ok(match u64_at(header, 0) {
            0 => Reader {
                file: &header[BUCKET_HEADER..],
                page_size: header.len() - BUCKET_HEADER,
            }
            .walk(0),
            root => self.walk(root),
        })
    }
}

/// A page on the way down a [`Walk`], and the next of its elements.
struct Visit<'a> {
    id: u64,
    page: &'a [u8],
    next: usize,
}

/// The (key, value, flags) of a tree in key order, each page read when the walk reaches it. A page
/// reached twice is an error: a damaged file must not send the walk round a cycle. After an error
/// the walk ends.
pub struct Walk<'a> {
    reader: Reader<'a>,
    root: Option<u64>,
    stack: Vec<Visit<'a>>,
    visited: HashSet<u64>,
    failed: bool,
}

/// A leaf element: key, value and flags.
type Element<'a> = (&'a [u8], &'a [u8], u32);

impl<'a> Walk<'a> {
    fn enter(&mut self, id: u64) -> Result<(), FormatError> {
        if !self.visited.insert(id) {
            return Err(FormatError::Corrupt(format!("page {id} is reached twice")));
        }
        let page = self.reader.page(id)?;
        let flags = u16_at(page, 8);
        if flags & (LEAF | BRANCH) == 0 {
            return Err(FormatError::Corrupt(format!(
                "page {id} is neither a branch nor a leaf (flags {flags:#x})"
            )));
        }
        self.stack.push(Visit { id, page, next: 0 });
        Ok(())
    }

    /// The next leaf element, going down branches as needed.
    fn step(&mut self) -> Result<Option<Element<'a>>, FormatError> {
        if let Some(root) = self.root.take() {
            self.enter(root)?;
        }
        loop {
            let Some(visit) = self.stack.last_mut() else {
                return Ok(None);
            };
            let (id, page) = (visit.id, visit.page);
            let (flags, count) = (u16_at(page, 8), u16_at(page, 10) as usize);
            if visit.next == count {
                self.stack.pop();
                continue;
            }
            let at = PAGE_HEADER + visit.next * ELEMENT;
            visit.next += 1;
            let slice = |from: usize, len: usize| {
                page.get(from..from + len).ok_or_else(|| {
                    FormatError::Corrupt(format!("an element of page {id} lies outside it"))
                })
            };
            slice(at, ELEMENT)?;
            if flags & LEAF != 0 {
                let (eflags, pos) = (u32_at(page, at), u32_at(page, at + 4) as usize);
                let (ksize, vsize) = (
                    u32_at(page, at + 8) as usize,
                    u32_at(page, at + 12) as usize,
                );
                let key = slice(at + pos, ksize)?;
                let value = slice(at + pos + ksize, vsize)?;
                return Ok(Some((key, value, eflags)));
            }
            self.enter(u64_at(page, at + 8))?;
        }
    }
}

impl<'a> Iterator for Walk<'a> {
    type Item = Result<Element<'a>, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let step = self.step();
        self.failed = step.is_err();
        step.transpose()
    }
}

/// An opened bbolt database: its top-level buckets (of plain keys, as etcd's), each read when
/// asked for.
pub struct Database<'a> {
    reader: Reader<'a>,
    /// Each bucket's name and header.
    buckets: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> Database<'a> {
    pub fn open(file: &'a [u8]) -> Result<Database<'a>, FormatError> {
        /// What a valid meta page says.
        struct Meta {
            txid: u64,
            root: u64,
            page_size: usize,
            pages: u64,
        }
        let meta = |at: usize| -> Option<Meta> {
            let m = file.get(at + PAGE_HEADER..at + PAGE_HEADER + 64)?;
            let valid = u32_at(m, 0) == MAGIC
                && u32_at(m, 4) == VERSION
                && fnv64a(&m[..56]) == u64_at(m, 56);
            valid.then(|| Meta {
                txid: u64_at(m, 48),
                root: u64_at(m, 16),
                page_size: u32_at(m, 8) as usize,
                pages: u64_at(m, 40),
            })
        };
        let first = meta(0);
        let second = meta(first.as_ref().map_or(PAGE_SIZE, |m| m.page_size).max(1024));
        let newest = match (first, second) {
            (Some(a), Some(b)) => {
                if a.txid >= b.txid {
                    a
                } else {
                    b
                }
            }
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => {
                return Err(FormatError::NotBbolt(
                    "neither meta page has bbolt's magic number, version and checksum".into(),
                ))
            }
        };
        let (root, page_size) = (newest.root, newest.page_size);
        let expected = (newest.pages as usize).saturating_mul(page_size);
        if file.len() < expected {
            return Err(FormatError::Corrupt(format!(
                "truncated: {} bytes where its meta page says {expected}",
                file.len()
            )));
        }
        let reader = Reader { file, page_size };
        let mut buckets = Vec::new();
        for element in reader.walk(root) {
            let (name, header, flags) = element?;
            if flags & BUCKET_ELEMENT != 0 {
                buckets.push((name, header));
            }
        }
        Ok(Database { reader, buckets })
    }

    /// The entries of bucket `name`, in key order; None if there is no such bucket.
    pub fn bucket(&self, name: &[u8]) -> Option<Result<Walk<'a>, FormatError>> {
        let (_, header) = self.buckets.iter().find(|(n, _)| *n == name)?;
        Some(self.reader.bucket(header))
    }
}

/// The buckets of a bbolt database, read whole.
#[cfg(test)]
pub fn read(file: &[u8]) -> Result<Buckets, FormatError> {
    let database = Database::open(file)?;
    let mut buckets = Buckets::new();
    for (name, header) in &database.buckets {
        let entries = database
            .reader
            .bucket(header)?
            .map(|e| e.map(|(k, v, _)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()?;
        buckets.insert(name.to_vec(), entries);
    }
    Ok(buckets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Buckets {
        let mut buckets = Buckets::new();
        // Enough keys for several leaves and a branch level; one value larger than a page.
        let keys: Vec<(Vec<u8>, Vec<u8>)> = (0..5000u32)
            .map(|i| {
                let value = if i == 77 {
                    vec![7; 3 * PAGE_SIZE]
                } else {
                    i.to_string().into_bytes()
                };
                (format!("key{i:06}").into_bytes(), value)
            })
            .collect();
        buckets.insert(b"key".to_vec(), keys);
        buckets.insert(b"meta".to_vec(), vec![(b"a".to_vec(), b"1".to_vec())]);
        buckets.insert(b"empty".to_vec(), Vec::new());
        buckets
    }

    #[test]
    fn what_is_written_reads_back() {
        let buckets = sample();
        let file = write(&buckets);
        assert_eq!(file.len() % PAGE_SIZE, 0);
        assert_eq!(read(&file).unwrap(), buckets);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever is damaged, reading answers (with the data or an error) and never panics or
        /// loops.
        #[test]
        fn damaged_files_never_panic(
            flips in proptest::collection::vec((0usize..1 << 20, proptest::prelude::any::<u8>()), 1..8),
            cut in 0usize..1 << 20,
        ) {
            let mut file = write(&small());
            for (at, byte) in flips {
                let at = at % file.len();
                file[at] = byte;
            }
            let cut = cut % (file.len() + 1);
            let _ = read(&file[..cut]);
            let _ = read(&file);
        }
    }

    /// A few buckets over a few pages, for damaging.
    fn small() -> Buckets {
        let mut buckets = Buckets::new();
        let keys = (0..300u32)
            .map(|i| (format!("k{i:04}").into_bytes(), vec![i as u8; 40]))
            .collect();
        buckets.insert(b"key".to_vec(), keys);
        buckets.insert(b"meta".to_vec(), vec![(b"a".to_vec(), b"1".to_vec())]);
        buckets
    }

    #[test]
    fn an_inline_bucket_too_short_for_a_page_is_corrupt() {
        let reader = Reader {
            file: &[],
            page_size: PAGE_SIZE,
        };
        let header = [0u8; BUCKET_HEADER + 4];
        let walk = reader
            .bucket(&header)
            .unwrap()
            .collect::<Result<Vec<_>, _>>();
        assert!(matches!(walk, Err(FormatError::Corrupt(_))));
    }

    #[test]
    fn damage_is_named() {
        let file = write(&sample());
        assert!(matches!(read(&file[..10]), Err(FormatError::NotBbolt(_))));
        assert!(matches!(read(&[7; 9000]), Err(FormatError::NotBbolt(_))));
        let cut = read(&file[..file.len() / 2]).unwrap_err();
        assert!(cut.to_string().contains("truncated"), "{cut}");
        let mut bad_page = file.clone();
        let last = file.len() - PAGE_SIZE;
        bad_page[last + 8] = 0;
        assert!(matches!(read(&bad_page), Err(FormatError::Corrupt(_))));
        // One meta page damaged: the other one serves.
        let mut one_bad = file.clone();
        one_bad[PAGE_HEADER + 20] ^= 0xff;
        assert_eq!(read(&one_bad).unwrap(), sample());
    }
}
