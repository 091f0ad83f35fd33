//! Each hostile shape an agent can leave in place of a file, read through
//! the real filesystem (symlinks, FIFOs, sparse files, /dev).

use std::os::unix::fs::symlink;

use super::*;

const MIB: u64 = 1024 * 1024;

fn fifo(path: &Path) {
    nix::unistd::mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
}

fn read(root: &Path, rel: &str) -> Result<Vec<u8>> {
    read_file_blocking(root, Path::new(rel), MIB)
}

#[test]
fn a_regular_file_is_read() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("a/b")).unwrap();
    std::fs::write(d.path().join("a/b/01-brd.md"), "status: READY\n").unwrap();
    assert_eq!(read(d.path(), "a/b/01-brd.md").unwrap(), b"status: READY\n");
    assert_eq!(
        read(d.path(), "./a/b/01-brd.md").unwrap(),
        b"status: READY\n"
    );
    let missing = read(d.path(), "a/b/02.md").unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
    let missing_dir = read(d.path(), "a/x/02.md").unwrap_err();
    assert!(missing_dir.is_not_found(), "{missing_dir}");
}

#[test]
fn a_symlink_to_dev_zero_is_refused_without_reading() {
    let d = tempfile::tempdir().unwrap();
    symlink("/dev/zero", d.path().join("01-brd.md")).unwrap();
    let e = read(d.path(), "01-brd.md").unwrap_err();
    assert!(matches!(e, UntrustedError::Symlink { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "01-brd.md is a symlink (an agent's symlink is never followed)"
    );
    // Also a symlink to a perfectly regular file.
    std::fs::write(d.path().join("real.md"), "x").unwrap();
    symlink(d.path().join("real.md"), d.path().join("link.md")).unwrap();
    let e = read(d.path(), "link.md").unwrap_err();
    assert!(matches!(e, UntrustedError::Symlink { .. }), "{e:?}");
}

#[test]
fn a_fifo_without_a_writer_is_refused_and_does_not_block() {
    let d = tempfile::tempdir().unwrap();
    fifo(&d.path().join("01-brd.md"));
    let e = read(d.path(), "01-brd.md").unwrap_err();
    assert!(matches!(e, UntrustedError::Fifo { .. }), "{e:?}");
    assert!(e.to_string().contains("01-brd.md is a FIFO"), "{e}");
    let e = read_tail_blocking(d.path(), Path::new("01-brd.md"), MIB).unwrap_err();
    assert!(matches!(e, UntrustedError::Fifo { .. }), "{e:?}");
}

#[test]
fn a_sparse_100_mib_file_is_too_large_and_not_read() {
    let d = tempfile::tempdir().unwrap();
    let f = std::fs::File::create(d.path().join("01-brd.md")).unwrap();
    f.set_len(100 * MIB).unwrap();
    let e = read(d.path(), "01-brd.md").unwrap_err();
    assert!(
        matches!(e, UntrustedError::TooLarge { cap, .. } if cap == MIB),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "01-brd.md is larger than 1048576 bytes");
    // At the cap exactly is fine; one byte more is not.
    f.set_len(MIB).unwrap();
    assert_eq!(read(d.path(), "01-brd.md").unwrap().len() as u64, MIB);
    f.set_len(MIB + 1).unwrap();
    assert!(matches!(
        read(d.path(), "01-brd.md"),
        Err(UntrustedError::TooLarge { .. })
    ));
}

#[test]
fn a_directory_in_a_files_place_is_refused() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("01-brd.md")).unwrap();
    let e = read(d.path(), "01-brd.md").unwrap_err();
    assert!(matches!(e, UntrustedError::Directory { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "01-brd.md is a directory, not a regular file"
    );
}

#[test]
fn a_symlinked_intermediate_directory_is_not_followed() {
    let d = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("01-brd.md"), "status: READY").unwrap();
    std::fs::create_dir(d.path().join("docs")).unwrap();
    symlink(elsewhere.path(), d.path().join("docs/work-items")).unwrap();
    let e = read(d.path(), "docs/work-items/01-brd.md").unwrap_err();
    assert!(matches!(e, UntrustedError::Symlink { .. }), "{e:?}");
    assert_eq!(e.file(), "docs/work-items");
    // A regular file where a directory belongs.
    std::fs::write(d.path().join("plain"), "x").unwrap();
    let e = read(d.path(), "plain/01-brd.md").unwrap_err();
    assert!(matches!(e, UntrustedError::NotADirectory { .. }), "{e:?}");
}

#[test]
fn devices_and_escaping_paths_are_refused() {
    let e = read(Path::new("/dev"), "null").unwrap_err();
    assert!(matches!(e, UntrustedError::Device { .. }), "{e:?}");
    let d = tempfile::tempdir().unwrap();
    for bad in ["../x.md", "/etc/passwd", ""] {
        let e = read(d.path(), bad).unwrap_err();
        assert!(matches!(e, UntrustedError::BadPath { .. }), "{bad}: {e:?}");
    }
}

#[tokio::test]
async fn the_async_read_runs_off_the_runtime_and_refuses_a_fifo() {
    let d = tempfile::tempdir().unwrap();
    fifo(&d.path().join("x.md"));
    std::fs::write(d.path().join("y.md"), "ok").unwrap();
    let e = read_file(d.path(), Path::new("x.md"), MIB, READ_TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(e, UntrustedError::Fifo { .. }), "{e:?}");
    let ok = read_file(d.path(), Path::new("y.md"), MIB, READ_TIMEOUT).await;
    assert_eq!(ok.unwrap(), b"ok");
}

#[test]
fn a_tail_reads_only_the_last_bytes() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("job.log");
    std::fs::write(&log, "first line\nsecond line\nresult\n").unwrap();
    let t = read_tail_blocking(d.path(), Path::new("job.log"), 16).unwrap();
    assert_eq!(t.skipped, 30 - 16);
    assert_eq!(t.bytes, b"ond line\nresult\n");
    assert_eq!(t.into_text(), "result\n", "the cut first line is dropped");
    let whole = read_tail_blocking(d.path(), Path::new("job.log"), 1024).unwrap();
    assert_eq!(whole.skipped, 0);
    assert_eq!(whole.into_text(), "first line\nsecond line\nresult\n");
    // A huge sparse log: only the tail is read.
    std::fs::File::options()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(100 * MIB)
        .unwrap();
    let t = read_tail_blocking(d.path(), Path::new("job.log"), MIB).unwrap();
    assert_eq!((t.bytes.len() as u64, t.skipped), (MIB, 99 * MIB));
    symlink("/dev/zero", d.path().join("zero.log")).unwrap();
    let e = read_tail_blocking(d.path(), Path::new("zero.log"), MIB).unwrap_err();
    assert!(matches!(e, UntrustedError::Symlink { .. }), "{e:?}");
}

fn md(key: &str) -> bool {
    key.ends_with(".md")
}

#[test]
fn a_tree_reads_markdown_and_refuses_hostile_entries() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("docs/work-items/W-1");
    std::fs::create_dir_all(dir.join("06-adr")).unwrap();
    std::fs::write(dir.join("06-adr/ADR-001.md"), "status: READY").unwrap();
    std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
    fifo(&dir.join("ignored-fifo"));
    symlink("/dev/zero", dir.join("01-brd.md")).unwrap();
    fifo(&dir.join("11-review.md"));
    std::fs::File::create(dir.join("13-test-report.md"))
        .unwrap()
        .set_len(100 * MIB)
        .unwrap();
    std::fs::create_dir(dir.join("14-staging-report.md")).unwrap();
    symlink("/etc", dir.join("sub")).unwrap();
    let tree = read_tree_blocking(
        d.path(),
        Path::new("docs/work-items/W-1"),
        &Limits::artifacts(MIB),
        md,
    )
    .unwrap();
    assert_eq!(tree.files.keys().collect::<Vec<_>>(), ["06-adr/ADR-001.md"]);
    let why: BTreeMap<&str, String> = tree
        .refused
        .iter()
        .map(|(k, e)| (k.as_str(), e.to_string()))
        .collect();
    assert_eq!(
        why.keys().copied().collect::<Vec<_>>(),
        [
            "01-brd.md",
            "11-review.md",
            "13-test-report.md",
            "14-staging-report.md",
            "sub"
        ]
    );
    assert_eq!(
        why["01-brd.md"],
        "docs/work-items/W-1/01-brd.md is a symlink (an agent's symlink is never followed)"
    );
    assert!(why["11-review.md"].contains("is a FIFO"));
    assert!(why["13-test-report.md"].contains("is larger than 1048576 bytes"));
    assert!(why["14-staging-report.md"].contains("is a directory"));
    assert!(why["sub"].contains("docs/work-items/W-1/sub is a symlink"));
}

#[test]
fn a_tree_is_bounded_in_entries_depth_and_total_bytes() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..20 {
        std::fs::write(d.path().join(format!("{i:02}.md")), "x".repeat(600)).unwrap();
    }
    let deep = d.path().join("a/b/c");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("deep.md"), "x").unwrap();
    let limits = Limits {
        max_file_bytes: 1000,
        max_total_bytes: 6000,
        max_entries: 100,
        max_depth: 2,
        timeout: READ_TIMEOUT,
    };
    let tree = read_tree_blocking(d.path(), Path::new(""), &limits, md).unwrap();
    assert_eq!(tree.files.len(), 10, "6000 bytes in all: ten of 600");
    assert!(matches!(
        tree.refused.get("10.md"),
        Some(UntrustedError::TotalTooLarge { cap: 6000, .. })
    ));
    assert!(matches!(
        tree.refused.get("a/b/c"),
        Some(UntrustedError::TooDeep { max: 2, .. })
    ));
    let few = Limits {
        max_entries: 5,
        ..limits
    };
    let tree = read_tree_blocking(d.path(), Path::new(""), &few, md).unwrap();
    let e = &tree.refused["."];
    assert!(
        matches!(e, UntrustedError::TooManyEntries { max: 5, .. }),
        "{e:?}"
    );
    assert!(list_dir_blocking(d.path(), Path::new(""), 5).is_err());
    assert_eq!(
        list_dir_blocking(d.path(), Path::new("a"), 5).unwrap(),
        ["b"]
    );
}

#[tokio::test]
async fn a_tree_whose_dir_is_a_symlink_or_missing_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let limits = Limits::artifacts(MIB);
    let e = read_tree(d.path(), Path::new("docs/W-1"), limits, md)
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    std::fs::create_dir(d.path().join("docs")).unwrap();
    symlink("/", d.path().join("docs/W-1")).unwrap();
    let e = read_tree(d.path(), Path::new("docs/W-1"), limits, md)
        .await
        .unwrap_err();
    assert!(matches!(e, UntrustedError::Symlink { .. }), "{e:?}");
    assert_eq!(e.file(), "docs/W-1");
}

#[tokio::test]
async fn a_read_that_never_answers_times_out_with_the_file_named() {
    // The blocking side waits until released: the timeout always wins.
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let r = off_runtime(
        "docs/work-items/W-1".into(),
        Duration::from_millis(20),
        move || {
            let _ = wait.recv();
            Ok(())
        },
    )
    .await;
    let _ = release.send(());
    let e = r.unwrap_err();
    assert!(matches!(e, UntrustedError::TimedOut { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "docs/work-items/W-1 timed out: not read within 20ms"
    );
}

#[test]
fn a_write_never_follows_a_planted_link() {
    let d = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "keep me").unwrap();
    std::fs::create_dir_all(d.path().join("docs/work-items/X")).unwrap();
    // A link where the report goes: replaced, its target untouched.
    symlink(
        &victim,
        d.path().join("docs/work-items/X/13-test-report.md"),
    )
    .unwrap();
    write_file_blocking(
        d.path(),
        Path::new("docs/work-items/X/13-test-report.md"),
        b"ours",
    )
    .unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    let written = d.path().join("docs/work-items/X/13-test-report.md");
    assert!(
        !std::fs::symlink_metadata(&written)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "ours");
    // A directory on the way replaced by a link: refused, nothing written.
    std::fs::remove_dir_all(d.path().join("docs/work-items/X")).unwrap();
    symlink(outside.path(), d.path().join("docs/work-items/X")).unwrap();
    let e = write_file_blocking(d.path(), Path::new("docs/work-items/X/r.md"), b"x").unwrap_err();
    assert!(matches!(e, UntrustedError::Symlink { .. }), "{e}");
    assert!(!outside.path().join("r.md").exists());
    let e = ensure_dir_blocking(d.path(), Path::new("docs/work-items/X/sub")).unwrap_err();
    assert!(matches!(e, UntrustedError::Symlink { .. }), "{e}");
    // Missing directories are created.
    ensure_dir_blocking(d.path(), Path::new("a/b/c")).unwrap();
    assert!(d.path().join("a/b/c").is_dir());
    // No temp file is left behind.
    write_file_blocking(d.path(), Path::new("a/b/c/f.md"), b"1").unwrap();
    let names: Vec<_> = std::fs::read_dir(d.path().join("a/b/c"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("f.md")]);
}
