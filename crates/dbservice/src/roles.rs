//! The roles of an instance: the customer's master, atrest's own
//! superuser and replication role, and the migration of an instance whose
//! master was the superuser (an earlier release's).
//!
//! # The master
//!
//! As a managed service's master user: `LOGIN`, `CREATEDB`, `CREATEROLE`
//! (on PostgreSQL 15 and older only with the [`crate::guard`] loaded, which
//! keeps CREATEROLE from granting the roles that read and write server
//! files and run programs), the owner of the `postgres` database and of
//! everything it creates, and a member of `pg_monitor`,
//! `pg_signal_backend` and `pg_checkpoint`, allowed `pg_switch_wal()`.
//! Never a superuser, never
//! `REPLICATION` or `BYPASSRLS`, never a member of
//! `pg_execute_server_program`, `pg_read_server_files` or
//! `pg_write_server_files`.
//!
//! # atrest's roles
//!
//! `atrest_admin` is the bootstrap superuser (it owns the system
//! catalogs); only root reaches it, over the socket. `atrest_replication`
//! streams to standbys and takes base backups. The database `atrest` is
//! where atrest's sessions run; nobody else may connect to it.
//!
//! # Convergence
//!
//! At every start of a primary, [`DbService::converge_roles`] brings the
//! roles to that shape; each step is idempotent, so a crash at any point is
//! finished by the next start:
//!
//! 1. If `atrest_admin` does not exist, the instance is an earlier
//!    release's, whose bootstrap superuser is the master. In one
//!    transaction, connected as the master, atrest takes a superuser
//!    session of its own (`SET SESSION AUTHORIZATION`, to a `NOLOGIN`
//!    role), renames the bootstrap superuser to `atrest_admin` (without a
//!    password), and creates a new, ordinary master of the same name with
//!    the same password verifier: the customer's credentials keep working.
//! 2. While the database `atrest` does not exist (the migration's last
//!    step makes it), in every database: event triggers and subscriptions
//!    (which would run the customer's code as a superuser) are disabled;
//!    what the old master created passes to the new one (schemas,
//!    relations, functions in trusted languages, types, operators and the
//!    like, large objects; not extension members, which stay the
//!    superuser's as PostgreSQL makes them); functions in untrusted
//!    languages stay atrest's with every grant revoked; grants of the
//!    server's file and program functions to anyone but atrest are
//!    revoked. Databases the old master owned become the new master's.
//! 3. Always: the master's attributes and memberships as above; no role
//!    but a superuser is a member of the three server-file roles.

use zeroize::Zeroizing;

use crate::pg::{self, ADMIN_DB, ADMIN_ROLE, Conn, PgBin, REPLICATION_ROLE, ident, literal};
use crate::{DbError, DbService, Record, Result};

/// The role a migration takes its superuser session as (never a login).
const MIGRATOR: &str = "atrest_migrator";

/// The predefined roles whose members read and write the server's files
/// and run programs on it.
const SERVER_ROLES: [&str; 3] = [
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
];

/// Functions of `pg_catalog` that reach the server's files or control it;
/// initdb grants them to nobody but predefined roles.
const SERVER_FUNCTIONS: [&str; 16] = [
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_archive_statusdir",
    "pg_ls_tmpdir",
    "lo_import",
    "lo_export",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
    "pg_logdir_ls",
    "pg_reload_conf",
];

/// Whether `e` says the instance's roles are an earlier release's (no
/// `atrest_admin`, no `atrest` database yet).
pub(crate) fn not_migrated(e: &DbError) -> bool {
    let m = e.to_string();
    m.contains(&format!("role \"{ADMIN_ROLE}\" does not exist"))
        || m.contains(&format!("database \"{ADMIN_DB}\" does not exist"))
}

/// The idempotent SQL of step 2 for one database.
fn transfer_sql(master: &str) -> String {
    let functions = SERVER_FUNCTIONS
        .iter()
        .map(|f| literal(f))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"DO $atrest$
DECLARE
  m name := {master};
  g name;
  r record;
BEGIN
  FOR r IN SELECT evtname FROM pg_event_trigger WHERE evtenabled <> 'D' LOOP
    EXECUTE format('ALTER EVENT TRIGGER %I DISABLE', r.evtname);
  END LOOP;
  FOR r IN SELECT subname FROM pg_subscription
            WHERE subenabled AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) LOOP
    EXECUTE format('ALTER SUBSCRIPTION %I DISABLE', r.subname);
  END LOOP;
  FOR r IN
    SELECT o.type, o.identity FROM (
      SELECT 'pg_namespace'::regclass AS cls, oid FROM pg_namespace WHERE nspowner = 10
      UNION ALL SELECT 'pg_class'::regclass, oid FROM pg_class
                WHERE relowner = 10 AND relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
      UNION ALL SELECT 'pg_proc'::regclass, p.oid FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
                WHERE p.proowner = 10 AND (l.lanpltrusted OR p.prokind = 'a')
      UNION ALL SELECT 'pg_type'::regclass, t.oid FROM pg_type t
                WHERE t.typowner = 10 AND t.typtype IN ('c', 'd', 'e', 'r')
                  AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
      UNION ALL SELECT 'pg_collation'::regclass, oid FROM pg_collation WHERE collowner = 10
      UNION ALL SELECT 'pg_conversion'::regclass, oid FROM pg_conversion WHERE conowner = 10
      UNION ALL SELECT 'pg_operator'::regclass, oid FROM pg_operator WHERE oprowner = 10
      UNION ALL SELECT 'pg_opfamily'::regclass, oid FROM pg_opfamily WHERE opfowner = 10
      UNION ALL SELECT 'pg_opclass'::regclass, oid FROM pg_opclass WHERE opcowner = 10
      UNION ALL SELECT 'pg_ts_dict'::regclass, oid FROM pg_ts_dict WHERE dictowner = 10
      UNION ALL SELECT 'pg_ts_config'::regclass, oid FROM pg_ts_config WHERE cfgowner = 10
      UNION ALL SELECT 'pg_foreign_server'::regclass, oid FROM pg_foreign_server WHERE srvowner = 10
      UNION ALL SELECT 'pg_publication'::regclass, oid FROM pg_publication WHERE pubowner = 10
      UNION ALL SELECT 'pg_statistic_ext'::regclass, oid FROM pg_statistic_ext WHERE stxowner = 10
      UNION ALL SELECT 'pg_largeobject_metadata'::regclass, oid FROM pg_largeobject_metadata WHERE lomowner = 10
    ) x
    CROSS JOIN LATERAL pg_identify_object(x.cls, x.oid, 0) o
    WHERE x.oid >= 16384
      AND NOT EXISTS (SELECT 1 FROM pg_depend d
                       WHERE d.classid = x.cls AND d.objid = x.oid AND d.deptype IN ('e', 'i', 'a'))
  LOOP
    EXECUTE format('ALTER %s %s OWNER TO %I',
                   CASE r.type WHEN 'statistics object' THEN 'STATISTICS' ELSE r.type END,
                   r.identity, m);
  END LOOP;
  -- Functions in untrusted languages stay atrest's, executable by nobody else.
  FOR r IN
    SELECT o.type, o.identity, p.proacl FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
      CROSS JOIN LATERAL pg_identify_object('pg_proc'::regclass, p.oid, 0) o
     WHERE p.proowner = 10 AND p.oid >= 16384 AND NOT l.lanpltrusted AND p.prokind <> 'a'
       AND NOT EXISTS (SELECT 1 FROM pg_depend d
                        WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
  LOOP
    EXECUTE format('REVOKE ALL ON %s %s FROM PUBLIC', r.type, r.identity);
    FOR g IN SELECT a.rolname FROM aclexplode(coalesce(r.proacl, '{{}}'::aclitem[])) e
               JOIN pg_authid a ON a.oid = e.grantee WHERE e.grantee <> 10 LOOP
      EXECUTE format('REVOKE ALL ON %s %s FROM %I', r.type, r.identity, g);
    END LOOP;
  END LOOP;
  -- The server's file and program functions: granted to nobody else.
  FOR r IN
    SELECT o.type, o.identity, p.proacl FROM pg_proc p
      CROSS JOIN LATERAL pg_identify_object('pg_proc'::regclass, p.oid, 0) o
     WHERE p.proname IN ({functions}) AND p.pronamespace = 'pg_catalog'::regnamespace
  LOOP
    IF r.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(r.proacl) e WHERE e.grantee = 0) THEN
      EXECUTE format('REVOKE ALL ON %s %s FROM PUBLIC', r.type, r.identity);
    END IF;
    FOR g IN SELECT a.rolname FROM aclexplode(coalesce(r.proacl, '{{}}'::aclitem[])) e
               JOIN pg_authid a ON a.oid = e.grantee
              WHERE e.grantee <> 10 AND NOT a.rolsuper AND a.rolname NOT LIKE 'pg\_%' LOOP
      EXECUTE format('REVOKE ALL ON %s %s FROM %I', r.type, r.identity, g);
    END LOOP;
  END LOOP;
END
$atrest$;
"#,
        master = literal(master),
    )
}

/// The server functions the master may run, as a managed service's may:
/// `pg_switch_wal` (closes the current WAL file, so that it is archived:
/// a point-in-time restore can reach the last commit).
fn master_functions_sql(master: &str) -> String {
    format!(
        "GRANT EXECUTE ON FUNCTION pg_catalog.pg_switch_wal() TO {}",
        ident(master)
    )
}

/// The idempotent SQL of step 3 (and the end of step 2), as atrest's
/// superuser in `template1`.
fn converge_sql(master: &str, createrole: bool, admin_db_exists: bool) -> String {
    let m = ident(master);
    let roles = SERVER_ROLES
        .iter()
        .map(|r| literal(r))
        .collect::<Vec<_>>()
        .join(", ");
    let mut sql = format!(
        r#"DO $atrest$
DECLARE r record;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {repl}) THEN
    CREATE ROLE {REPLICATION_ROLE} WITH REPLICATION LOGIN;
  END IF;
  ALTER ROLE {REPLICATION_ROLE} WITH NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS REPLICATION LOGIN;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {master_lit}) THEN
    ALTER ROLE {m} WITH NOSUPERUSER NOREPLICATION NOBYPASSRLS LOGIN CREATEDB {createrole};
    GRANT pg_monitor, pg_signal_backend TO {m};
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pg_checkpoint') THEN
      GRANT pg_checkpoint TO {m};
    END IF;
  END IF;
  FOR r IN SELECT g.rolname AS grp, a.rolname AS member
             FROM pg_auth_members am
             JOIN pg_authid g ON g.oid = am.roleid
             JOIN pg_authid a ON a.oid = am.member
            WHERE g.rolname IN ({roles}) AND NOT a.rolsuper LOOP
    EXECUTE format('REVOKE %I FROM %I', r.grp, r.member);
  END LOOP;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {migrator}) THEN
    DROP ROLE {MIGRATOR};
  END IF;
END
$atrest$;
"#,
        repl = literal(REPLICATION_ROLE),
        master_lit = literal(master),
        createrole = if createrole {
            "CREATEROLE"
        } else {
            "NOCREATEROLE"
        },
        migrator = literal(MIGRATOR),
    );
    if !admin_db_exists {
        sql.push_str(&format!(
            "CREATE DATABASE {ADMIN_DB} TEMPLATE template0;\nREVOKE ALL ON DATABASE {ADMIN_DB} FROM PUBLIC;\n"
        ));
    }
    sql
}

impl DbService {
    fn conn<'a>(
        &self,
        bin: &'a PgBin,
        layout: &'a pg::Layout,
        rec: &Record,
        role: &'a str,
        db: &'a str,
    ) -> Conn<'a> {
        Conn {
            bin,
            layout,
            port: rec.port,
            role,
            db,
        }
    }

    /// Brings a running primary's roles to atrest's shape (see the module
    /// doc); a no-op, bar three queries, when they are.
    pub(crate) fn converge_roles(&self, bin: &PgBin, rec: &Record) -> Result<()> {
        let layout = self.layout(&rec.id);
        let admin = self.conn(bin, &layout, rec, ADMIN_ROLE, "template1");
        match admin.query("SELECT 1") {
            Ok(_) => {}
            Err(e) if not_migrated(&e) => self.demote_master(bin, &layout, rec)?,
            Err(e) => return Err(e),
        }
        let admin_db = admin.query(&format!(
            "SELECT count(*) FROM pg_database WHERE datname = {}",
            literal(ADMIN_DB)
        ))? == "1";
        // A new instance has no master yet (it is made once the server
        // runs) and nothing to transfer.
        let master = admin.query(&format!(
            "SELECT count(*) FROM pg_roles WHERE rolname = {}",
            literal(&rec.master_username)
        ))? == "1";
        if !admin_db && master {
            self.transfer_ownership(bin, &layout, rec)?;
        }
        let createrole = self.guard(bin).createrole;
        admin.query_stdin(&converge_sql(&rec.master_username, createrole, admin_db))?;
        if !admin_db {
            tracing::info!(instance = %rec.name, master = %rec.master_username, "the instance's roles are atrest's shape: the master is no superuser");
        }
        Ok(())
    }

    /// Step 1 of the migration: the bootstrap superuser becomes atrest's,
    /// and a new master takes its name and password (one transaction).
    fn demote_master(&self, bin: &PgBin, layout: &pg::Layout, rec: &Record) -> Result<()> {
        let old = self.conn(bin, layout, rec, &rec.master_username, "template1");
        let m = &rec.master_username;
        let verifier = Zeroizing::new(old.query(&format!(
            "SELECT coalesce(rolpassword, '') FROM pg_authid WHERE rolname = {} AND oid = 10",
            literal(m)
        ))?);
        let password = if verifier.is_empty() {
            "NULL".to_owned()
        } else {
            literal(&verifier)
        };
        let sql = Zeroizing::new(format!(
            "BEGIN;\n\
             DO $atrest$ BEGIN\n\
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {migrator}) THEN\n\
                 CREATE ROLE {MIGRATOR} WITH SUPERUSER NOLOGIN;\n\
               END IF;\n\
             END $atrest$;\n\
             SET SESSION AUTHORIZATION {MIGRATOR};\n\
             ALTER ROLE {mi} RENAME TO {ADMIN_ROLE};\n\
             ALTER ROLE {ADMIN_ROLE} WITH PASSWORD NULL;\n\
             CREATE ROLE {mi} WITH LOGIN NOSUPERUSER CREATEDB PASSWORD {password};\n\
             COMMIT;\n",
            migrator = literal(MIGRATOR),
            mi = ident(m),
        ));
        old.query_stdin(&sql)?;
        tracing::warn!(instance = %rec.name, master = %m, "demoted the master of an instance of an earlier release: atrest_admin is the superuser now");
        Ok(())
    }

    /// Step 2: in every database, what the old master made passes to the
    /// new one; databases it owned too.
    fn transfer_ownership(&self, bin: &PgBin, layout: &pg::Layout, rec: &Record) -> Result<()> {
        let admin = self.conn(bin, layout, rec, ADMIN_ROLE, "template1");
        let dbs = admin.query("SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1")?;
        let transfer = transfer_sql(&rec.master_username);
        for db in dbs.lines().map(str::trim).filter(|d| !d.is_empty()) {
            let conn = self.conn(bin, layout, rec, ADMIN_ROLE, db);
            conn.query_stdin(&transfer)?;
            conn.query(&master_functions_sql(&rec.master_username))?;
        }
        admin.query_stdin(&format!(
            "DO $atrest$\nDECLARE r record;\nBEGIN\n\
               FOR r IN SELECT datname FROM pg_database\n\
                         WHERE datdba = 10 AND datname NOT IN ('template0', 'template1', {adb}) LOOP\n\
                 EXECUTE format('ALTER DATABASE %I OWNER TO %I', r.datname, {m});\n\
               END LOOP;\n\
             END\n$atrest$;\n",
            adb = literal(ADMIN_DB),
            m = literal(&rec.master_username),
        ))?;
        Ok(())
    }

    /// Creates the master of a new instance, with its password (given on
    /// stdin, never in arguments), and gives it the `postgres` database.
    pub(crate) fn create_master(&self, bin: &PgBin, rec: &Record, password: &str) -> Result<()> {
        let layout = self.layout(&rec.id);
        let admin = self.conn(bin, &layout, rec, ADMIN_ROLE, ADMIN_DB);
        let m = ident(&rec.master_username);
        let sql = Zeroizing::new(format!(
            "CREATE ROLE {m} WITH LOGIN PASSWORD {};\nALTER DATABASE postgres OWNER TO {m};\n",
            literal(password)
        ));
        admin.query_stdin(&sql)?;
        let createrole = self.guard(bin).createrole;
        admin.query_stdin(&converge_sql(&rec.master_username, createrole, true))?;
        // Function privileges are per database; template1's pass to the
        // databases the master creates.
        for db in ["postgres", "template1"] {
            self.conn(bin, &layout, rec, ADMIN_ROLE, db)
                .query(&master_functions_sql(&rec.master_username))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_instances_are_recognised() {
        assert!(not_migrated(&DbError::Failed(
            "psql failed (exit status: 2): psql: error: connection to server on socket \"/x/.s.PGSQL.5432\" failed: FATAL:  role \"atrest_admin\" does not exist".into()
        )));
        assert!(not_migrated(&DbError::Failed(
            "FATAL:  database \"atrest\" does not exist".into()
        )));
        assert!(!not_migrated(&DbError::Failed(
            "FATAL:  the database system is starting up".into()
        )));
    }

    #[test]
    fn names_are_quoted_in_sql() {
        let sql = converge_sql("o'brien", true, false);
        assert!(sql.contains("'o''brien'") && sql.contains("\"o'brien\""));
        assert!(sql.contains("CREATEROLE") && sql.contains("CREATE DATABASE atrest"));
        assert!(converge_sql("m", false, true).contains("NOCREATEROLE"));
        assert!(!converge_sql("m", false, true).contains("CREATE DATABASE"));
        let t = transfer_sql("o'brien");
        assert!(t.contains("m name := 'o''brien'"));
        for f in SERVER_FUNCTIONS {
            assert!(t.contains(&format!("'{f}'")), "{f}");
        }
    }
}
