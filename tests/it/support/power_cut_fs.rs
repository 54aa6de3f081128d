//! A file system that can lose power: a FUSE pass-through to a directory of the test's own that
//! keeps what programs write in memory, as a page cache does, until they sync it with `fsync` or
//! `fdatasync`. A cut, at a chosen write or sync ([`PowerCutFs::cut_after`]), drops what was never
//! synced, after letting an arbitrary subset of its pages reach the disk first, as a kernel writing
//! pages back before the power failed would have; from then on every operation fails, as on a
//! machine that is gone. `kill -9` alone leaves the page cache whole, so without this no test would
//! ever lose unsynced data (etcd's robustness tests use LazyFS for the same purpose).
//!
//! What it models, and what not:
//! - File contents and sizes are lost or kept page by page (4 KiB); a page reaches the disk whole
//!   or not at all, as with a disk whose sectors are 4 KiB.
//! - Names (create, rename, unlink, mkdir) reach the disk at once, as on a file system that
//!   journals them in order; the store syncs its directories anyway.
//! - Every read and write goes through here (direct I/O, no attribute caching), so the kernel's
//!   own page cache cannot keep data that a cut dropped.

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const PAGE: u64 = 4096;

/// The file system mounted on a directory, with its contents kept in another; unmounted when
/// dropped.
pub struct PowerCutFs {
    state: Arc<Mutex<State>>,
    // Field order: unmount before the directories go.
    _session: fuser::BackgroundSession,
    mount: tempfile::TempDir,
    _backing: tempfile::TempDir,
}

impl PowerCutFs {
    /// Mounts a new, empty file system; an error if FUSE is not available here.
    pub fn mount() -> io::Result<PowerCutFs> {
        let backing = tempfile::tempdir()?;
        let mount = tempfile::tempdir()?;
        let state = Arc::new(Mutex::new(State::new(backing.path().to_owned())));
        let mut config = fuser::Config::default();
        config.mount_options = vec![fuser::MountOption::FSName("strata-power-cut".into())];
        let session = fuser::spawn_mount(Shared(state.clone()), mount.path(), &config)?;
        Ok(PowerCutFs {
            state,
            _session: session,
            mount,
            _backing: backing,
        })
    }

    /// Where programs see the file system.
    pub fn path(&self) -> &Path {
        self.mount.path()
    }

    /// Cuts the power at the `ops`-th write or sync from now (0: the next): every page written since
    /// its file was last synced reaches the disk if `reaches_disk` says so, and is lost otherwise;
    /// that operation and every one after fails with EIO, as on a machine that is gone, until
    /// [`restore`](Self::restore). A cut between a write and its sync loses the write.
    pub fn cut_after(&self, ops: u64, reaches_disk: impl FnMut() -> bool + Send + 'static) {
        lock(&self.state).cut = Some(Cut {
            countdown: ops,
            reaches_disk: Box::new(reaches_disk),
        });
    }

    /// Waits until the cut has happened; returns how many pages it lost.
    pub async fn power_lost(&self) -> usize {
        let lost = lock(&self.state).lost.clone();
        tokio::time::timeout(Duration::from_secs(60), lost.notified())
            .await
            .expect("the power cut within a minute: the server writes on");
        lock(&self.state).pages_lost
    }

    /// The power is back: the files read as the disk holds them. Whoever wrote before should be
    /// dead.
    pub fn restore(&self) {
        lock(&self.state).down = false;
    }
}

/// A power cut to come.
struct Cut {
    countdown: u64,
    reaches_disk: Box<dyn FnMut() -> bool + Send>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Written since the last sync: whole pages, and the size the file has now.
struct Unsynced {
    size: u64,
    /// The disk's bytes from here on read as zeros: the file was cut shorter since the last sync.
    floor: u64,
    pages: BTreeMap<u64, Box<[u8]>>,
}

impl Unsynced {
    /// Writes to `file` the pages `reaches_disk` picks, cut to the file's size; returns how many
    /// it left out.
    fn write_out(&self, file: &File, mut reaches_disk: impl FnMut() -> bool) -> io::Result<usize> {
        let mut left = 0;
        for (index, page) in &self.pages {
            let start = index * PAGE;
            let len = PAGE.min(self.size.saturating_sub(start)) as usize;
            if reaches_disk() {
                file.write_all_at(&page[..len], start)?;
            } else {
                left += 1;
            }
        }
        Ok(left)
    }
}

struct Node {
    /// Relative to the backing directory; None once unlinked.
    path: Option<PathBuf>,
    /// The backing file, while the file is open or has unsynced pages.
    file: Option<File>,
    opens: usize,
    unsynced: Option<Unsynced>,
}

struct State {
    backing: PathBuf,
    nodes: HashMap<u64, Node>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    cut: Option<Cut>,
    /// The power is off: every operation fails.
    down: bool,
    pages_lost: usize,
    lost: Arc<tokio::sync::Notify>,
}

impl State {
    fn new(backing: PathBuf) -> State {
        let root = Node {
            path: Some(PathBuf::new()),
            file: None,
            opens: 0,
            unsynced: None,
        };
        State {
            backing,
            nodes: HashMap::from([(INodeNo::ROOT.0, root)]),
            inos: HashMap::from([(PathBuf::new(), INodeNo::ROOT.0)]),
            next_ino: INodeNo::ROOT.0 + 1,
            cut: None,
            down: false,
            pages_lost: 0,
            lost: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Fails once the power is off.
    fn up(&self) -> Result<(), Errno> {
        if self.down {
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }

    /// Before a write or a sync: counts down to the cut, and makes it when it is due.
    fn changing(&mut self) -> Result<(), Errno> {
        self.up()?;
        let Some(cut) = &mut self.cut else {
            return Ok(());
        };
        if cut.countdown > 0 {
            cut.countdown -= 1;
            return Ok(());
        }
        let mut cut = self.cut.take().expect("due");
        let mut lost = 0;
        for node in self.nodes.values_mut() {
            if let (Some(unsynced), Some(file)) = (node.unsynced.take(), &node.file) {
                lost += unsynced
                    .write_out(file, &mut cut.reaches_disk)
                    .expect("the disk under the file system takes a page");
            }
            node.close_if_idle();
        }
        self.pages_lost = lost;
        self.down = true;
        self.lost.notify_one();
        Err(Errno::EIO)
    }

    fn path(&self, ino: INodeNo) -> Result<&Path, Errno> {
        self.nodes
            .get(&ino.0)
            .and_then(|n| n.path.as_deref())
            .ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    fn real(&self, path: &Path) -> PathBuf {
        self.backing.join(path)
    }

    fn ino(&mut self, path: &Path) -> u64 {
        if let Some(ino) = self.inos.get(path) {
            return *ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inos.insert(path.to_owned(), ino);
        self.nodes.insert(
            ino,
            Node {
                path: Some(path.to_owned()),
                file: None,
                opens: 0,
                unsynced: None,
            },
        );
        ino
    }

    /// The attributes of the file at `path`, registering it; with its unsynced size.
    fn entry(&mut self, path: &Path) -> Result<FileAttr, Errno> {
        let meta = std::fs::symlink_metadata(self.real(path))?;
        let ino = self.ino(path);
        Ok(self.attr(ino, &meta))
    }

    fn getattr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        let meta = match (&node.path, &node.file) {
            (Some(path), _) => std::fs::symlink_metadata(self.real(path))?,
            (None, Some(file)) => file.metadata()?,
            (None, None) => return Err(Errno::ENOENT),
        };
        Ok(self.attr(ino, &meta))
    }

    fn attr(&self, ino: u64, meta: &std::fs::Metadata) -> FileAttr {
        let time = |secs: i64, nanos: i64| {
            UNIX_EPOCH + Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
        };
        let size = self.nodes[&ino]
            .unsynced
            .as_ref()
            .map_or(meta.len(), |u| u.size);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            crtime: SystemTime::UNIX_EPOCH,
            kind: FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile),
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev() as u32,
            blksize: PAGE as u32,
            flags: 0,
        }
    }

    fn node(&mut self, ino: INodeNo) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)
    }

    /// Opens the backing file of `ino` (once) and counts the open.
    fn open(&mut self, ino: INodeNo) -> Result<(), Errno> {
        let real = self.real(self.path(ino)?);
        let node = self.node(ino)?;
        if node.file.is_none() {
            node.file = Some(OpenOptions::new().read(true).write(true).open(real)?);
        }
        node.opens += 1;
        Ok(())
    }

    fn release(&mut self, ino: INodeNo) {
        if let Ok(node) = self.node(ino) {
            node.opens = node.opens.saturating_sub(1);
            node.close_if_idle();
        }
    }

    /// Names `from` now has `to`: `from` itself and, for a directory, everything under it.
    fn renamed(&mut self, from: &Path, to: &Path) {
        self.unlinked(to);
        let moved: Vec<(PathBuf, u64)> = self
            .inos
            .iter()
            .filter(|(path, _)| path.starts_with(from))
            .map(|(path, ino)| (path.clone(), *ino))
            .collect();
        for (old, ino) in moved {
            let new = to.join(old.strip_prefix(from).expect("under from"));
            self.inos.remove(&old);
            self.inos.insert(new.clone(), ino);
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.path = Some(new);
            }
        }
    }

    /// Removes `name` from `parent` with `remove` (a file's or a directory's).
    fn remove(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        remove: fn(PathBuf) -> io::Result<()>,
    ) -> Result<(), Errno> {
        self.changing()?;
        let path = self.child(parent, name)?;
        remove(self.real(&path))?;
        self.unlinked(&path);
        Ok(())
    }

    fn unlinked(&mut self, path: &Path) {
        if let Some(node) = self.inos.remove(path).and_then(|i| self.nodes.get_mut(&i)) {
            node.path = None;
        }
    }
}

impl Node {
    /// Lets the backing file go once nothing holds it: no open, nothing unsynced.
    fn close_if_idle(&mut self) {
        if self.opens == 0 && self.unsynced.is_none() {
            self.file = None;
        }
    }

    fn file(&self) -> Result<&File, Errno> {
        self.file.as_ref().ok_or(Errno::EBADF)
    }

    fn unsynced(&mut self) -> Result<&mut Unsynced, Errno> {
        if self.unsynced.is_none() {
            let size = self.file()?.metadata()?.len();
            self.unsynced = Some(Unsynced {
                size,
                floor: size,
                pages: BTreeMap::new(),
            });
        }
        Ok(self.unsynced.as_mut().expect("just set"))
    }

    /// Page `index` as a program sees it.
    fn page(&self, index: u64) -> Result<Box<[u8]>, Errno> {
        let unsynced = self.unsynced.as_ref();
        if let Some(page) = unsynced.and_then(|u| u.pages.get(&index)) {
            return Ok(page.clone());
        }
        let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
        let start = index * PAGE;
        let end = (start + PAGE).min(unsynced.map_or(u64::MAX, |u| u.floor.min(u.size)));
        let file = self.file()?;
        let mut at = start;
        while at < end {
            let n = file.read_at(&mut page[(at - start) as usize..(end - start) as usize], at)?;
            if n == 0 {
                break;
            }
            at += n as u64;
        }
        Ok(page)
    }

    fn len(&self) -> Result<u64, Errno> {
        match &self.unsynced {
            Some(u) => Ok(u.size),
            None => Ok(self.file()?.metadata()?.len()),
        }
    }

    fn read(&self, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let end = (offset + u64::from(size)).min(self.len()?);
        let mut data = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let page = self.page(at / PAGE)?;
            let from = (at % PAGE) as usize;
            let to = (PAGE as usize).min(from + (end - at) as usize);
            data.extend_from_slice(&page[from..to]);
            at += (to - from) as u64;
        }
        Ok(data)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let index = at / PAGE;
            let mut page = self.page(index)?;
            let from = (at % PAGE) as usize;
            let n = rest.len().min(PAGE as usize - from);
            page[from..from + n].copy_from_slice(&rest[..n]);
            let unsynced = self.unsynced()?;
            unsynced.pages.insert(index, page);
            unsynced.size = unsynced.size.max(at + n as u64);
            at += n as u64;
            rest = &rest[n..];
        }
        Ok(())
    }

    fn truncate(&mut self, size: u64) -> Result<(), Errno> {
        let boundary = (size % PAGE != 0)
            .then(|| self.page(size / PAGE))
            .transpose()?;
        let unsynced = self.unsynced()?;
        if size < unsynced.size {
            unsynced.pages.retain(|index, _| index * PAGE < size);
            if let Some(mut page) = boundary {
                page[(size % PAGE) as usize..].fill(0);
                unsynced.pages.insert(size / PAGE, page);
            }
            unsynced.floor = unsynced.floor.min(size);
        }
        unsynced.size = size;
        Ok(())
    }

    /// What `fsync` does: everything unsynced reaches the disk.
    fn sync(&mut self) -> Result<(), Errno> {
        let Some(unsynced) = self.unsynced.take() else {
            return Ok(());
        };
        let file = self.file()?;
        if unsynced.floor < file.metadata()?.len() {
            file.set_len(unsynced.floor)?;
        }
        unsynced.write_out(file, || true)?;
        file.set_len(unsynced.size)?;
        file.sync_all()?;
        self.close_if_idle();
        Ok(())
    }
}

fn answer(reply: ReplyEmpty, done: Result<(), Errno>) {
    match done {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// No caching of names or attributes in the kernel: sizes change under it at a cut.
const TTL: Duration = Duration::ZERO;

struct Shared(Arc<Mutex<State>>);

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.0)
    }
}

impl Filesystem for Shared {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.state();
        let found = state.up().and_then(|()| state.child(parent, name));
        match found.and_then(|p| state.entry(&p)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let state = self.state();
        match state.up().and_then(|()| state.getattr(ino.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        let changed = (|| {
            state.changing()?;
            if let Some(mode) = mode {
                let real = state.real(state.path(ino)?);
                std::fs::set_permissions(real, std::fs::Permissions::from_mode(mode))?;
            }
            if let Some(size) = size {
                state.open(ino)?;
                let truncated = state.node(ino)?.truncate(size);
                state.release(ino);
                truncated?;
            }
            state.getattr(ino.0)
        })();
        match changed {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut state = self.state();
        let made = state.changing().and_then(|()| state.child(parent, name));
        let made = made.and_then(|path| {
            let real = state.real(&path);
            std::fs::create_dir(&real)?;
            std::fs::set_permissions(&real, std::fs::Permissions::from_mode(mode & !umask))?;
            state.entry(&path)
        });
        match made {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer(
            reply,
            self.state().remove(parent, name, std::fs::remove_file),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer(
            reply,
            self.state().remove(parent, name, std::fs::remove_dir),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let mut state = self.state();
        let renamed = (|| {
            state.changing()?;
            let from = state.child(parent, name)?;
            let to = state.child(newparent, newname)?;
            std::fs::rename(state.real(&from), state.real(&to))?;
            state.renamed(&from, &to);
            Ok(())
        })();
        answer(reply, renamed);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.state();
        let opened = state.up().and_then(|()| state.open(ino));
        let opened = opened.and_then(|()| {
            if flags.0 & libc::O_TRUNC != 0 {
                state.node(ino)?.truncate(0)?;
            }
            Ok(())
        });
        match opened {
            Ok(()) => reply.opened(FileHandle(ino.0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut state = self.state();
        let read = state.up().and_then(|()| state.node(ino));
        match read.and_then(|n| n.read(offset, size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.state();
        let node = state.changing().and_then(|()| state.node(ino));
        match node.and_then(|n| n.write(offset, data)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().release(ino);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let node = state.changing().and_then(|()| state.node(ino));
        answer(reply, node.and_then(Node::sync));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut state = self.state();
        let listed = (|| {
            state.up()?;
            let dir = state.path(ino)?.to_owned();
            let mut entries = vec![
                (ino.0, FileType::Directory, ".".into()),
                (ino.0, FileType::Directory, "..".into()),
            ];
            for entry in std::fs::read_dir(state.real(&dir))? {
                let entry = entry?;
                let kind = FileType::from_std(entry.file_type()?).unwrap_or(FileType::RegularFile);
                let child = state.ino(&dir.join(entry.file_name()));
                entries.push((child, kind, entry.file_name()));
            }
            Ok::<_, Errno>(entries)
        })();
        match listed {
            Ok(entries) => {
                for (i, (child, kind, name)) in
                    entries.into_iter().enumerate().skip(offset as usize)
                {
                    if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        // Names reach the disk at once here; the sync still goes down, for a cut of the machine.
        let synced = state
            .changing()
            .and_then(|()| state.path(ino))
            .and_then(|p| Ok(File::open(state.real(p))?.sync_all()?));
        answer(reply, synced);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Room enough for any test: space is not what this file system is about.
        reply.statfs(
            1 << 24,
            1 << 24,
            1 << 24,
            1 << 20,
            1 << 20,
            PAGE as u32,
            255,
            PAGE as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.state();
        let created = (|| {
            state.changing()?;
            let path = state.child(parent, name)?;
            OpenOptions::new()
                .write(true)
                .create(true)
                .create_new(flags & libc::O_EXCL != 0)
                .mode(mode & !umask)
                .open(state.real(&path))?;
            let attr = state.entry(&path)?;
            state.open(attr.ino)?;
            if flags & libc::O_TRUNC != 0 {
                state.node(attr.ino)?.truncate(0)?;
            }
            Ok::<_, Errno>(attr)
        })();
        match created {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(attr.ino.0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }
}
