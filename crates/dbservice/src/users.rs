//! One OS user (and group of the same name and id) per instance.
//!
//! Every instance's PostgreSQL, its `pg_basebackup` and the client side of
//! its WAL agent run as a system user of its own, `atrest-<instance id>`,
//! whose uid and gid come from a configured range and are kept in the
//! instance's record (so a host rebuilt from the same data dir gets the
//! same ids back). Its files, socket and processes are that user's: no
//! instance can read, list or signal another's. The users are made and
//! removed with the shadow tools (`groupadd`, `useradd`, `userdel`), which
//! lock `/etc/passwd` and `/etc/group` against each other.
//!
//! Each user's comment (GECOS) is `atrest <host tag> <instance id>`: the
//! host tag names the atrest server (its run directory), so an operator or
//! a test can find the users one server made.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::process::Command;

use crate::host::run;
use crate::tree::Owner;
use crate::{DbError, Result};

/// An instance's OS user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl OsUser {
    pub(crate) fn owner(&self) -> Owner {
        Owner {
            uid: self.uid,
            gid: self.gid,
        }
    }
}

/// The user name of instance `id`.
pub(crate) fn name_of(id: &str) -> String {
    format!("atrest-{id}")
}

fn by_name(name: &str) -> Result<Option<nix::unistd::User>> {
    nix::unistd::User::from_name(name)
        .map_err(|e| DbError::Failed(format!("looking up the OS user '{name}': {e}")))
}

fn uid_taken(uid: u32) -> Result<bool> {
    let u = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .map_err(|e| DbError::Failed(format!("looking up uid {uid}: {e}")))?;
    let g = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(uid))
        .map_err(|e| DbError::Failed(format!("looking up gid {uid}: {e}")))?;
    Ok(u.is_some() || g.is_some())
}

/// The first id of `range` that no user or group of this host has and
/// `reserved` (other instances' ids) does not hold.
pub(crate) fn free_id(range: &RangeInclusive<u32>, reserved: &BTreeSet<u32>) -> Result<u32> {
    for id in range.clone() {
        if !reserved.contains(&id) && !uid_taken(id)? {
            return Ok(id);
        }
    }
    Err(DbError::Unavailable(format!(
        "no free uid is left in the instances' range {}-{} (--db-uid-range)",
        range.start(),
        range.end()
    )))
}

/// Makes sure the user `name` exists with uid and gid `id`: creates it (and
/// its group) if missing. A user or group of that name with another id, or
/// that id under another name, is a conflict this refuses to paper over.
pub(crate) fn ensure(name: &str, id: u32, comment: &str) -> Result<OsUser> {
    if let Some(u) = by_name(name)? {
        let (uid, gid) = (u.uid.as_raw(), u.gid.as_raw());
        if uid != id || gid != id {
            return Err(DbError::Failed(format!(
                "the OS user '{name}' exists with uid {uid} and gid {gid}, not {id}: remove it or give the instance its own user back"
            )));
        }
        return Ok(OsUser {
            name: name.to_owned(),
            uid,
            gid,
        });
    }
    if uid_taken(id)? {
        return Err(DbError::Failed(format!(
            "uid or gid {id}, the OS user '{name}''s, belongs to another user or group of this host"
        )));
    }
    let group = nix::unistd::Group::from_name(name)
        .map_err(|e| DbError::Failed(format!("looking up the group '{name}': {e}")))?;
    if group.is_none() {
        run(
            Command::new("groupadd")
                .args(["--system", "--gid", &id.to_string()])
                .arg(name),
            "groupadd",
        )?;
    }
    let made = run(
        Command::new("useradd")
            .args(["--system", "--no-create-home", "--home-dir", "/nonexistent"])
            .args(["--shell", "/usr/sbin/nologin"])
            .args(["--uid", &id.to_string(), "--gid", &id.to_string()])
            .args(["--comment", comment])
            .arg(name),
        "useradd",
    );
    if let Err(e) = made {
        let _ = run(Command::new("groupdel").arg(name), "groupdel");
        return Err(e);
    }
    tracing::info!(user = name, uid = id, "created the instance's OS user");
    Ok(OsUser {
        name: name.to_owned(),
        uid: id,
        gid: id,
    })
}

/// Removes the user `name` and its group (nothing there is fine). Only a
/// user whose comment is `comment` is removed: never one atrest did not
/// make for this instance.
pub(crate) fn remove(name: &str, comment: &str) {
    match by_name(name) {
        Ok(Some(u)) if u.gecos.to_str().ok() == Some(comment) => {
            if let Err(e) = run(Command::new("userdel").arg(name), "userdel") {
                tracing::error!(user = name, error = %e, "removing the instance's OS user failed");
                return;
            }
            if nix::unistd::Group::from_name(name).is_ok_and(|g| g.is_some()) {
                let _ = run(Command::new("groupdel").arg(name), "groupdel");
            }
            tracing::info!(user = name, "removed the instance's OS user");
        }
        Ok(Some(_)) => {
            tracing::warn!(
                user = name,
                "not removing an OS user atrest did not make for this instance"
            );
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(user = name, error = %e, "looking up the instance's OS user failed");
        }
    }
}

/// Parses `START-END` (a uid range of at least one id, none of them below
/// 1000 or above 2^31 - 1, and not crossing 65534, `nobody`).
pub fn parse_range(s: &str) -> std::result::Result<RangeInclusive<u32>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("'{s}' is not a range START-END"))?;
    let a: u32 = a
        .trim()
        .parse()
        .map_err(|_| format!("'{a}' is not a uid"))?;
    let b: u32 = b
        .trim()
        .parse()
        .map_err(|_| format!("'{b}' is not a uid"))?;
    if a > b {
        return Err(format!("the range {a}-{b} is empty"));
    }
    if a < 1000 || b > i32::MAX as u32 {
        return Err(format!(
            "the range {a}-{b} must lie within 1000-{} (ids below 1000 are the system's)",
            i32::MAX
        ));
    }
    if (a..=b).contains(&65534) || (a..=b).contains(&65535) {
        return Err(format!(
            "the range {a}-{b} holds 65534/65535 (nobody, and the invalid id)"
        ));
    }
    Ok(a..=b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked() {
        assert_eq!(parse_range("70000-79999").unwrap(), 70000..=79999);
        assert_eq!(parse_range("2000-2000").unwrap(), 2000..=2000);
        for bad in [
            "",
            "70000",
            "a-b",
            "9-1",
            "0-100",
            "999-2000",
            "60000-70000",
            "1000-4294967295",
        ] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_fit_the_shadow_tools() {
        let n = name_of("db-0123456789abcdef");
        assert_eq!(n, "atrest-db-0123456789abcdef");
        // useradd's limit is 32 characters.
        assert!(n.len() <= 32);
    }
}
