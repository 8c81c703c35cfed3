//! Streaming replicas and switchover (R4, R8).
//!
//! A replica is an instance of its own (its own encrypted disk, port and
//! record) whose record names its primary. Its disk is always under the
//! primary's key: it is made with that key, and a key change of the
//! primary changes the replicas' keys with it. At every start a replica's
//! `atrest.conf` points `primary_conninfo` at its primary's current port,
//! and `standby.signal` is made, so the role is the record's, not a file's.
//!
//! Replication connects over 127.0.0.1 as `atrest_replication`, a role with
//! a random password kept in `atrest/replication.pw` on each member's
//! encrypted disk (only root can read it) and in the standby's
//! `atrest.conf` (only the OS user PostgreSQL runs as can read it).

use std::time::{Duration, Instant};

use atrest_diskservice::NewDisk;
use atrest_kms::Caller;

use crate::host::OsUser;
use crate::pg::{self, Layout, PgBin};
use crate::{DbError, DbService, InstanceView, Record, Result, lock, random_hex};

/// The role standbys connect as.
pub(crate) const REPLICATION_ROLE: &str = "atrest_replication";

/// How long a switchover waits for the standby to replay the primary's
/// last WAL, and a new standby to start streaming.
const CATCH_UP: Duration = Duration::from_secs(120);

fn replication_pw_path(layout: &Layout) -> std::path::PathBuf {
    layout.own().join("replication.pw")
}

/// The replication password kept on a member's disk.
pub(crate) fn replication_password(layout: &Layout) -> Option<zeroize::Zeroizing<String>> {
    std::fs::read_to_string(replication_pw_path(layout))
        .ok()
        .map(|s| zeroize::Zeroizing::new(s.trim().to_owned()))
        .filter(|s| !s.is_empty())
}

impl DbService {
    /// Settings of a standby: where its primary is.
    pub(crate) fn standby_settings(&self, rec: &Record) -> Vec<(String, String)> {
        let Some(primary) = &rec.primary else {
            return Vec::new();
        };
        let port = lock(&self.records).get(primary).map(|p| p.port);
        let layout = self.layout(&rec.id);
        let (Some(port), Some(pw)) = (port, replication_password(&layout)) else {
            tracing::error!(instance = %rec.name, "a replica without its primary or replication password");
            return Vec::new();
        };
        let conninfo = format!(
            "host=127.0.0.1 port={port} user={REPLICATION_ROLE} password={} application_name={}",
            pw.as_str(),
            rec.id
        );
        vec![
            ("primary_conninfo".into(), pg::quote(&conninfo)),
            ("recovery_target_timeline".into(), pg::quote("latest")),
        ]
    }

    /// Makes `standby.signal` for a replica before it starts.
    pub(crate) fn mark_standby(&self, user: &OsUser, rec: &Record) -> Result<()> {
        if rec.primary.is_some() {
            let layout = self.layout(&rec.id);
            pg::write_private(user, &layout.pgdata().join("standby.signal"), b"")?;
        }
        Ok(())
    }

    /// Ensures the primary has the replication role and its password on
    /// its disk; returns the password.
    fn ensure_replication_role(
        &self,
        bin: &PgBin,
        user: &OsUser,
        primary: &Record,
    ) -> Result<zeroize::Zeroizing<String>> {
        let layout = self.layout(&primary.id);
        if let Some(pw) = replication_password(&layout) {
            return Ok(pw);
        }
        let pw = zeroize::Zeroizing::new(random_hex(24)?);
        let sql = zeroize::Zeroizing::new(format!(
            "DO $$BEGIN\n\
             IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{REPLICATION_ROLE}') THEN\n\
               CREATE ROLE {REPLICATION_ROLE} WITH REPLICATION LOGIN;\n\
             END IF;\nEND$$;\n\
             ALTER ROLE {REPLICATION_ROLE} WITH REPLICATION LOGIN PASSWORD '{}';\n",
            pw.as_str()
        ));
        self.sql_stdin(bin, user, primary, &sql)?;
        pg::write_file_0600(&replication_pw_path(&layout), pw.as_bytes())?;
        Ok(pw)
    }

    /// Creates a streaming replica of `primary` on its own disk, under the
    /// primary's key (R4).
    pub fn create_replica(
        &self,
        caller: &Caller,
        primary: &str,
        name: Option<&str>,
        port: Option<u16>,
    ) -> Result<InstanceView> {
        let bin = self.bin()?;
        let user = self.os_user()?;
        let _ops = lock(&self.ops);
        let p = self.own(caller, primary)?;
        if p.primary.is_some() {
            return Err(DbError::Conflict(format!(
                "{} is a replica; make replicas of its primary",
                p.name
            )));
        }
        self.check_key(&p)?;
        if !self.is_running(&p) {
            return Err(DbError::Conflict(format!(
                "instance {} is not running; start it first",
                p.name
            )));
        }
        let name = match name {
            Some(n) => n.to_owned(),
            None => {
                let n = lock(&self.records)
                    .values()
                    .filter(|r| r.primary.as_deref() == Some(p.id.as_str()))
                    .count();
                format!("{}-replica-{}", p.name, n + 1)
            }
        };
        self.check_new_name(caller, &name)?;
        let port = self.choose_port(port)?;
        let pdisk = self.disks.describe_disk(caller, &p.disk)?;
        let pw = self.ensure_replication_role(&bin, &user, &p)?;
        let disk = self.disks.create_disk(
            caller,
            &NewDisk {
                size: pdisk.size,
                block_size: Some(pdisk.block_size),
                encrypted: Some(pdisk.encrypted),
                key_id: pdisk.key_arn,
                shareable: Some(false),
            },
        )?;
        let mut rec = self.new_record(
            caller,
            &name,
            p.class,
            disk.id,
            port,
            &p.master_username,
            Some(p.id.clone()),
        )?;
        rec.parameters = p.parameters.clone();
        let rec = self.provision(
            &bin,
            &user,
            &rec,
            true,
            |layout| {
                let own = layout.own();
                std::fs::create_dir_all(&own)
                    .map_err(|e| DbError::Failed(format!("creating {}: {e}", own.display())))?;
                user.chown(&layout.mnt)?;
                user.chown(&own)?;
                pg::write_file_0600(&replication_pw_path(layout), pw.as_bytes())?;
                pg::run_with_env(
                    bin.command("pg_basebackup", &user, &layout.mnt)
                        .args(["-h", "127.0.0.1", "-p", &p.port.to_string()])
                        .args(["-U", REPLICATION_ROLE, "-D"])
                        .arg(layout.pgdata())
                        .args(["-X", "stream", "-c", "fast", "--no-password"]),
                    &[("PGPASSWORD", pw.as_str())],
                    "pg_basebackup",
                )
                .map(drop)
            },
            |rec| self.wait_streaming(&bin, &user, &p, rec),
        )?;
        tracing::info!(replica = %rec.name, primary = %p.name, "replica created");
        Ok(self.view(&rec))
    }

    pub(crate) fn is_running(&self, rec: &Record) -> bool {
        lock(&self.live)
            .get(&rec.id)
            .and_then(|l| l.pid)
            .is_some_and(crate::host::is_postgres)
    }

    /// Waits until `standby` streams from `primary`.
    fn wait_streaming(
        &self,
        bin: &PgBin,
        user: &OsUser,
        primary: &Record,
        standby: &Record,
    ) -> Result<()> {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{}' AND state = 'streaming'",
            standby.id
        );
        let deadline = Instant::now() + CATCH_UP;
        loop {
            let n = self.sql(bin, user, primary, &sql)?;
            if n == "1" {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(DbError::Failed(format!(
                    "{} did not start streaming from {} within {}s",
                    standby.name,
                    primary.name,
                    CATCH_UP.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Promotes `replica` and makes its primary a standby of it (R8). The
    /// old primary is stopped cleanly first and the replica has replayed
    /// its last checkpoint before it is promoted, so no committed
    /// transaction is lost and the old primary can follow without a
    /// rewind. Other replicas follow the new primary.
    pub fn switchover(&self, caller: &Caller, replica: &str) -> Result<InstanceView> {
        let bin = self.bin()?;
        let user = self.os_user()?;
        let _ops = lock(&self.ops);
        let mut r = self.own(caller, replica)?;
        let Some(pid) = r.primary.clone() else {
            return Err(DbError::Conflict(format!(
                "{} is not a replica; switch over to one of its replicas",
                r.name
            )));
        };
        let mut p = lock(&self.records)
            .get(&pid)
            .cloned()
            .ok_or_else(|| DbError::Failed(format!("the primary {pid} of {} is gone", r.name)))?;
        self.check_key(&r)?;
        self.check_key(&p)?;
        for x in [&p, &r] {
            if !self.is_running(x) {
                return Err(DbError::Conflict(format!(
                    "instance {} is not running; start it first",
                    x.name
                )));
            }
        }
        self.wait_streaming(&bin, &user, &p, &r)?;
        // 1. Stop the primary cleanly: its WAL senders send everything,
        //    the shutdown checkpoint included, before it exits.
        let p_layout = self.layout(&p.id);
        let p_pid = lock(&self.live).get(&p.id).and_then(|l| l.pid);
        pg::stop(&bin, &user, &p_layout, p_pid);
        if let Some(l) = lock(&self.live).get_mut(&p.id) {
            l.pid = None;
        }
        let lsn = pg::checkpoint_lsn(&bin, &user, &p_layout)?;
        // 2. The standby must have replayed it.
        let r_layout = self.layout(&r.id);
        let caught_up = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
        let deadline = Instant::now() + CATCH_UP;
        loop {
            let v = self.sql(&bin, &user, &r, &caught_up)?;
            if v == "t" {
                break;
            }
            if Instant::now() > deadline {
                // Undo: the old primary serves again.
                let _ = self.start_locked(&bin, &user, &p);
                return Err(DbError::Failed(format!(
                    "{} did not replay the primary's last WAL ({lsn}) within {}s; {} was started again",
                    r.name,
                    CATCH_UP.as_secs(),
                    p.name
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // 3. Promote.
        pg::promote(&bin, &user, &r_layout)?;
        // 4. Swap the roles in the records (the replica set follows).
        let others: Vec<Record> = lock(&self.records)
            .values()
            .filter(|x| x.primary.as_deref() == Some(p.id.as_str()) && x.id != r.id)
            .cloned()
            .collect();
        r.primary = None;
        p.primary = Some(r.id.clone());
        self.save(&r)?;
        self.save(&p)?;
        // 5. The old primary starts as a standby of the new one.
        self.mark_standby(&user, &p)?;
        self.start_locked(&bin, &user, &p)?;
        for mut o in others {
            o.primary = Some(r.id.clone());
            self.save(&o)?;
            if self.is_running(&o) {
                let o_layout = self.layout(&o.id);
                let o_pid = lock(&self.live).get(&o.id).and_then(|l| l.pid);
                pg::stop(&bin, &user, &o_layout, o_pid);
                if let Some(l) = lock(&self.live).get_mut(&o.id) {
                    l.pid = None;
                }
                self.start_locked(&bin, &user, &o)?;
            }
        }
        self.wait_streaming(&bin, &user, &r, &p)?;
        tracing::info!(primary = %r.name, standby = %p.name, "switchover done");
        Ok(self.view(&r))
    }
}
