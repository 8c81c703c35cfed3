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
//! encrypted disk (a directory only root can read) and, while a standby
//! runs, in its password file `conf/replication.pgpass` (root's directory;
//! the file is the standby's OS user's, mode 0600), which its
//! `primary_conninfo` names: the password is in no configuration and no
//! process's arguments.

use std::time::{Duration, Instant};

use atrest_kms::Caller;

use crate::pg::{self, Layout, PgBin, REPLICATION_ROLE};
use crate::tree::{Owner, Tree};
use crate::users::OsUser;
use crate::{DbError, DbService, InstanceView, Record, Result, lock, random_hex};

/// How long a switchover waits for the standby to replay the primary's
/// last WAL, and a new standby to start streaming.
const CATCH_UP: Duration = Duration::from_secs(120);

/// Where a member keeps the replication password (root's directory on its
/// disk).
const PASSWORD: &str = "atrest/replication.pw";

/// The replication password kept on a member's disk.
pub(crate) fn replication_password(layout: &Layout) -> Option<zeroize::Zeroizing<String>> {
    let bytes = zeroize::Zeroizing::new(layout.tree().ok()?.read(PASSWORD, 256).ok()??);
    let text = std::str::from_utf8(&bytes).ok()?;
    Some(zeroize::Zeroizing::new(text.trim().to_owned())).filter(|s| !s.is_empty())
}

fn write_replication_password(layout: &Layout, pw: &str) -> Result<()> {
    layout
        .tree()?
        .write(PASSWORD, pw.as_bytes(), Owner::ROOT, 0o600)
        .map_err(|e| DbError::Failed(format!("writing the replication password: {e}")))
}

impl DbService {
    /// Settings of a standby: where its primary is, and the password file
    /// it connects with (written now, for the standby's user only).
    pub(crate) fn standby_settings(
        &self,
        rec: &Record,
        user: &OsUser,
        layout: &Layout,
    ) -> Result<Vec<(String, String)>> {
        let Some(primary) = &rec.primary else {
            return Ok(Vec::new());
        };
        let port = lock(&self.records).get(primary).map(|p| p.port);
        let (Some(port), Some(pw)) = (port, replication_password(layout)) else {
            tracing::error!(instance = %rec.name, "a replica without its primary or replication password");
            return Ok(Vec::new());
        };
        let pgpass = zeroize::Zeroizing::new(format!(
            "127.0.0.1:{port}:replication:{REPLICATION_ROLE}:{}\n",
            pw.replace('\\', "\\\\").replace(':', "\\:")
        ));
        Tree::open(&layout.conf)
            .and_then(|t| t.write("replication.pgpass", pgpass.as_bytes(), user.owner(), 0o600))
            .map_err(|e| DbError::Failed(format!("writing the standby's password file: {e}")))?;
        let conninfo = format!(
            "host=127.0.0.1 port={port} user={REPLICATION_ROLE} passfile={} application_name={}",
            layout.conf.join("replication.pgpass").display(),
            rec.id
        );
        Ok(vec![
            ("primary_conninfo".into(), pg::quote(&conninfo)),
            ("recovery_target_timeline".into(), pg::quote("latest")),
        ])
    }

    /// Makes the instance's role the record's, not a file's: a replica
    /// gets `standby.signal` before it starts, a primary has none, and only
    /// an instance being restored has `recovery.signal`.
    pub(crate) fn mark_role(&self, user: &OsUser, rec: &Record) -> Result<()> {
        let t = self.layout(&rec.id).pgdata_tree()?;
        let r = if rec.primary.is_some() {
            t.touch("standby.signal", user.owner(), 0o600)
        } else {
            t.remove("standby.signal")
        };
        let r = r.and_then(|()| {
            if self.is_restoring(rec) {
                Ok(())
            } else {
                t.remove("recovery.signal")
            }
        });
        r.map_err(|e| DbError::Failed(format!("marking the role of {}: {e}", rec.name)))
    }

    /// Ensures the primary has the replication role and its password on
    /// its disk; returns the password.
    fn ensure_replication_role(
        &self,
        bin: &PgBin,
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
        self.sql_stdin(bin, primary, &sql)?;
        write_replication_password(&layout, &pw)?;
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
        self.host()?;
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
        let pw = self.ensure_replication_role(&bin, &p)?;
        let mut rec = self.new_record(
            caller,
            &name,
            p.class,
            port,
            &p.master_username,
            Some(p.id.clone()),
        )?;
        self.make_disk(
            caller,
            &mut rec,
            pdisk.size,
            pdisk.block_size,
            pdisk.key_arn,
        )?;
        rec.parameters = p.parameters.clone();
        let rec = self.provision(
            &bin,
            &rec,
            true,
            |layout, user| {
                write_replication_password(layout, &pw)?;
                pg::run_with_env(
                    bin.command("pg_basebackup", user, &layout.pgdata())
                        .args(["-h", "127.0.0.1", "-p", &p.port.to_string()])
                        .args(["-U", REPLICATION_ROLE, "-D"])
                        .arg(layout.pgdata())
                        .args(["-X", "stream", "-c", "fast", "--no-password"]),
                    &[("PGPASSWORD", pw.as_str())],
                    "pg_basebackup",
                )
                .map(drop)
            },
            |rec| self.wait_streaming(&bin, &p, rec),
        )?;
        tracing::info!(replica = %rec.name, primary = %p.name, "replica created");
        Ok(self.view(&rec))
    }

    pub(crate) fn is_running(&self, rec: &Record) -> bool {
        lock(&self.live)
            .get(&rec.id)
            .and_then(|l| l.pid.map(|p| (p, l.user.uid)))
            .is_some_and(|(p, uid)| crate::host::is_postgres(p, uid))
    }

    /// Waits until `standby` streams from `primary`.
    fn wait_streaming(&self, bin: &PgBin, primary: &Record, standby: &Record) -> Result<()> {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{}' AND state = 'streaming'",
            standby.id
        );
        let deadline = Instant::now() + CATCH_UP;
        loop {
            let n = self.sql(bin, primary, &sql)?;
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
        self.host()?;
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
        self.wait_streaming(&bin, &p, &r)?;
        let p_user = self.user_of(&p)?;
        let r_user = self.user_of(&r)?;
        // 1. Stop the primary cleanly: its WAL senders send everything,
        //    the shutdown checkpoint included, before it exits.
        let p_layout = self.layout(&p.id);
        let p_pid = lock(&self.live).get(&p.id).and_then(|l| l.pid);
        pg::stop(&bin, &p_user, &p_layout, p_pid);
        if let Some(l) = lock(&self.live).get_mut(&p.id) {
            l.pid = None;
        }
        let lsn = pg::checkpoint_lsn(&bin, &p_user, &p_layout)?;
        // 2. The standby must have replayed it.
        let r_layout = self.layout(&r.id);
        let caught_up = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
        let deadline = Instant::now() + CATCH_UP;
        loop {
            let v = self.sql(&bin, &r, &caught_up)?;
            if v == "t" {
                break;
            }
            if Instant::now() > deadline {
                // Undo: the old primary serves again.
                let _ = self.start_locked(&bin, &p);
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
        pg::promote(&bin, &r_user, &r_layout)?;
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
        // 5. The old primary starts as a standby of the new one (its
        //    replication password is the set's, on its disk already).
        self.start_locked(&bin, &p)?;
        for mut o in others {
            o.primary = Some(r.id.clone());
            self.save(&o)?;
            if self.is_running(&o) {
                let o_layout = self.layout(&o.id);
                let o_pid = lock(&self.live).get(&o.id).and_then(|l| l.pid);
                pg::stop(&bin, &self.user_of(&o)?, &o_layout, o_pid);
                if let Some(l) = lock(&self.live).get_mut(&o.id) {
                    l.pid = None;
                }
                self.start_locked(&bin, &o)?;
            }
        }
        self.wait_streaming(&bin, &r, &p)?;
        tracing::info!(primary = %r.name, standby = %p.name, "switchover done");
        Ok(self.view(&r))
    }
}
