//! The agent sandbox (B-12): what an agent (or a gate command running the
//! agent's code) may touch. An agent is hostile until checked: a prompt
//! injection turns it into code of someone else's, running as our user.
//!
//! Landlock (Linux ≥ 5.13, unprivileged) confines the child before it
//! execs: it may read and execute the system's directories, its `PATH` and
//! its command's own files; it may write only its worktree (and that
//! worktree's private git dir), its run dir and a home of its own. It
//! cannot read the database, the config file, `.env` or the daemon's home;
//! where the kernel has the scopes (ABI 6), it cannot signal the daemon.
//! The daemon's environment in `/proc/<pid>/environ` is kept from it by the
//! daemon being non-dumpable ([`harden_daemon`]) and the child holding no
//! capability at all, so not CAP_SYS_PTRACE even when the daemon is root
//! (Landlock's own ptrace scoping does not cover that read: measured).
//!
//! The ruleset is built in the parent (opening the paths allocates) and
//! only applied in the child between fork and exec, with two syscalls and
//! nothing else: a multithreaded parent's child may not allocate.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr,
    Scope, path_beneath_rules,
};

/// `ORCH_AGENT_SANDBOX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Landlock; start-up fails when the kernel does not have it.
    #[default]
    Landlock,
    /// No confinement: the agent can read whatever the daemon's user can.
    Off,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "landlock" => Some(Mode::Landlock),
            "off" => Some(Mode::Off),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Landlock => "landlock",
            Mode::Off => "off",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "ORCH_AGENT_SANDBOX=landlock but this kernel has no Landlock (needs Linux >= 5.13 \
         with landlock in the LSM list); set ORCH_AGENT_SANDBOX=off to run agents unconfined, \
         able to read the daemon's database and files"
    )]
    Unavailable,
    #[error("the agent sandbox could not be built: {0}")]
    Build(String),
}

/// What one child may touch.
#[derive(Debug, Default, Clone)]
pub struct Policy {
    /// Read and execute beneath these.
    pub read: Vec<PathBuf>,
    /// Read, write, create, remove, execute beneath these.
    pub write: Vec<PathBuf>,
    /// Never reachable: a rule at or above one of them is left out.
    pub secrets: Vec<PathBuf>,
}

/// System directories every agent reads (those that exist). `/run` is not
/// among them (sockets of other services live there), nor `/tmp` (the
/// child gets `TMPDIR` of its own) nor any home.
const SYSTEM_READ: &[&str] = &[
    "/bin",
    "/sbin",
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/opt",
    "/etc",
    "/proc",
    "/sys",
    "/nix/store",
    "/run/systemd/resolve",
];

/// What of `/etc` is read when a secret lies beneath `/etc` itself.
const ETC_FALLBACK: &[&str] = &[
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/localtime",
    "/etc/ld.so.cache",
    "/etc/alternatives",
    "/etc/gitconfig",
    "/etc/mime.types",
];

/// Devices a shell and its tools write to.
const DEVICES_RW: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/pts",
    "/dev/shm",
    "/dev/fd",
];

impl Policy {
    /// The system part plus `PATH` (a `node_modules/.bin` brings its
    /// `node_modules`) and the directories of absolute paths the command
    /// names (its own scripts).
    pub fn for_command(command: &str, path_var: Option<&str>) -> Policy {
        let mut read: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
        for dir in path_var.unwrap_or_default().split(':') {
            let dir = Path::new(dir);
            if !dir.is_absolute() {
                continue; // "." or "" would be the daemon's working directory
            }
            read.push(dir.to_path_buf());
            if dir.ends_with("node_modules/.bin")
                && let Some(modules) = dir.parent()
            {
                read.push(modules.to_path_buf());
            }
        }
        for word in command.split(|c: char| c.is_whitespace() || "'\";|&()<>=".contains(c)) {
            let p = Path::new(word);
            if p.is_absolute()
                && p.is_file()
                && let Some(parent) = p.parent()
            {
                read.push(parent.to_path_buf());
            }
        }
        Policy {
            read,
            write: Vec::new(),
            secrets: Vec::new(),
        }
    }
}

/// A ruleset built in the parent, applied by the child before it execs.
#[derive(Debug, Clone)]
pub struct Prepared {
    fd: Arc<OwnedFd>,
    /// Paths left out because a secret lies beneath them.
    pub dropped: Vec<PathBuf>,
}

impl Prepared {
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The Landlock ABI version of this kernel; 0 when it has none.
pub fn abi_version() -> i32 {
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns a
    // number; it takes no pointer it would write to.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    if v < 0 { 0 } else { v as i32 }
}

/// Fails when `mode` asks for Landlock the kernel does not have.
pub fn check_available(mode: Mode) -> Result<(), SandboxError> {
    if mode == Mode::Landlock && abi_version() < 1 {
        return Err(SandboxError::Unavailable);
    }
    Ok(())
}

/// Whether `rule` would reach `secret`: it is the secret or one of its
/// ancestors (both made absolute and canonical where they exist).
fn covers(rule: &Path, secret: &Path) -> bool {
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    canon(secret).starts_with(canon(rule))
}

/// Builds the ruleset of `policy`. Rules that would reach a secret are
/// left out (named in `dropped`); `/etc` then shrinks to what tools need.
pub fn prepare(policy: &Policy) -> Result<Prepared, SandboxError> {
    let abi = ABI::V5;
    let mut dropped = Vec::new();
    let keep = |paths: &[PathBuf], dropped: &mut Vec<PathBuf>| -> Vec<PathBuf> {
        let mut out = Vec::new();
        for p in paths {
            if policy.secrets.iter().any(|s| covers(p, s)) {
                dropped.push(p.clone());
                if p == Path::new("/etc") {
                    out.extend(
                        ETC_FALLBACK
                            .iter()
                            .map(PathBuf::from)
                            .filter(|e| !policy.secrets.iter().any(|s| covers(e, s))),
                    );
                }
            } else if p.exists() && !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    };
    let read = keep(&policy.read, &mut dropped);
    let mut write_paths = policy.write.clone();
    write_paths.extend(DEVICES_RW.iter().map(PathBuf::from));
    let write = keep(&write_paths, &mut dropped);
    let err = |e: landlock::RulesetError| SandboxError::Build(e.to_string());
    let created = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .scope(Scope::from_all(ABI::V6))
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(&read, AccessFs::from_read(abi)))
        .map_err(err)?
        .add_rules(path_beneath_rules(&write, AccessFs::from_all(abi)))
        .map_err(err)?;
    let fd: Option<OwnedFd> = created.into();
    let fd = fd.ok_or(SandboxError::Unavailable)?;
    Ok(Prepared {
        fd: Arc::new(fd),
        dropped,
    })
}

/// Drops every capability, for good: a daemon running as root would
/// otherwise hand CAP_SYS_PTRACE (read any `/proc/<pid>/environ`, even of
/// a non-dumpable process) and CAP_DAC_OVERRIDE to its agents, and exec
/// gives uid 0 the whole bounding set back unless it is emptied. Without
/// CAP_SETPCAP (a daemon that is not root) the bounding set is already
/// out of reach and emptying it is skipped. Syscalls on stack data only.
fn drop_capabilities() -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    // SAFETY: prctl takes integers; capset reads the two structs on the
    // stack, laid out as the kernel's v3 header and its two data words.
    unsafe {
        for cap in 0..64 {
            // EINVAL past the last capability, EPERM without CAP_SETPCAP.
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        let mut header = Header {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// In the child, between fork and exec: no capabilities, no new privileges (Landlock needs
/// it without CAP_SYS_ADMIN, and a setuid binary must not lift the
/// confinement), then the ruleset. Two syscalls: nothing that allocates.
pub fn restrict_in_child(fd: RawFd) -> std::io::Result<()> {
    drop_capabilities()?;
    // SAFETY: prctl and landlock_restrict_self take integers only.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes the daemon non-dumpable: no process of the same user may read its
/// `/proc/<pid>/environ` or memory, nor attach to it (a root agent still
/// could, which is what the Landlock domain stops). Called once at start.
pub fn harden_daemon() {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes integers only.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "could not make the daemon non-dumpable: a process of the same user can read its environment"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_above_a_secret_is_left_out_and_etc_shrinks() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("db").join("orchestrator.db");
        std::fs::create_dir_all(secret.parent().unwrap()).unwrap();
        std::fs::write(&secret, "x").unwrap();
        let p = Policy {
            read: vec![dir.path().to_path_buf(), "/usr".into()],
            write: vec![dir.path().join("db")],
            secrets: vec![secret.clone(), "/etc/orchestrator/config.toml".into()],
        };
        if abi_version() < 1 {
            return;
        }
        let prepared = prepare(&p).unwrap();
        assert!(prepared.dropped.contains(&dir.path().to_path_buf()));
        assert!(prepared.dropped.contains(&dir.path().join("db")));
        assert!(
            prepared.dropped.contains(&PathBuf::from("/etc")) || !p.read.contains(&"/etc".into())
        );
        assert!(!prepared.dropped.contains(&PathBuf::from("/usr")));
    }

    #[test]
    fn policy_reads_path_and_the_commands_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("agent.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let p = Policy::for_command(
            &format!("FOO=1 '{}' --x", script.display()),
            Some("/opt/node/bin:.:/srv/app/node_modules/.bin"),
        );
        assert!(p.read.contains(&dir.path().to_path_buf()));
        assert!(p.read.contains(&PathBuf::from("/opt/node/bin")));
        assert!(p.read.contains(&PathBuf::from("/srv/app/node_modules")));
        assert!(!p.read.iter().any(|r| r == Path::new(".")));
        assert!(!p.read.iter().any(|r| r == Path::new("/tmp")));
    }

    #[test]
    fn modes_parse() {
        assert_eq!(Mode::parse(" Landlock "), Some(Mode::Landlock));
        assert_eq!(Mode::parse("off"), Some(Mode::Off));
        assert_eq!(Mode::parse("bwrap"), None);
    }
}
