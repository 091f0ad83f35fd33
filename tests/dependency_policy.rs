//! The dependency policy (issue 16): what `cargo deny`'s `sources`,
//! `licenses` and `bans` checks would say, judged on `cargo metadata` of the
//! locked tree, so CI runs it with nothing to install. (Its `advisories`
//! check needs the RustSec database, which CI here cannot fetch; see
//! `docs/adr/0018-dependency-policy.md`.)
//!
//! - sources: every crate comes from crates.io (no git, path or other
//!   registry dependency but this crate itself);
//! - licenses: every crate's SPDX expression is satisfied by the allowed
//!   list below;
//! - bans: one SQLite in the process (two copies of SQLite in one process
//!   break its POSIX file locks, and the WAL with them), and no OpenSSL (TLS
//!   is rustls).
//!
//! Each rule is also run on a bad example, so a rule that could no longer
//! fail fails here instead.

use serde_json::Value;

const CRATES_IO: &str = "registry+https://github.com/rust-lang/crates.io-index";

/// Permissive licenses only: the daemon is shipped as one binary.
const ALLOWED: &[&str] = &[
    "MIT",
    "MIT-0",
    "Apache-2.0",
    "Apache-2.0 WITH LLVM-exception",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Zlib",
    "0BSD",
    "BSL-1.0",
    "CC0-1.0",
    "Unlicense",
    "Unicode-3.0",
    "Unicode-DFS-2016",
    "MPL-2.0",
    "CDLA-Permissive-2.0",
];

const BANNED: &[(&str, &str)] = &[
    (
        "openssl-sys",
        "TLS is rustls; OpenSSL would be a second TLS stack",
    ),
    (
        "native-tls",
        "TLS is rustls; OpenSSL would be a second TLS stack",
    ),
];

/// Crates of which the tree may hold one version only.
const ONE_VERSION: &[(&str, &str)] = &[(
    "libsqlite3-sys",
    "two SQLite copies in one process break its file locks",
)];

/// The tree that is built here: this host's platform (other platforms'
/// crates are never downloaded, so `--offline` could not resolve them).
/// Read once; the tests share it.
fn metadata() -> &'static Value {
    static META: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    META.get_or_init(read_metadata)
}

fn host() -> String {
    let out = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc names its host")
        .to_string()
}

fn read_metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--offline",
            "--filter-platform",
            &host(),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// (name, version, source, license) of every package in the resolved tree.
fn packages(meta: &Value) -> Vec<(String, String, Option<String>, Option<String>)> {
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().map(str::to_string);
            (
                s("name").unwrap_or_default(),
                s("version").unwrap_or_default(),
                s("source"),
                s("license"),
            )
        })
        .collect()
}

/// Is the SPDX expression satisfied by `allowed`? `OR` takes either side,
/// `AND` needs both, parentheses group, `A WITH B` is one license; the old
/// `MIT/Apache-2.0` form reads as `OR`.
fn satisfied(expr: &str, allowed: &[&str]) -> bool {
    let spaced = expr
        .replace('(', " ( ")
        .replace(')', " ) ")
        .replace('/', " OR ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    let mut pos = 0;
    let ok = or_expr(&tokens, &mut pos, allowed);
    ok == Some(true) && pos == tokens.len()
}

fn or_expr(t: &[&str], pos: &mut usize, allowed: &[&str]) -> Option<bool> {
    let mut v = and_expr(t, pos, allowed)?;
    while t.get(*pos) == Some(&"OR") {
        *pos += 1;
        v |= and_expr(t, pos, allowed)?;
    }
    Some(v)
}

fn and_expr(t: &[&str], pos: &mut usize, allowed: &[&str]) -> Option<bool> {
    let mut v = atom(t, pos, allowed)?;
    while t.get(*pos) == Some(&"AND") {
        *pos += 1;
        v &= atom(t, pos, allowed)?;
    }
    Some(v)
}

fn atom(t: &[&str], pos: &mut usize, allowed: &[&str]) -> Option<bool> {
    match *t.get(*pos)? {
        "(" => {
            *pos += 1;
            let v = or_expr(t, pos, allowed)?;
            (t.get(*pos) == Some(&")")).then(|| *pos += 1)?;
            Some(v)
        }
        ")" | "OR" | "AND" | "WITH" => None,
        id => {
            *pos += 1;
            let mut name = id.to_string();
            if t.get(*pos) == Some(&"WITH") {
                name = format!("{name} WITH {}", t.get(*pos + 1)?);
                *pos += 2;
            }
            Some(allowed.contains(&name.as_str()))
        }
    }
}

type Pkg = (String, String, Option<String>, Option<String>);

fn source_offences(pkgs: &[Pkg]) -> Vec<String> {
    pkgs.iter()
        .filter(|(name, ..)| name != env!("CARGO_PKG_NAME"))
        .filter(|(_, _, src, _)| src.as_deref() != Some(CRATES_IO))
        .map(|(n, v, src, _)| format!("{n} {v} comes from {src:?}, not crates.io"))
        .collect()
}

fn license_offences(pkgs: &[Pkg]) -> Vec<String> {
    pkgs.iter()
        .filter(|(name, ..)| name != env!("CARGO_PKG_NAME"))
        .filter_map(|(n, v, _, lic)| match lic {
            None => Some(format!("{n} {v} declares no SPDX license")),
            Some(l) if !satisfied(l, ALLOWED) => Some(format!("{n} {v}: {l} is not allowed")),
            _ => None,
        })
        .collect()
}

fn ban_offences(pkgs: &[Pkg]) -> Vec<String> {
    let mut out = Vec::new();
    for (n, v, ..) in pkgs {
        if let Some((_, why)) = BANNED.iter().find(|(b, _)| b == n) {
            out.push(format!("{n} {v} is banned: {why}"));
        }
    }
    for (one, why) in ONE_VERSION {
        let versions: Vec<&str> = pkgs
            .iter()
            .filter(|(n, ..)| n == one)
            .map(|(_, v, ..)| v.as_str())
            .collect();
        if versions.len() > 1 {
            out.push(format!("{one} in {versions:?}: {why}"));
        }
    }
    out
}

fn assert_none(rule: &str, found: Vec<String>) {
    assert!(found.is_empty(), "{rule}:\n{}", found.join("\n"));
}

#[test]
fn every_crate_comes_from_crates_io() {
    assert_none("sources", source_offences(&packages(metadata())));
}

#[test]
fn every_crate_has_an_allowed_license() {
    assert_none("licenses", license_offences(&packages(metadata())));
}

#[test]
fn no_banned_crate_and_one_sqlite() {
    let pkgs = packages(metadata());
    // The tree is the one meant: the SQLite the rule is about is in it.
    assert!(pkgs.iter().any(|(n, ..)| n == "libsqlite3-sys"));
    assert_none("bans", ban_offences(&pkgs));
}

#[test]
fn the_rules_catch_bad_trees() {
    let p = |n: &str, v: &str, src: Option<&str>, lic: Option<&str>| -> Pkg {
        (n.into(), v.into(), src.map(Into::into), lic.map(Into::into))
    };
    let bad = vec![
        p(
            "forked",
            "1.0.0",
            Some("git+https://example.org/x#abc"),
            Some("MIT"),
        ),
        p("copyleft", "1.0.0", Some(CRATES_IO), Some("GPL-3.0-only")),
        p("both", "1.0.0", Some(CRATES_IO), Some("MIT AND GPL-2.0")),
        p("unlabelled", "1.0.0", Some(CRATES_IO), None),
        p("openssl-sys", "0.9.0", Some(CRATES_IO), Some("MIT")),
        p("libsqlite3-sys", "0.30.1", Some(CRATES_IO), Some("MIT")),
        p("libsqlite3-sys", "0.28.0", Some(CRATES_IO), Some("MIT")),
    ];
    assert_eq!(source_offences(&bad).len(), 1);
    assert_eq!(
        license_offences(&bad).len(),
        3,
        "{:?}",
        license_offences(&bad)
    );
    assert_eq!(ban_offences(&bad).len(), 2, "{:?}", ban_offences(&bad));
    for (expr, ok) in [
        ("MIT OR Apache-2.0", true),
        ("MIT/Apache-2.0", true),
        ("(MIT OR Apache-2.0) AND Unicode-3.0", true),
        ("Apache-2.0 WITH LLVM-exception OR GPL-3.0", true),
        ("GPL-3.0 OR LGPL-2.1", false),
        ("MIT AND (GPL-3.0 OR LGPL-2.1)", false),
        ("MIT OR", false),
        ("(MIT", false),
        ("", false),
    ] {
        assert_eq!(satisfied(expr, ALLOWED), ok, "{expr}");
    }
}
