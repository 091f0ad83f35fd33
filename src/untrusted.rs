//! Reading what an agent wrote (invariant 8, B-12). An agent is an untrusted
//! process: its artifact files and its log are untrusted input. Every read
//! here starts at a trusted root (a worktree, the daemon's run dir) and:
//! - follows no symlink at any path component below the root: each directory
//!   is opened with `openat(O_NOFOLLOW | O_DIRECTORY)` from its parent;
//! - opens only regular files: the entry is checked with `fstatat`
//!   (no-follow) before it is opened, opened with
//!   `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC`, then checked again with `fstat`
//!   (a FIFO, a device, a socket, a directory or a symlink is refused; a FIFO
//!   is never opened, so a FIFO with no writer cannot block);
//! - reads at most a byte cap: a file larger than the cap is refused as
//!   [`UntrustedError::TooLarge`] without reading it (at most cap + 1 bytes
//!   are ever read, for a file that grows meanwhile);
//! - runs the async variants off the runtime (`spawn_blocking`) under a
//!   timeout. A timed-out read keeps its blocking thread until the kernel
//!   answers; the caller goes on with [`UntrustedError::TimedOut`].
//!
//! Errors name the file by its path relative to the root, and why.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::libc;
use nix::sys::stat::{FileStat, Mode, fstat, fstatat};

/// Default cap of one artifact file (`ORCH_ARTIFACT_MAX_BYTES`).
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024;
/// How much of an agent's log the monitor reads for usage and the budget
/// check: its last 8 MiB (the usage `result` line is the log's last line).
pub const LOG_TAIL_BYTES: u64 = 8 * 1024 * 1024;
/// Timeout of one async read (a file, a tail, a whole artifact tree).
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Entries (files and directories) read from one artifact dir, in all.
pub const MAX_ENTRIES: usize = 512;
/// Directory levels below the artifact dir (`06-adr/` is level 1).
pub const MAX_DEPTH: usize = 4;
/// The artifact dir in all may hold this many times the per-file cap.
pub const TOTAL_FILES_FACTOR: u64 = 16;

/// Why a file an agent could have written was not read.
#[derive(Debug, thiserror::Error)]
pub enum UntrustedError {
    #[error("{file} does not exist")]
    NotFound { file: String },
    #[error("{file} is a symlink (an agent's symlink is never followed)")]
    Symlink { file: String },
    #[error("{file} is a FIFO, not a regular file")]
    Fifo { file: String },
    #[error("{file} is a device, not a regular file")]
    Device { file: String },
    #[error("{file} is a socket, not a regular file")]
    Socket { file: String },
    #[error("{file} is a directory, not a regular file")]
    Directory { file: String },
    #[error("{file} is not a directory")]
    NotADirectory { file: String },
    #[error("{file} is larger than {cap} bytes")]
    TooLarge { file: String, cap: u64 },
    #[error("{file} would take the artifact dir past {cap} bytes in total")]
    TotalTooLarge { file: String, cap: u64 },
    #[error("{file} is not UTF-8 text")]
    NotUtf8 { file: String },
    #[error("{file} holds more than {max} entries")]
    TooManyEntries { file: String, max: usize },
    #[error("{file} is nested deeper than {max} directory levels")]
    TooDeep { file: String, max: usize },
    #[error("{file} timed out: not read within {}", humantime::format_duration(*after))]
    TimedOut { file: String, after: Duration },
    #[error("{file} is not a plain relative path (no `..`, no root)")]
    BadPath { file: String },
    #[error("{file} could not be read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

impl UntrustedError {
    /// The file it is about, relative to the root of the read.
    pub fn file(&self) -> &str {
        use UntrustedError::*;
        match self {
            NotFound { file }
            | Symlink { file }
            | Fifo { file }
            | Device { file }
            | Socket { file }
            | Directory { file }
            | NotADirectory { file }
            | TooLarge { file, .. }
            | TotalTooLarge { file, .. }
            | NotUtf8 { file }
            | TooManyEntries { file, .. }
            | TooDeep { file, .. }
            | TimedOut { file, .. }
            | BadPath { file }
            | Io { file, .. } => file,
        }
    }

    /// Nothing there (yet): not a refusal.
    pub fn is_not_found(&self) -> bool {
        matches!(self, UntrustedError::NotFound { .. })
    }
}

type Result<T> = std::result::Result<T, UntrustedError>;

fn io(file: &str, e: Errno) -> UntrustedError {
    UntrustedError::Io {
        file: file.to_string(),
        source: std::io::Error::from(e),
    }
}

/// The refusal for a file type other than a regular file; `None` = regular.
fn refuse_kind(st: &FileStat, file: &str) -> Option<UntrustedError> {
    let file = file.to_string();
    Some(match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => return None,
        libc::S_IFLNK => UntrustedError::Symlink { file },
        libc::S_IFIFO => UntrustedError::Fifo { file },
        libc::S_IFDIR => UntrustedError::Directory { file },
        libc::S_IFSOCK => UntrustedError::Socket { file },
        _ => UntrustedError::Device { file },
    })
}

fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Why opening `name` in `dir` failed, looked up without following it.
fn open_failed(
    dir: impl AsFd,
    name: &OsStr,
    file: &str,
    e: Errno,
    want_dir: bool,
) -> UntrustedError {
    match e {
        Errno::ENOENT => UntrustedError::NotFound { file: file.into() },
        Errno::ELOOP => UntrustedError::Symlink { file: file.into() },
        _ => match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if want_dir && !is_dir(&st) => match refuse_kind(&st, file) {
                Some(UntrustedError::Symlink { file }) => UntrustedError::Symlink { file },
                _ => UntrustedError::NotADirectory { file: file.into() },
            },
            Ok(st) => refuse_kind(&st, file).unwrap_or_else(|| io(file, e)),
            Err(_) => io(file, e),
        },
    }
}

/// The normal components of `rel`, or why it is no plain relative path.
fn components(rel: &Path) -> Result<Vec<&OsStr>> {
    rel.components()
        .filter(|c| *c != Component::CurDir)
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(UntrustedError::BadPath {
                file: rel.display().to_string(),
            }),
        })
        .collect()
}

fn join(shown: &str, name: &OsStr) -> String {
    let name = name.to_string_lossy();
    if shown.is_empty() {
        name.into_owned()
    } else {
        format!("{shown}/{name}")
    }
}

/// Open the directory `rel` below `root`, following no symlink below the
/// root (the root itself is trusted). Returns the fd and `rel` as shown.
fn open_dir(root: &Path, rel: &[&OsStr]) -> Result<(OwnedFd, String)> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut fd = open(root, flags, Mode::empty()).map_err(|e| match e {
        Errno::ENOENT => UntrustedError::NotFound {
            file: root.display().to_string(),
        },
        e => io(&root.display().to_string(), e),
    })?;
    let mut shown = String::new();
    for name in rel {
        shown = join(&shown, name);
        fd = match openat(&fd, *name, flags | OFlag::O_NOFOLLOW, Mode::empty()) {
            Ok(next) => next,
            Err(e) => return Err(open_failed(&fd, name, &shown, e, true)),
        };
    }
    Ok((fd, shown))
}

/// Open the regular file `name` in `dir`: checked before (no FIFO or device
/// is ever opened) and after the open (nothing swapped in between).
fn open_regular(dir: &OwnedFd, name: &OsStr, file: &str) -> Result<(std::fs::File, u64)> {
    let before = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| open_failed(dir, name, file, e, false))?;
    if let Some(refused) = refuse_kind(&before, file) {
        return Err(refused);
    }
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_CLOEXEC
        | OFlag::O_NOCTTY;
    let fd = openat(dir, name, flags, Mode::empty())
        .map_err(|e| open_failed(dir, name, file, e, false))?;
    let st = fstat(&fd).map_err(|e| io(file, e))?;
    if let Some(refused) = refuse_kind(&st, file) {
        return Err(refused);
    }
    Ok((std::fs::File::from(fd), st.st_size.max(0) as u64))
}

fn read_capped(dir: &OwnedFd, name: &OsStr, file: &str, cap: u64) -> Result<Vec<u8>> {
    let (f, size) = open_regular(dir, name, file)?;
    let too_large = || UntrustedError::TooLarge {
        file: file.to_string(),
        cap,
    };
    if size > cap {
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(size as usize + 1);
    f.take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|source| UntrustedError::Io {
            file: file.to_string(),
            source,
        })?;
    if buf.len() as u64 > cap {
        return Err(too_large());
    }
    Ok(buf)
}

fn split_file(rel: &Path) -> Result<(Vec<&OsStr>, &OsStr)> {
    let mut parts = components(rel)?;
    let name = parts.pop().ok_or_else(|| UntrustedError::BadPath {
        file: rel.display().to_string(),
    })?;
    Ok((parts, name))
}

/// Read the regular file `rel` below `root`, at most `max_bytes` of it.
pub fn read_file_blocking(root: &Path, rel: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let (parents, name) = split_file(rel)?;
    let (dir, shown) = open_dir(root, &parents)?;
    read_capped(&dir, name, &join(&shown, name), max_bytes)
}

/// The last bytes of a file (an agent's log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    pub bytes: Vec<u8>,
    /// Bytes before the tail that were not read.
    pub skipped: u64,
}

impl Tail {
    /// The tail as text (lossy: a stray byte must not hide the rest); when
    /// the head was skipped, the cut first line is dropped.
    pub fn into_text(self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        if self.skipped == 0 {
            return text.into_owned();
        }
        match text.find('\n') {
            Some(i) => text[i + 1..].to_string(),
            None => String::new(),
        }
    }
}

/// Read the last `max_bytes` of the regular file `rel` below `root`.
pub fn read_tail_blocking(root: &Path, rel: &Path, max_bytes: u64) -> Result<Tail> {
    let (parents, name) = split_file(rel)?;
    let (dir, shown) = open_dir(root, &parents)?;
    let file = join(&shown, name);
    let (mut f, size) = open_regular(&dir, name, &file)?;
    let skipped = size.saturating_sub(max_bytes);
    let failed = |source| UntrustedError::Io {
        file: file.clone(),
        source,
    };
    f.seek(SeekFrom::Start(skipped)).map_err(failed)?;
    let mut bytes = Vec::with_capacity((size - skipped) as usize);
    f.take(max_bytes).read_to_end(&mut bytes).map_err(failed)?;
    Ok(Tail { bytes, skipped })
}

/// Run a blocking read off the async runtime, under `timeout`.
async fn off_runtime<T: Send + 'static>(
    file: String,
    timeout: Duration,
    read: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(read)).await {
        Ok(Ok(r)) => r,
        Ok(Err(join)) => Err(UntrustedError::Io {
            file,
            source: std::io::Error::other(join.to_string()),
        }),
        Err(_) => Err(UntrustedError::TimedOut {
            file,
            after: timeout,
        }),
    }
}

/// [`read_file_blocking`] off the runtime, under `timeout`.
pub async fn read_file(
    root: &Path,
    rel: &Path,
    max_bytes: u64,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let (root, rel) = (root.to_path_buf(), rel.to_path_buf());
    let file = rel.display().to_string();
    off_runtime(file, timeout, move || {
        read_file_blocking(&root, &rel, max_bytes)
    })
    .await
}

/// [`read_tail_blocking`] off the runtime, under `timeout`.
pub async fn read_tail(root: &Path, rel: &Path, max_bytes: u64, timeout: Duration) -> Result<Tail> {
    let (root, rel) = (root.to_path_buf(), rel.to_path_buf());
    let file = rel.display().to_string();
    off_runtime(file, timeout, move || {
        read_tail_blocking(&root, &rel, max_bytes)
    })
    .await
}

/// The tail of a log at `path`, as text: its directory is the trusted root
/// (the daemon made it), the file itself is the agent's output. An absent
/// log reads as empty; a refused one is logged and reads as empty.
pub async fn log_tail_text(path: &Path, max_bytes: u64) -> String {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return String::new();
    };
    match read_tail(dir, Path::new(name), max_bytes, READ_TIMEOUT).await {
        Ok(tail) => tail.into_text(),
        Err(e) if e.is_not_found() => String::new(),
        Err(e) => {
            tracing::warn!(log = %path.display(), error = %e, "agent log not read");
            String::new()
        }
    }
}

/// Bounds of one tree read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
    pub max_entries: usize,
    pub max_depth: usize,
    pub timeout: Duration,
}

impl Limits {
    /// The bounds of an artifact dir with a per-file cap.
    pub fn artifacts(max_file_bytes: u64) -> Self {
        Self {
            max_file_bytes,
            max_total_bytes: max_file_bytes.saturating_mul(TOTAL_FILES_FACTOR),
            max_entries: MAX_ENTRIES,
            max_depth: MAX_DEPTH,
            timeout: READ_TIMEOUT,
        }
    }
}

/// What a tree read found. Keys are relative to the walked dir (`01-brd.md`,
/// `06-adr/ADR-001-x.md`; `.` is the dir itself); errors name the file
/// relative to the root.
#[derive(Debug, Default)]
pub struct Tree {
    pub files: BTreeMap<String, String>,
    pub refused: BTreeMap<String, UntrustedError>,
}

struct Walk<'a> {
    limits: &'a Limits,
    want: fn(&str) -> bool,
    entries: usize,
    total: u64,
    tree: Tree,
}

/// The names in a directory, sorted; at most `max` of them (`None` = more).
fn names(dir: &OwnedFd, file: &str, max: usize) -> Result<Option<Vec<Vec<u8>>>> {
    let fd = dir.try_clone().map_err(|source| UntrustedError::Io {
        file: file.into(),
        source,
    })?;
    let mut d = Dir::from_fd(fd).map_err(|e| io(file, e))?;
    let mut out = Vec::new();
    for entry in d.iter() {
        let entry = entry.map_err(|e| io(file, e))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        if out.len() == max {
            return Ok(None);
        }
        out.push(name.to_vec());
    }
    out.sort();
    Ok(Some(out))
}

impl Walk<'_> {
    fn refuse(&mut self, key: String, e: UntrustedError) {
        self.tree.refused.insert(key, e);
    }

    fn dir(&mut self, dir: &OwnedFd, key: &str, shown: &str, depth: usize) -> bool {
        let left = self.limits.max_entries.saturating_sub(self.entries);
        let list = match names(dir, shown, left) {
            Ok(Some(list)) => list,
            Ok(None) => {
                let max = self.limits.max_entries;
                let e = UntrustedError::TooManyEntries {
                    file: shown.into(),
                    max,
                };
                self.refuse(".".into(), e);
                return false;
            }
            Err(e) => {
                self.refuse(if key.is_empty() { "." } else { key }.into(), e);
                return true;
            }
        };
        self.entries += list.len();
        for raw in &list {
            let name = OsStr::from_bytes(raw);
            let (k, file) = (join(key, name), join(shown, name));
            let st = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => {
                    self.refuse(k, io(&file, e));
                    continue;
                }
            };
            let wanted = (self.want)(&k);
            if is_dir(&st) && wanted {
                // A directory where an artifact file belongs.
                self.refuse(k, UntrustedError::Directory { file });
                continue;
            }
            if is_dir(&st) {
                if !self.subdir(dir, name, &k, &file, depth + 1) {
                    return false;
                }
                continue;
            }
            match refuse_kind(&st, &file) {
                // A symlink is refused whatever its name: it may stand for
                // a directory of artifacts.
                Some(e @ UntrustedError::Symlink { .. }) => self.refuse(k, e),
                Some(e) if wanted => self.refuse(k, e),
                Some(_) => {}
                None if wanted => self.file(dir, name, k, &file),
                None => {}
            }
        }
        true
    }

    fn subdir(&mut self, dir: &OwnedFd, name: &OsStr, k: &str, file: &str, depth: usize) -> bool {
        if depth > self.limits.max_depth {
            let max = self.limits.max_depth;
            self.refuse(
                k.into(),
                UntrustedError::TooDeep {
                    file: file.into(),
                    max,
                },
            );
            return true;
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match openat(dir, name, flags, Mode::empty()) {
            Ok(sub) => self.dir(&sub, k, file, depth),
            Err(Errno::ENOENT) => true,
            Err(e) => {
                self.refuse(k.into(), open_failed(dir, name, file, e, true));
                true
            }
        }
    }

    fn file(&mut self, dir: &OwnedFd, name: &OsStr, k: String, file: &str) {
        let bytes = match read_capped(dir, name, file, self.limits.max_file_bytes) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return,
            Err(e) => return self.refuse(k, e),
        };
        let total = self.total.saturating_add(bytes.len() as u64);
        if total > self.limits.max_total_bytes {
            let cap = self.limits.max_total_bytes;
            return self.refuse(
                k,
                UntrustedError::TotalTooLarge {
                    file: file.into(),
                    cap,
                },
            );
        }
        match String::from_utf8(bytes) {
            Ok(text) => {
                self.total = total;
                self.tree.files.insert(k, text);
            }
            Err(_) => self.refuse(k, UntrustedError::NotUtf8 { file: file.into() }),
        }
    }
}

/// Walk the directory `dir` below `root` within `limits`: read the regular
/// files whose key `want` accepts, refuse what may not be read. `Err` when
/// the directory itself cannot be opened ([`UntrustedError::is_not_found`]:
/// not there yet).
pub fn read_tree_blocking(
    root: &Path,
    dir: &Path,
    limits: &Limits,
    want: fn(&str) -> bool,
) -> Result<Tree> {
    let (fd, shown) = open_dir(root, &components(dir)?)?;
    let mut walk = Walk {
        limits,
        want,
        entries: 0,
        total: 0,
        tree: Tree::default(),
    };
    walk.dir(&fd, "", &shown, 0);
    Ok(walk.tree)
}

/// [`read_tree_blocking`] off the runtime, under `limits.timeout`.
pub async fn read_tree(
    root: &Path,
    dir: &Path,
    limits: Limits,
    want: fn(&str) -> bool,
) -> Result<Tree> {
    let (root, dir) = (root.to_path_buf(), dir.to_path_buf());
    let file = dir.display().to_string();
    off_runtime(file, limits.timeout, move || {
        read_tree_blocking(&root, &dir, &limits, want)
    })
    .await
}

/// The names in the directory `dir` below `root`, sorted, at most
/// `max_entries` (more is [`UntrustedError::TooManyEntries`]).
pub fn list_dir_blocking(root: &Path, dir: &Path, max_entries: usize) -> Result<Vec<String>> {
    let (fd, shown) = open_dir(root, &components(dir)?)?;
    match names(&fd, &shown, max_entries)? {
        Some(list) => Ok(list
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect()),
        None => Err(UntrustedError::TooManyEntries {
            file: shown,
            max: max_entries,
        }),
    }
}

/// [`list_dir_blocking`] off the runtime, under [`READ_TIMEOUT`].
pub async fn list_dir(root: &Path, dir: &Path, max_entries: usize) -> Result<Vec<String>> {
    let (root, dir) = (root.to_path_buf(), PathBuf::from(dir));
    let file = dir.display().to_string();
    off_runtime(file, READ_TIMEOUT, move || {
        list_dir_blocking(&root, &dir, max_entries)
    })
    .await
}

/// Open (creating what is missing) the directory `rel` below `root`,
/// following no symlink below the root: a directory an agent replaced with
/// a link is refused, never written through.
fn ensure_dir_fd(root: &Path, rel: &[&OsStr]) -> Result<(OwnedFd, String)> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let (mut fd, _) = open_dir(root, &[])?;
    let mut shown = String::new();
    for name in rel {
        shown = join(&shown, name);
        match nix::sys::stat::mkdirat(&fd, *name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io(&shown, e)),
        }
        fd = match openat(&fd, *name, flags | OFlag::O_NOFOLLOW, Mode::empty()) {
            Ok(next) => next,
            Err(e) => return Err(open_failed(&fd, name, &shown, e, true)),
        };
    }
    Ok((fd, shown))
}

/// Create the directory `rel` below `root` (and what is missing on the
/// way), following no symlink below the root.
pub fn ensure_dir_blocking(root: &Path, rel: &Path) -> Result<()> {
    let parts = components(rel)?;
    ensure_dir_fd(root, &parts).map(|_| ())
}

/// Write `bytes` to `rel` below `root` where an agent may have planted
/// links: no directory below the root is followed, the data goes to a fresh
/// temp file (`O_CREAT | O_EXCL | O_NOFOLLOW`: never an existing file or a
/// link's target), is synced, and is renamed over `rel` (a link there is
/// replaced, not followed).
pub fn write_file_blocking(root: &Path, rel: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let (dirs, name) = split_file(rel)?;
    let (dir, shown) = ensure_dir_fd(root, &dirs)?;
    let file = join(&shown, name);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".orch-tmp-{}", uuid::Uuid::new_v4()));
    let flags = OFlag::O_WRONLY
        | OFlag::O_CREAT
        | OFlag::O_EXCL
        | OFlag::O_NOFOLLOW
        | OFlag::O_CLOEXEC
        | OFlag::O_NOCTTY;
    let fd = openat(
        &dir,
        tmp_name.as_os_str(),
        flags,
        Mode::from_bits_truncate(0o644),
    )
    .map_err(|e| io(&file, e))?;
    let mut f = std::fs::File::from(fd);
    let wrote = f.write_all(bytes).and_then(|_| f.sync_all());
    if let Err(source) = wrote {
        let _ = nix::unistd::unlinkat(
            &dir,
            tmp_name.as_os_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        return Err(UntrustedError::Io { file, source });
    }
    nix::fcntl::renameat(&dir, tmp_name.as_os_str(), &dir, name).map_err(|e| io(&file, e))?;
    // The rename is durable once the directory is.
    let _ = nix::unistd::fsync(&dir);
    Ok(())
}

/// [`write_file_blocking`] off the runtime, under [`READ_TIMEOUT`].
pub async fn write_file(root: &Path, rel: &Path, bytes: Vec<u8>) -> Result<()> {
    let (root, rel) = (root.to_path_buf(), rel.to_path_buf());
    let file = rel.display().to_string();
    off_runtime(file, READ_TIMEOUT, move || {
        write_file_blocking(&root, &rel, &bytes)
    })
    .await
}

/// [`ensure_dir_blocking`] off the runtime, under [`READ_TIMEOUT`].
pub async fn ensure_dir(root: &Path, rel: &Path) -> Result<()> {
    let (root, rel) = (root.to_path_buf(), rel.to_path_buf());
    let file = rel.display().to_string();
    off_runtime(file, READ_TIMEOUT, move || ensure_dir_blocking(&root, &rel)).await
}

#[cfg(test)]
mod tests;
