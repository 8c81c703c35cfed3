//! Builds `atrest_guard` (guard/atrest_guard.c), the PostgreSQL server
//! extension that keeps a database's CREATEROLE master user away from the
//! server's files and programs, and embeds it in the crate (src/guard.rs).
//!
//! It is compiled against the server headers of the PostgreSQL found here:
//! `$ATREST_PG_CONFIG` if set (and nothing else then), else `pg_config` on
//! PATH, else the newest `/usr/lib/postgresql/<N>/bin/pg_config`. Without
//! usable headers the crate still builds, without the guard, and says so
//! in one warning; with them, a failed compile fails the build.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = "guard/atrest_guard.c";
const OBJECT: &str = "atrest_guard.so";

/// A build failure, shown as its message.
struct Failure(String);

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A PostgreSQL whose server headers are installed.
struct Headers {
    pg_config: PathBuf,
    /// `pg_config --includedir-server`, which holds `postgres.h`.
    include: PathBuf,
    /// The major version, e.g. 15.
    major: u32,
}

fn main() -> Result<(), Failure> {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ATREST_PG_CONFIG");
    println!("cargo:rerun-if-env-changed=PATH");
    let out = PathBuf::from(
        std::env::var_os("OUT_DIR").ok_or_else(|| Failure("OUT_DIR is not set".into()))?,
    );
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR")
            .ok_or_else(|| Failure("CARGO_MANIFEST_DIR is not set".into()))?,
    );

    let generated = match find_headers() {
        Ok(h) => {
            // Another PostgreSQL's headers (an upgrade) rebuild the guard.
            println!("cargo:rerun-if-changed={}", h.pg_config.display());
            println!(
                "cargo:rerun-if-changed={}",
                h.include.join("pg_config.h").display()
            );
            let object = out.join(OBJECT);
            compile(&h, &manifest.join(SOURCE), &object)?;
            let object = object
                .to_str()
                .ok_or_else(|| Failure(format!("OUT_DIR is not UTF-8: {}", object.display())))?;
            format!(
                "Some(Embedded {{ major: {}, object: include_bytes!({object:?}) }})\n",
                h.major
            )
        }
        Err(why) => {
            // Installing the headers later should rebuild: their package
            // adds files there (pgxs).
            if Path::new("/usr/lib/postgresql").is_dir() {
                println!("cargo:rerun-if-changed=/usr/lib/postgresql");
            }
            println!(
                "cargo:warning=atrest_guard not built ({why}): database master users get no CREATEROLE on PostgreSQL <= 15 without the guard; install postgresql-server-dev-N (N: the PostgreSQL major version) and rebuild"
            );
            "None\n".to_owned()
        }
    };
    std::fs::write(out.join("guard.rs"), generated)
        .map_err(|e| Failure(format!("writing {}: {e}", out.join("guard.rs").display())))
}

/// The first usable PostgreSQL server headers, or why there are none.
fn find_headers() -> Result<Headers, String> {
    if let Some(configured) = std::env::var_os("ATREST_PG_CONFIG").filter(|v| !v.is_empty()) {
        // Set: that one or none, so that a build can be made without.
        return headers(Path::new(&configured));
    }
    let mut why = String::from("no pg_config on PATH or under /usr/lib/postgresql");
    for candidate in candidates() {
        match headers(&candidate) {
            Ok(h) => return Ok(h),
            Err(e) => why = e,
        }
    }
    Err(why)
}

/// `pg_config` on PATH, then the newest `/usr/lib/postgresql/<N>/bin/pg_config`.
fn candidates() -> Vec<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path)
        .map(|d| d.join("pg_config"))
        .find(|p| p.is_file());
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let p = e.path().join("bin").join("pg_config");
            p.is_file().then_some((v, p))
        })
        .collect();
    versions.sort();
    on_path
        .into_iter()
        .chain(versions.into_iter().rev().map(|(_, p)| p))
        .collect()
}

/// The server headers `pg_config` names, if they are installed.
fn headers(pg_config: &Path) -> Result<Headers, String> {
    let include = PathBuf::from(pg_config_value(pg_config, "--includedir-server")?);
    if !include.join("postgres.h").is_file() {
        return Err(format!(
            "{} has no postgres.h (from {})",
            include.display(),
            pg_config.display()
        ));
    }
    let version = pg_config_value(pg_config, "--version")?;
    let major = version
        .strip_prefix("PostgreSQL ")
        .map(|v| {
            v.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or_else(|| format!("{} --version said {version:?}", pg_config.display()))?;
    if major < 14 {
        // The guard's hook has the PostgreSQL 14 signature.
        return Err(format!("PostgreSQL {major} is older than 14"));
    }
    Ok(Headers {
        pg_config: pg_config.to_path_buf(),
        include,
        major,
    })
}

/// One line of `pg_config <arg>`.
fn pg_config_value(pg_config: &Path, arg: &str) -> Result<String, String> {
    let out = Command::new(pg_config)
        .arg(arg)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", pg_config.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {arg} failed ({})",
            pg_config.display(),
            out.status
        ));
    }
    let text = String::from_utf8(out.stdout)
        .map_err(|_| format!("{} {arg} printed non-UTF-8", pg_config.display()))?;
    Ok(text.trim().to_owned())
}

/// Compiles `source` into the shared object `object`; any failure is the
/// build's (the headers are there, so the guard must be too).
fn compile(h: &Headers, source: &Path, object: &Path) -> Result<(), Failure> {
    let compiler = cc::Build::new().opt_level(2).debug(false).get_compiler();
    let mut cmd = compiler.to_command();
    cmd.args(["-shared", "-fPIC", "-O2", "-Wall", "-Wextra"])
        // PostgreSQL itself is built with these, and its inline functions
        // assume them.
        .args(["-fno-strict-aliasing", "-fwrapv"])
        // -isystem: warnings in PostgreSQL's headers are not the guard's.
        .arg("-isystem")
        .arg(&h.include)
        .arg("-o")
        .arg(object)
        .arg(source);
    let out = cmd.output().map_err(|e| {
        Failure(format!(
            "cannot run the C compiler {:?}: {e}",
            compiler.path()
        ))
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(Failure(format!(
            "compiling {} against PostgreSQL {} ({}) failed ({}):\n{stderr}",
            source.display(),
            h.major,
            h.include.display(),
            out.status
        )));
    }
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        println!("cargo:warning=atrest_guard: {line}");
    }
    Ok(())
}
