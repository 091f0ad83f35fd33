//! The one reader of `/proc`: a process's state, group and start time, its
//! environment, the processes of a group, the daemon's own figures for
//! `/metrics`. Lease liveness (pid + start
//! time), the process-group spawner and deploy adoption all ask here, so a
//! pid that the kernel reused for another program is told apart the same
//! way everywhere.

/// The fields of `/proc/<pid>/stat` the daemon uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `D`, `Z`, `X`, ...
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// Field 22: start time in clock ticks since boot. Pids are reused;
    /// (pid, start time) is not, within one boot.
    pub start_time: i64,
    /// Fields 14 and 15: CPU time in user and kernel mode, clock ticks.
    pub utime: u64,
    pub stime: u64,
    /// Field 20.
    pub threads: u64,
}

impl Stat {
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Parse `pid (comm) state ppid pgrp ... starttime ...`. comm may hold
/// spaces and parentheses, so fields are counted after the LAST `)`.
pub fn parse_stat(stat: &str) -> Option<Stat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        // Field 22 of the whole line is the 20th after the state (field 3).
        start_time: fields.get(19)?.parse().ok()?,
        utime: fields.get(11)?.parse().ok()?,
        stime: fields.get(12)?.parse().ok()?,
        threads: fields.get(17)?.parse().ok()?,
    })
}

/// The daemon's own figures for `/metrics`; each `None` when unreadable.
#[derive(Debug, Clone, Copy, Default)]
pub struct OwnFigures {
    pub resident_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<usize>,
    pub threads: Option<u64>,
}

pub fn own_figures() -> OwnFigures {
    let conf = |v, default: i64| {
        nix::unistd::sysconf(v)
            .ok()
            .flatten()
            .unwrap_or(default)
            .max(1) as u64
    };
    let page = conf(nix::unistd::SysconfVar::PAGE_SIZE, 4096);
    let ticks = conf(nix::unistd::SysconfVar::CLK_TCK, 100) as f64;
    let stat = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_stat(&s));
    OwnFigures {
        resident_bytes: std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map(|p| p * page),
        cpu_seconds: stat.map(|s| (s.utime + s.stime) as f64 / ticks),
        open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count()),
        threads: stat.map(|s| s.threads),
    }
}

/// `/proc/<pid>/stat`, or `None` when the process is gone (or unreadable).
pub fn stat(pid: i64) -> Option<Stat> {
    if pid <= 0 {
        return None;
    }
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The start time of a live process.
pub fn start_time(pid: i64) -> Option<i64> {
    stat(pid).map(|s| s.start_time)
}

/// Whether `pid` is alive (not a zombie) and is the process that started
/// at `start_time`.
pub fn alive_as(pid: i64, start_time: i64) -> bool {
    stat(pid).is_some_and(|s| s.start_time == start_time && !s.is_zombie())
}

/// Whether the environment `pid` started with holds exactly `entry`
/// (`KEY=value`). False when it cannot be read (gone, or not ours to read).
pub fn environ_has(pid: i64, entry: &str) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    environ.split(|b| *b == 0).any(|e| e == entry.as_bytes())
}

/// The live (non-zombie) processes whose process group is `pgid`, sorted.
pub fn pids_in_group(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        // A process may exit between readdir and read: it is gone then.
        .filter(|pid| stat(i64::from(*pid)).is_some_and(|s| s.pgrp == pgid && !s.is_zombie()))
        .collect();
    pids.sort_unstable();
    pids
}

/// The kernel's id of this boot (`/proc/sys/kernel/random/boot_id`): a
/// process recorded under another boot id is gone, whatever its pid names now.
pub fn kernel_boot_id() -> Option<String> {
    static ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
    .clone()
}

/// Whether `/proc` can be read at all (it tells zombies apart).
pub fn available() -> bool {
    std::fs::read_dir("/proc").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let tail = "0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
        let stat = format!("4242 (we (ird) name) S 1 4200 4200 {tail}");
        let s = parse_stat(&stat).unwrap();
        assert_eq!(
            (s.state, s.ppid, s.pgrp, s.start_time),
            ('S', 1, 4200, 987654)
        );
        assert_eq!((s.utime, s.stime, s.threads), (0, 0, 1));
        let z = parse_stat(&format!("4242 (zz) Z 1 77 77 {tail}")).unwrap();
        assert!(z.is_zombie());
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(
            parse_stat("1 (x) R 0 1"),
            None,
            "too short for a start time"
        );
    }

    #[test]
    fn our_own_figures_are_read() {
        let f = own_figures();
        assert!(f.resident_bytes.is_some_and(|b| b > 0), "{f:?}");
        assert!(f.threads.is_some_and(|t| t >= 1), "{f:?}");
        assert!(f.open_fds.is_some_and(|n| n >= 3), "{f:?}");
        assert!(f.cpu_seconds.is_some(), "{f:?}");
    }

    #[test]
    fn our_own_process_is_alive_as_itself_only() {
        let me = i64::from(std::process::id());
        let st = start_time(me).expect("our own stat");
        assert!(alive_as(me, st));
        assert!(
            !alive_as(me, st + 1),
            "another start time is another process"
        );
        assert!(!alive_as(0, st));
        assert!(stat(-3).is_none());
    }

    #[test]
    fn environ_is_matched_whole_entries_only() {
        let me = i64::from(std::process::id());
        // cargo sets this for every test process.
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
        assert!(environ_has(me, &format!("CARGO_MANIFEST_DIR={dir}")));
        assert!(!environ_has(me, "CARGO_MANIFEST_DIR="));
        assert!(!environ_has(me, &format!("CARGO_MANIFEST_DIR={dir}x")));
    }
}
