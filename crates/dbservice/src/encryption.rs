//! Changing an instance's encryption (R2). A `tde` instance is encrypted
//! from its creation and stays so; a `disk` instance can have encryption
//! enabled, its key replaced, or encryption turned off. Each is one
//! command that restarts the instance: enabling and disabling copy the
//! data into a new disk (the disk service's conversion) while the instance
//! is stopped; replacing the key re-wraps the disk's data key, for the
//! instance and its replicas alike. Replicas follow their primary and
//! cannot be changed on their own.

use std::time::Duration;

use atrest_diskservice::JobState;
use atrest_kms::Caller;

use crate::{Class, DbError, DbService, InstanceView, Result, SERVICE, lock};

/// An encryption change.
#[derive(Debug, Clone)]
pub enum EncryptionChange {
    /// Encrypt the instance's data under a key (class `disk`).
    Enable {
        /// The key; `None` for the database service key.
        key_id: Option<String>,
    },
    /// Stop encrypting it (class `disk`).
    Disable,
    /// Re-wrap its data key under another key.
    SetKey {
        /// The key; `None` for the database service key.
        key_id: Option<String>,
    },
}

impl DbService {
    pub(crate) fn key_or_service_key(
        &self,
        caller: &Caller,
        key_id: Option<&str>,
    ) -> Result<String> {
        match key_id {
            Some(k) => Ok(k.to_owned()),
            None => Ok(self
                .kms
                .service_session(SERVICE, &caller.region)?
                .service_key(&caller.account)?),
        }
    }

    /// Applies `change` to the caller's instance `name`, restarting it.
    pub fn change_encryption(
        &self,
        caller: &Caller,
        name: &str,
        change: &EncryptionChange,
    ) -> Result<InstanceView> {
        let bin = self.bin()?;
        self.host()?;
        let _ops = lock(&self.ops);
        let mut rec = self.own(caller, name)?;
        if let Some(p) = &rec.primary {
            let p = lock(&self.records)
                .get(p)
                .map_or_else(|| p.clone(), |r| r.name.clone());
            return Err(DbError::Conflict(format!(
                "{} is a replica: its encryption follows its primary {p}; change the primary's",
                rec.name
            )));
        }
        let disk = self.disks.describe_disk(caller, &rec.disk)?;
        let replicas: Vec<crate::Record> = lock(&self.records)
            .values()
            .filter(|r| r.primary.as_deref() == Some(rec.id.as_str()))
            .cloned()
            .collect();
        match change {
            EncryptionChange::Disable if rec.class == Class::Tde => {
                Err(DbError::Conflict(format!(
                    "instance {} is class tde: its encryption cannot be turned off",
                    rec.name
                )))
            }
            EncryptionChange::Enable { .. } if disk.encrypted => Err(DbError::Conflict(format!(
                "instance {} is encrypted already; to use another key, set its key",
                rec.name
            ))),
            EncryptionChange::Disable if !disk.encrypted => Err(DbError::Conflict(format!(
                "instance {} is not encrypted",
                rec.name
            ))),
            EncryptionChange::SetKey { .. } if !disk.encrypted => Err(DbError::Conflict(format!(
                "instance {} is not encrypted; enable encryption instead",
                rec.name
            ))),
            EncryptionChange::Enable { .. } | EncryptionChange::Disable if !replicas.is_empty() => {
                Err(DbError::Conflict(format!(
                    "instance {} has replicas ({}); delete them first, then create them again",
                    rec.name,
                    replicas
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
            EncryptionChange::SetKey { key_id } => {
                self.check_key(&rec)?;
                let key = self.key_or_service_key(caller, key_id.as_deref())?;
                self.disks.change_key(caller, &rec.disk, &key)?;
                for r in &replicas {
                    self.disks.change_key(caller, &r.disk, &key)?;
                }
                for r in std::iter::once(&rec).chain(&replicas) {
                    if r.running {
                        self.shut(Some(&bin), r);
                        self.bring_up(&bin, r)?;
                    }
                }
                tracing::info!(instance = %rec.name, "instance key replaced");
                Ok(self.view(&rec))
            }
            EncryptionChange::Enable { key_id } => {
                let key = self.key_or_service_key(caller, key_id.as_deref())?;
                self.move_to_new_disk(caller, &bin, &mut rec, true, Some(&key))
            }
            EncryptionChange::Disable => {
                self.check_key(&rec)?;
                self.move_to_new_disk(caller, &bin, &mut rec, false, None)
            }
        }
    }

    /// Stops the instance, copies its disk into a new one (encrypted or
    /// not), switches the instance to it and starts it; the old disk is
    /// deleted. On failure the instance starts again on its old disk.
    fn move_to_new_disk(
        &self,
        caller: &Caller,
        bin: &crate::pg::PgBin,
        rec: &mut crate::Record,
        encrypted: bool,
        key: Option<&str>,
    ) -> Result<InstanceView> {
        let was_running = rec.running;
        self.shut(Some(bin), rec);
        let job = match self.disks.convert(caller, &rec.disk, encrypted, key) {
            Ok(j) => j,
            Err(e) => {
                if was_running {
                    let _ = self.bring_up(bin, rec);
                }
                return Err(e.into());
            }
        };
        let done = loop {
            let j = self.disks.job(caller, &job.id)?;
            match j.state {
                JobState::Running => std::thread::sleep(Duration::from_millis(200)),
                JobState::Succeeded => break Ok(()),
                JobState::Failed => {
                    break Err(DbError::Failed(format!(
                        "copying {} into a new disk failed: {}",
                        rec.disk,
                        j.error.unwrap_or_default()
                    )));
                }
            }
        };
        let target = job.target.unwrap_or_default();
        if let Err(e) = done {
            let _ = self.disks.delete_disk(caller, &target);
            if was_running {
                let _ = self.bring_up(bin, rec);
            }
            return Err(e);
        }
        let old = std::mem::replace(&mut rec.disk, target);
        self.save(rec)?;
        if let Err(e) = self.disks.delete_disk(caller, &old) {
            tracing::error!(disk = %old, error = %e, "deleting an instance's old disk failed");
        }
        if was_running {
            self.bring_up(bin, rec)?;
        }
        tracing::info!(instance = %rec.name, encrypted, "instance moved to a new disk");
        Ok(self.view(rec))
    }
}
