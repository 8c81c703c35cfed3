//! Changes to a running instance's shape: parameters, disk size, and
//! clones (all refused while its key is unusable, R5).

use std::collections::BTreeMap;

use atrest_kms::Caller;

use crate::{DbError, DbService, InstanceView, Result, host, lock, params};

/// The parameters to set (`Some`) or reset (`None`), under PostgreSQL's
/// spelling of their names; only those on the allow-list ([`params`]).
fn check_parameters(
    params: &BTreeMap<String, Option<String>>,
) -> Result<BTreeMap<&'static str, Option<&str>>> {
    if params.is_empty() {
        return Err(DbError::Invalid("give at least one parameter".into()));
    }
    let mut checked = BTreeMap::new();
    for (k, v) in params {
        let name = match v {
            Some(v) => params::check(k, v)?,
            None => params::check_reset(k)?,
        };
        // Names ignore case: `Work_Mem` and `work_mem` are one parameter.
        if checked.insert(name, v.as_deref()).is_some() {
            return Err(DbError::Invalid(format!(
                "parameter '{name}' is given more than once"
            )));
        }
    }
    Ok(checked)
}

impl DbService {
    /// Sets (`Some`) or resets (`None`) PostgreSQL parameters and restarts
    /// the instance so that each takes effect. A value PostgreSQL refuses
    /// leaves the instance on its previous parameters.
    pub fn set_parameters(
        &self,
        caller: &Caller,
        name: &str,
        params: &BTreeMap<String, Option<String>>,
    ) -> Result<InstanceView> {
        let params = check_parameters(params)?;
        let bin = self.bin()?;
        self.host()?;
        let _ops = lock(&self.ops);
        let mut rec = self.own(caller, name)?;
        self.check_key(&rec)?;
        let before = rec.clone();
        for (k, v) in params {
            match v {
                Some(v) => rec.parameters.insert(k.to_owned(), v.to_owned()),
                None => rec.parameters.remove(k),
            };
        }
        if rec.running {
            self.shut(Some(&bin), &rec);
            if let Err(e) = self.bring_up(&bin, &rec) {
                tracing::warn!(instance = %rec.name, error = %e, "new parameters refused; starting with the previous ones");
                self.bring_up(&bin, &before)?;
                return Err(DbError::Invalid(format!(
                    "PostgreSQL did not start with these parameters; the instance runs with its previous ones ({e})"
                )));
            }
        }
        self.save(&rec)?;
        Ok(self.view(&rec))
    }

    /// Grows the instance's disk and its file system (a restart).
    pub fn resize(&self, caller: &Caller, name: &str, size: u64) -> Result<InstanceView> {
        let bin = self.bin()?;
        self.host()?;
        let _ops = lock(&self.ops);
        let rec = self.own(caller, name)?;
        self.check_key(&rec)?;
        let disk = self.disks.describe_disk(caller, &rec.disk)?;
        if size <= disk.size {
            return Err(DbError::Invalid(format!(
                "the new size must be larger than the disk's {} bytes (disks only grow)",
                disk.size
            )));
        }
        let was_running = rec.running;
        self.shut(Some(&bin), &rec);
        let resized = self.disks.resize(caller, &rec.disk, size);
        self.mount_existing(&rec)?;
        let grown = resized.map_err(DbError::from).and_then(|_| {
            let device = lock(&self.live)
                .get(&rec.id)
                .map(|l| l.device.clone())
                .ok_or_else(|| DbError::Failed("the instance's device is gone".into()))?;
            // Offline: online growth needs a kernel that allows it here.
            let mnt = self.layout(&rec.id).mnt;
            host::unmount(&mnt)?;
            let grown = host::run(
                std::process::Command::new("e2fsck")
                    .args(["-f", "-p"])
                    .arg(&device),
                "e2fsck",
            )
            .and_then(|_| {
                host::run(
                    std::process::Command::new("resize2fs").arg(&device),
                    "resize2fs",
                )
            });
            host::mount(&device, &mnt)?;
            grown.map(drop)
        });
        if was_running {
            if let Err(e) = self.start_locked(&bin, &rec) {
                self.shut(Some(&bin), &rec);
                return Err(e);
            }
        } else {
            self.shut(Some(&bin), &rec);
        }
        grown?;
        Ok(self.view(&rec))
    }

    /// A new instance from a crash-consistent, instant copy of this one's
    /// disk (a snapshot and a clone: no data is copied), under the same
    /// key; it starts with crash recovery as a primary of its own.
    pub fn clone_instance(
        &self,
        caller: &Caller,
        name: &str,
        new_name: &str,
        port: Option<u16>,
    ) -> Result<InstanceView> {
        let bin = self.bin()?;
        self.host()?;
        let _ops = lock(&self.ops);
        let src = self.own(caller, name)?;
        self.check_key(&src)?;
        self.check_new_name(caller, new_name)?;
        let port = self.choose_port(port)?;
        let mut rec = self.new_record(
            caller,
            new_name,
            src.class,
            port,
            &src.master_username,
            None,
        )?;
        let snap = self.disks.create_snapshot(caller, &src.disk)?;
        let disk = self
            .disks
            .clone_snapshot(caller, &snap.id, &rec.managed_for());
        if let Err(e) = self.disks.delete_snapshot(caller, &snap.id) {
            tracing::warn!(snapshot = %snap.id, error = %e, "deleting a clone's snapshot failed");
        }
        rec.disk = disk?.id;
        // The copy's file system is the source's.
        rec.fs_uuid.clone_from(&src.fs_uuid);
        rec.parameters = src.parameters.clone();
        let rec = self.provision(
            &bin,
            &rec,
            false,
            |layout, user| {
                // A copy of a running server: its lock file names the
                // source's postmaster, and a replica's copy must not follow
                // its primary. Its files are the source's user's: they
                // become the copy's.
                let t = layout.tree()?;
                let err = |e: std::io::Error| DbError::Failed(format!("preparing the copy: {e}"));
                t.chown_all(crate::pg::PGDATA, user.owner()).map_err(err)?;
                let data = layout.pgdata_tree()?;
                // atrest.conf: an earlier release's settings file.
                for f in [
                    "postmaster.pid",
                    "standby.signal",
                    "recovery.signal",
                    "atrest.conf",
                ] {
                    data.remove(f).map_err(err)?;
                }
                // The copy's own agent token and replication password are
                // made when it needs them.
                t.remove(crate::pg::TOKEN).map_err(err)?;
                t.remove("atrest/replication.pw").map_err(err)?;
                t.chown_all(crate::pg::AGENT_DIR, user.owner())
                    .map_err(err)?;
                Ok(())
            },
            |_| Ok(()),
        )?;
        tracing::info!(source = %src.name, clone = %rec.name, "instance cloned");
        Ok(self.view(&rec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked() {
        let one = |k: &str, v: Option<&str>| BTreeMap::from([(k.to_owned(), v.map(str::to_owned))]);
        let ok = |k: &str, v: Option<&str>| {
            check_parameters(&one(k, v)).map(|m| {
                m.into_iter()
                    .map(|(k, v)| (k, v.map(str::to_owned)))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            ok("work_mem", Some("64MB")).ok(),
            Some(vec![("work_mem", Some("64MB".to_owned()))])
        );
        assert_eq!(ok("Work_Mem", None).ok(), Some(vec![("work_mem", None)]));
        assert!(ok("pg_stat_statements.max", Some("1000")).is_ok());
        assert!(matches!(
            check_parameters(&BTreeMap::new()),
            Err(DbError::Invalid(_))
        ));
        for refused in [
            "port",
            "archive_command",
            "archive_cleanup_command",
            "recovery_target_time",
            "ssl_cert_file",
            "dynamic_library_path",
            "session_preload_libraries",
            "log_directory",
        ] {
            assert!(
                matches!(
                    ok(refused, Some("1")),
                    Err(DbError::ParameterRefused(
                        params::ParamError::NotAllowed { .. }
                    ))
                ),
                "{refused}"
            );
            assert!(ok(refused, None).is_err(), "{refused}");
        }
        for bad in ["a b", "", "work-mem"] {
            assert!(
                matches!(
                    ok(bad, Some("1")),
                    Err(DbError::ParameterRefused(
                        params::ParamError::BadName { .. }
                    ))
                ),
                "{bad}"
            );
        }
        for (k, v) in [("work_mem", "1\n2"), ("work_mem", "lots"), ("jit", "maybe")] {
            assert!(
                matches!(
                    ok(k, Some(v)),
                    Err(DbError::ParameterRefused(
                        params::ParamError::BadValue { .. }
                    ))
                ),
                "{k} = {v}"
            );
        }
        let twice = BTreeMap::from([
            ("WORK_MEM".to_owned(), Some("1MB".to_owned())),
            ("work_mem".to_owned(), None),
        ]);
        assert!(matches!(check_parameters(&twice), Err(DbError::Invalid(_))));
    }
}
