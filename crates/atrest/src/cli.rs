//! The command line, defined once: help and parsing come from here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `--audit-commit-delay-us`'s default: the audit crate's.
#[expect(clippy::cast_possible_truncation, reason = "a constant under a second")]
const DEFAULT_AUDIT_COMMIT_DELAY_US: u64 = atrest_audit::DEFAULT_COMMIT_INTERVAL.as_micros() as u64;

/// `--audit-sync-interval-ms`'s default: the audit crate's.
#[expect(clippy::cast_possible_truncation, reason = "a constant under a second")]
const DEFAULT_AUDIT_SYNC_INTERVAL_MS: u64 = atrest_audit::DEFAULT_SYNC_INTERVAL.as_millis() as u64;

/// Which answers wait until their audit record is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditSync {
    /// Requests that change stored state; others once written.
    Changes,
    /// Every request.
    Every,
}

/// Encryption at rest with keys you control: an AWS KMS-compatible key
/// service, encrypted disks with snapshots (NBD, local attach), PostgreSQL
/// instances on them, and projects that bind them to a customer's key.
#[derive(Debug, Parser)]
#[command(name = "atrest", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: the AWS KMS API (and the admin REST API) on one listener.
    Serve(Box<ServeArgs>),
    /// Administer accounts, users, policies and access keys on a running server.
    Admin(AdminArgs),
    /// Query the audit trail (by key, principal, operation, time), or verify it.
    Audit(Box<AuditArgs>),
    /// Key-service request counts per account, region and operation.
    Metering(MeteringArgs),
    /// The nodes sharing this server's metadata store.
    Node(NodeArgs),
    /// Encrypted disks: create, list, show, resize, snapshot, rollback,
    /// clone, rekey, convert, delete.
    Disk(DiskArgs),
    /// Snapshots of disks: list, show, delete.
    Snapshot(SnapshotArgs),
    /// NBD client settings: the TLS pre-shared key of your access key.
    Nbd(NbdArgs),
    /// Encrypted PostgreSQL instances: create, list, show, start, stop,
    /// restart, delete.
    Db(DbArgs),
    /// PostgreSQL's archive_command and restore_command (run by the
    /// server's instances, not by hand).
    #[command(hide = true)]
    DbAgent(crate::db_agent::DbAgentArgs),
    /// Key providers (keys held in another KMS): test a configuration.
    Provider(crate::provider::ProviderArgs),
    /// Projects: resources bound to customer-managed keys per region (CMEK).
    Project(ProjectArgs),
    /// Rebuild data offline, without a running server (B7).
    Recover(Box<RecoverArgs>),
    /// The metadata store, offline: copy a data dir's into PostgreSQL.
    Store(StoreArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct ProjectArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: ProjectCommand,
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project; CMEK is chosen now and never changes.
    Create {
        /// Name (a-z, 0-9, '-').
        name: String,
        /// Use customer-managed keys (one per region, configured with set-key).
        #[arg(long)]
        cmek: bool,
        /// When a key becomes unusable: keep serving until paused, or stop.
        #[arg(long, default_value = "keep")]
        revocation: String,
        /// With --revocation stop: seconds a key may be unusable before the
        /// project pauses by itself.
        #[arg(long)]
        stop_after: Option<u64>,
        /// Idempotency token: a retry with it answers the first project.
        #[arg(long)]
        client_token: Option<String>,
        /// A tag, KEY=VALUE (repeat for more): identity policies see it as
        /// aws:ResourceTag/KEY.
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// List your projects.
    List,
    /// Show a project: keys per region, resources, state.
    Show { id: String },
    /// Delete an empty project.
    Delete { id: String },
    /// The key policy to attach to your key for a region.
    KeyPolicy {
        id: String,
        /// Region [default: --region].
        #[arg(long = "key-region")]
        region: Option<String>,
    },
    /// Test a key (as the disk and database services will use it) and save
    /// it as the project's key for a region.
    SetKey {
        id: String,
        /// The key (id, ARN or alias) in that region.
        #[arg(long)]
        key: String,
        /// Region [default: --region].
        #[arg(long = "key-region")]
        region: Option<String>,
    },
    /// Create a disk in the project (in --region, under its key there).
    CreateDisk {
        id: String,
        /// Size: bytes, or with K, M, G, T.
        #[arg(long)]
        size: String,
        /// Logical block size (512 or 4096).
        #[arg(long)]
        block_size: Option<u32>,
        /// Several clients may attach it at once.
        #[arg(long)]
        shareable: bool,
    },
    /// Create a PostgreSQL instance in the project (in --region, under its key there).
    CreateDb {
        id: String,
        /// Instance name.
        name: String,
        /// Disk size (bytes, or with K, M, G, T).
        #[arg(long)]
        size: Option<String>,
        /// Port.
        #[arg(long)]
        port: Option<u16>,
        /// File holding the master password.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Stop the project's instances.
    Pause { id: String },
    /// Test the project's keys, then start its instances; fails naming the
    /// key while one is unusable.
    Resume { id: String },
}

#[derive(Debug, Args)]
pub struct DbArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: DbCommand,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create an instance: an encrypted disk, a file system on it, initdb,
    /// and a running PostgreSQL server on 127.0.0.1.
    Create {
        /// Name (a-z, 0-9, '-').
        name: String,
        /// The customer key (id, ARN or alias) its disk is encrypted under.
        #[arg(long, conflicts_with_all = ["service_key", "unencrypted"])]
        key: Option<String>,
        /// Use the account's database service key (alias/atrest/db).
        #[arg(long, conflicts_with = "unencrypted")]
        service_key: bool,
        /// No encryption (class disk only; it can be enabled later).
        #[arg(long)]
        unencrypted: bool,
        /// tde (encrypted from creation, for good) or disk.
        #[arg(long, default_value = "tde")]
        class: String,
        /// Disk size (bytes, or with K, M, G, T).
        #[arg(long)]
        size: Option<String>,
        /// Port on 127.0.0.1 (default: a free one).
        #[arg(long)]
        port: Option<u16>,
        /// The master user clients log in as (powerful inside the
        /// database, no superuser).
        #[arg(long, default_value = "postgres")]
        master_username: String,
        /// A file holding the master user's password (default: generated
        /// and printed once).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// A tag, KEY=VALUE (repeat for more): identity policies see it as
        /// aws:ResourceTag/KEY.
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// List instances.
    List,
    /// Show an instance: state, encryption, key, disk, port.
    Show { name: String },
    /// Start an instance (unlocking its disk's key first).
    Start { name: String },
    /// Stop an instance cleanly and lock its disk.
    Stop { name: String },
    /// Restart an instance.
    Restart { name: String },
    /// Delete an instance and its disk.
    Delete { name: String },
    /// Take an encrypted backup of an instance (a base backup; its WAL is
    /// archived continuously).
    Backup { name: String },
    /// List backups (of one instance, if named).
    Backups { name: Option<String> },
    /// Show a backup.
    BackupShow { id: String },
    /// Delete a backup (and the archived WAL no other backup needs).
    BackupDelete { id: String },
    /// Copy a backup into another region, re-encrypted under a key there,
    /// with the WAL archived since it began (a new backup, restorable in
    /// that region).
    BackupCopy {
        /// The backup's id.
        backup: String,
        /// The destination region.
        #[arg(long = "to-region")]
        to_region: String,
        /// The copy's key in that region (default: the account's service
        /// key there).
        #[arg(long)]
        key_id: Option<String>,
    },
    /// Restore a backup into a new instance, to a point in time if given.
    Restore {
        /// The backup's id.
        backup: String,
        /// The new instance's name.
        #[arg(long = "as")]
        new_name: String,
        /// Recover up to this time (RFC 3339 with a time zone, such as
        /// 2024-05-01T12:00:00Z); default: all archived WAL.
        #[arg(long)]
        to_time: Option<String>,
        /// A backup another server made in this server's backup storage:
        /// the key provider (aws-kms) of the key service that wrapped its
        /// data keys.
        #[arg(long = "source-key-provider")]
        provider: Option<String>,
        /// With --source-key-provider: the new instance's key here
        /// (default: the account's service key).
        #[arg(long, requires = "provider")]
        key_id: Option<String>,
    },
    /// Streaming replicas.
    Replica {
        #[command(subcommand)]
        command: DbReplicaCommand,
    },
    /// Promote a replica; its primary becomes its standby.
    Switchover { replica: String },
    /// Set PostgreSQL parameters (NAME=VALUE; NAME= resets one), with a
    /// restart.
    Set {
        name: String,
        #[arg(required = true)]
        parameters: Vec<String>,
    },
    /// Grow an instance's disk and file system (a restart).
    Resize {
        name: String,
        /// The new size (bytes, or with K, M, G, T).
        #[arg(long)]
        size: String,
    },
    /// Change an instance's settings: how many days its backups are kept.
    Modify {
        name: String,
        /// Days its backups are kept (0: until deleted; at most 35). Older
        /// backups but the newest are deleted, with the WAL only they
        /// needed.
        #[arg(long)]
        backup_retention_days: u32,
    },
    /// A new instance from an instant, crash-consistent copy of this one.
    Clone {
        name: String,
        /// The new instance's name.
        #[arg(long = "as")]
        new_name: String,
        /// Its port (default: a free one).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Change an instance's encryption (class disk: enable, disable;
    /// any encrypted instance: set-key). Restarts the instance.
    Encryption {
        name: String,
        #[command(subcommand)]
        action: DbEncryptionCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum DbReplicaCommand {
    /// Create a streaming standby of PRIMARY on its own disk, under the
    /// primary's key.
    Create {
        primary: String,
        /// The replica's name (default PRIMARY-replica-N).
        #[arg(long)]
        name: Option<String>,
        /// Its port on 127.0.0.1 (default: a free one).
        #[arg(long)]
        port: Option<u16>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DbEncryptionCommand {
    /// Encrypt the instance's data (copies it to a new disk).
    Enable(KeyChoice),
    /// Stop encrypting it (class disk only; copies it to a new disk).
    Disable,
    /// Re-wrap its data key under another key (replicas follow).
    SetKey(KeyChoice),
}

/// A customer key, or the database service key.
#[derive(Debug, Args)]
pub struct KeyChoice {
    #[arg(
        long,
        conflicts_with = "service_key",
        required_unless_present = "service_key"
    )]
    pub key: Option<String>,
    #[arg(long)]
    pub service_key: bool,
}

#[derive(Debug, Args)]
pub struct NbdArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: NbdCommand,
}

#[derive(Debug, Subcommand)]
pub enum NbdCommand {
    /// Write the TLS pre-shared key of your access key as a PSK file
    /// (`IDENTITY:HEXKEY`, the format of qemu's `keys.psk` and libnbd's
    /// `tls-psk-file`). It is derived from the secret access key, computed
    /// here, and never sent.
    Psk {
        /// Where to write it (mode 0600); `-` for standard output.
        #[arg(long, default_value = "-")]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct DiskArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: DiskCommand,
}

#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// Create a disk (encrypted under the disk service key unless told otherwise).
    Create {
        /// Size: bytes, or with a suffix K, M, G, T (powers of 1024).
        #[arg(long)]
        size: String,
        /// Logical block size: 512 or 4096.
        #[arg(long, default_value_t = 512)]
        block_size: u32,
        /// The master key (key id, key ARN or alias) [default: alias/atrest/disk].
        #[arg(long)]
        key_id: Option<String>,
        /// Store the disk's data unencrypted.
        #[arg(long, conflicts_with = "key_id")]
        unencrypted: bool,
        /// Let several clients attach the disk read-write at once (they
        /// must coordinate, as with a cluster file system).
        #[arg(long)]
        shareable: bool,
        /// A tag, KEY=VALUE (repeat for more): identity policies see it as
        /// aws:ResourceTag/KEY.
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// List your disks.
    List,
    /// Show a disk.
    Show { id: String },
    /// Grow a disk (a user sees the new size after attaching again).
    Resize {
        id: String,
        /// The new size: bytes, or with a suffix K, M, G, T.
        #[arg(long)]
        size: String,
    },
    /// Snapshot a disk (instant, whatever its size); with
    /// --to-object-store, store the snapshot in the server's object store
    /// (uploaded in the background, with a progress bar).
    Snapshot {
        id: String,
        /// Store the snapshot in the object store (incremental: blocks
        /// already stored for this disk are not sent again).
        #[arg(long)]
        to_object_store: bool,
        /// Return at once instead of following the upload.
        #[arg(long, requires = "to_object_store")]
        no_wait: bool,
    },
    /// Roll a disk back to one of its snapshots.
    Rollback {
        id: String,
        /// The snapshot.
        #[arg(long)]
        snapshot: String,
    },
    /// Create a disk from a snapshot (same data key, no data copied; from
    /// a snapshot in the object store, a restore with a progress bar).
    Clone {
        /// The snapshot.
        snapshot: String,
        /// Return at once instead of following a restore.
        #[arg(long)]
        no_wait: bool,
    },
    /// Change a disk's master key (re-wrap, instant) or, with --reencrypt,
    /// re-encrypt its data under a fresh data key (a job, with progress).
    Rekey {
        id: String,
        /// The new master key (key id, key ARN or alias).
        #[arg(
            long,
            required_unless_present = "reencrypt",
            conflicts_with = "reencrypt"
        )]
        key_id: Option<String>,
        /// Re-encrypt the data under a fresh data key.
        #[arg(long)]
        reencrypt: bool,
        /// Return at once instead of following the job.
        #[arg(long)]
        no_wait: bool,
    },
    /// Copy a disk into a new disk, encrypted or unencrypted (a job, with progress).
    Convert {
        id: String,
        /// Make the new disk encrypted (under --key-id, default the disk service key).
        #[arg(
            long,
            conflicts_with = "unencrypted",
            required_unless_present = "unencrypted"
        )]
        encrypted: bool,
        /// Make the new disk unencrypted.
        #[arg(long)]
        unencrypted: bool,
        /// The new disk's master key.
        #[arg(long, conflicts_with = "unencrypted")]
        key_id: Option<String>,
        /// Return at once instead of following the job.
        #[arg(long)]
        no_wait: bool,
    },
    /// Let the disk service use a disk's key again after its grant was revoked.
    Regrant { id: String },
    /// Delete a disk (its space is reclaimed once no snapshot refers to it).
    Delete { id: String },
    /// Attach a disk as a block device of the server's host (a loop device
    /// on a FUSE file; the server must run on this host, as root). Remote
    /// hosts and VMs attach over NBD instead: nbd://SERVER:PORT/DISK-ID.
    Attach {
        id: String,
        /// Attach to this host (required: the only kind of attach the CLI does).
        #[arg(long, required = true)]
        local: bool,
    },
    /// Detach a locally attached disk: flushes it and removes its block
    /// device (refused while a file system on it is mounted).
    Detach { id: String },
    /// Show a job (re-encryption or conversion); --follow shows a progress bar until it ends.
    Job {
        id: String,
        /// Follow it until it ends.
        #[arg(long)]
        follow: bool,
    },
    /// List your jobs.
    Jobs,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// List your snapshots.
    List,
    /// Show a snapshot.
    Show { id: String },
    /// Delete a snapshot.
    Delete { id: String },
    /// Copy a snapshot stored in the object store into another region,
    /// re-encrypted under a key of that region (progress bar).
    Copy {
        id: String,
        /// The destination region.
        #[arg(long = "to-region")]
        to_region: String,
        /// The copy's master key there (default: the disk service key of
        /// that region).
        #[arg(long = "key")]
        key: Option<String>,
        /// Return at once instead of following the copy.
        #[arg(long)]
        no_wait: bool,
    },
    /// Restore a snapshot that another server stored in this server's
    /// object store, through the key provider behind which that server's
    /// key service answers (progress bar).
    Restore {
        id: String,
        /// The key provider (aws-kms) of the key service that wrapped it.
        #[arg(long = "source-key-provider")]
        provider: String,
        /// The new disk's master key here.
        #[arg(long)]
        key_id: Option<String>,
        /// Return at once instead of following the restore.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnKeyLoss {
    /// Keep serving with the key already unlocked.
    Keep,
    /// Close the disk (dropping its key) --disk-close-after seconds after
    /// its key became unusable.
    Close,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Only records of this account (admins; anyone else sees only their
    /// own account's records).
    #[arg(long)]
    pub account: Option<String>,
    /// Only records about this key ARN.
    #[arg(long)]
    pub key: Option<String>,
    /// Only records by this principal ARN.
    #[arg(long)]
    pub principal: Option<String>,
    /// Only records of this operation.
    #[arg(long)]
    pub operation: Option<String>,
    /// Only records at or after this time (RFC 3339, UTC).
    #[arg(long)]
    pub since: Option<String>,
    /// Only records before this time (RFC 3339, UTC).
    #[arg(long)]
    pub until: Option<String>,
    /// At most this many records (the most recent), printed oldest first.
    /// The server answers 1000 at a time; more are fetched page by page.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the whole chain: exits non-zero and names the first bad
    /// record if any record was edited, inserted, deleted or reordered.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Verify the files of a data dir directly (the server need not run; it
    /// refuses to start on a damaged audit trail). Needs the data dir's root
    /// of trust, given as for `atrest serve`.
    #[arg(long)]
    pub offline: bool,
    #[command(flatten)]
    pub root: RootArgs,
}

/// Where snapshots are stored in object storage: `serve` and `recover`.
#[derive(Debug, Args, Clone)]
pub struct ObjectStoreArgs {
    /// The object store for snapshots: `s3://BUCKET[/PREFIX]` (any
    /// S3-compatible store; credentials from the usual AWS environment
    /// variables), or `file:///DIR` [default: `<data-dir>/objects`].
    #[arg(long = "object-store", env = "ATREST_OBJECT_STORE", value_name = "URL")]
    pub url: Option<String>,
    /// The S3 endpoint (for a store other than AWS: `http://host:3900`).
    #[arg(
        long = "object-store-endpoint",
        env = "ATREST_OBJECT_STORE_ENDPOINT",
        value_name = "URL"
    )]
    pub endpoint: Option<String>,
    /// The S3 region (default: AWS_REGION, else `us-east-1`).
    #[arg(long = "object-store-region", env = "ATREST_OBJECT_STORE_REGION")]
    pub region: Option<String>,
    /// Address buckets by path (`endpoint/bucket/key`), as most
    /// S3-compatible stores want, rather than by virtual host.
    #[arg(
        long = "object-store-path-style",
        env = "ATREST_OBJECT_STORE_PATH_STYLE"
    )]
    pub path_style: bool,
    /// A region whose stored snapshots (and copies to it) go to a store of
    /// their own, `REGION=URL` (repeat; same endpoint, region and
    /// credentials options).
    #[arg(long = "region-object-store", value_name = "REGION=URL")]
    pub region_stores: Vec<String>,
}

impl ObjectStoreArgs {
    /// The per-region stores.
    pub fn region_configs(&self) -> anyhow::Result<Vec<(String, atrest_objstore::StoreConfig)>> {
        self.region_stores
            .iter()
            .map(|s| {
                let (region, url) = s
                    .split_once('=')
                    .filter(|(r, u)| !r.is_empty() && !u.is_empty())
                    .ok_or_else(|| {
                        anyhow::anyhow!("--region-object-store takes REGION=URL, not '{s}'")
                    })?;
                Ok((
                    region.to_owned(),
                    atrest_objstore::StoreConfig {
                        url: url.to_owned(),
                        endpoint: self.endpoint.clone(),
                        region: self.region.clone(),
                        path_style: self.path_style,
                    },
                ))
            })
            .collect()
    }

    /// The configuration, `None` for the default local directory.
    pub fn config(&self) -> Option<atrest_objstore::StoreConfig> {
        self.url.as_ref().map(|url| atrest_objstore::StoreConfig {
            url: url.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            path_style: self.path_style,
        })
    }
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    pub command: StoreCommand,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy a stopped single-node server's metadata (kms.redb, control.redb
    /// of its data dir) into an empty PostgreSQL database, then verify the
    /// row count and SHA-256 of every table on both sides.
    Copy {
        /// The data dir of the server (which must not be running).
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL database: postgres://USER:PASSWORD@HOST:PORT/DB
        /// (with sslmode=require|verify-full and sslrootcert=FILE as libpq).
        #[arg(long, env = "ATREST_STORE", hide_env_values = true)]
        to: String,
    },
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    #[command(subcommand)]
    pub command: RecoverCommand,
}

#[derive(Debug, Subcommand)]
pub enum RecoverCommand {
    /// Write the plaintext image of a snapshot stored in object storage,
    /// from the store, the data dir's metadata and its root of trust (the
    /// server must not be running; a key held in another KMS must be
    /// reachable there).
    Snapshot(RecoverSnapshotArgs),
}

#[derive(Debug, Args)]
pub struct RecoverSnapshotArgs {
    /// The object store (as `serve --object-store`).
    #[arg(long = "from", value_name = "URL")]
    pub from: Option<String>,
    #[command(flatten)]
    pub store: RecoverStoreArgs,
    /// The stored snapshot's id.
    #[arg(long)]
    pub id: String,
    /// The metadata store of a node on PostgreSQL (as given to `serve
    /// --store`) [default: the data dir's redb files].
    #[arg(long = "metadata-store", env = "ATREST_STORE", value_name = "URL")]
    pub metadata_store: Option<String>,
    /// Where to write the image (refused if it exists).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The regions the data dir serves (as `serve --region`).
    #[arg(long = "region", env = "ATREST_REGIONS", value_delimiter = ',', default_value = atrest_server::config::DEFAULT_REGION)]
    pub regions: Vec<String>,
    #[command(flatten)]
    pub root: RootArgs,
}

/// The S3 options of `recover` (the URL is `--from`).
#[derive(Debug, Args, Clone)]
pub struct RecoverStoreArgs {
    /// The S3 endpoint.
    #[arg(
        long = "object-store-endpoint",
        env = "ATREST_OBJECT_STORE_ENDPOINT",
        value_name = "URL"
    )]
    pub endpoint: Option<String>,
    /// The S3 region.
    #[arg(long = "object-store-region", env = "ATREST_OBJECT_STORE_REGION")]
    pub region: Option<String>,
    /// Address buckets by path.
    #[arg(
        long = "object-store-path-style",
        env = "ATREST_OBJECT_STORE_PATH_STYLE"
    )]
    pub path_style: bool,
}

#[derive(Debug, Args)]
pub struct MeteringArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this account (admins; others always see their own).
    #[arg(long)]
    pub account: Option<String>,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: NodeCommand,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Every node: its addresses, its health, its leases and what it hosts
    /// (admins).
    List,
    /// Remove a node that is down and will not come back from the registry
    /// (admins): `audit verify` stops checking its chain.
    Remove {
        /// The node's id (`atrest node list`).
        id: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "ATREST_LISTEN", default_value = atrest_server::config::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub root: RootArgs,
    /// Where the first start writes the admin's credentials (an AWS
    /// shared-credentials file, mode 0600); never inside the data dir
    /// [default: <data-dir>.admin-credentials, beside the data dir]. A data
    /// dir of an earlier release that still holds `admin-credentials` has
    /// it moved here at start.
    #[arg(long, env = "ATREST_ADMIN_CREDENTIALS", value_name = "FILE")]
    pub admin_credentials: Option<PathBuf>,
    /// Region to serve; repeat for several. The first start's regions are not
    /// fixed: regions can be added later.
    #[arg(long = "region", env = "ATREST_REGIONS", value_delimiter = ',', default_value = atrest_server::config::DEFAULT_REGION)]
    pub regions: Vec<String>,
    /// PEM certificate chain: serve HTTPS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address (only behind a TLS proxy).
    #[arg(long)]
    pub allow_plaintext_remote: bool,
    /// Seconds between runs of the rotation and deletion schedule.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub lifecycle_interval: u64,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Serve Prometheus metrics (`GET /metrics`) on this address.
    #[arg(long, env = "ATREST_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Do not serve the web console (`/console/` on the API's listener).
    #[arg(long)]
    pub no_console: bool,
    /// Seconds of inactivity after which a console session ends.
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub console_idle_timeout: u64,
    /// Seconds after sign-in at which a console session ends, used or not.
    #[arg(long, default_value_t = 28_800, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub console_session_lifetime: u64,
    /// Which answers wait until their audit record is durable: `changes`
    /// (a request that changes stored state commits only once its record is
    /// synced; any other request is answered once its record is written to
    /// the log file, which is synced within --audit-sync-interval-ms) or
    /// `every` (no answer before its record is synced). See
    /// `docs/design.md`, "Audit trail".
    #[arg(long, value_enum, default_value_t = AuditSync::Changes)]
    pub audit_sync: AuditSync,
    /// The most time, in milliseconds, a record answered before its sync
    /// waits for that sync: what a power loss can lose at most.
    #[arg(long, default_value_t = DEFAULT_AUDIT_SYNC_INTERVAL_MS, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub audit_sync_interval_ms: u64,
    /// Group commit of the audit trail: how long, at most, a sync that
    /// answers wait for starts after the previous one, so that more records
    /// share it, in microseconds (0: as soon as the previous sync ends).
    /// Like PostgreSQL's `commit_delay`; see `docs/benchmarks.md`.
    #[arg(long, default_value_t = DEFAULT_AUDIT_COMMIT_DELAY_US, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub audit_commit_delay_us: u64,
    /// Seconds between the audit records of requests refused before
    /// authentication: they are counted per client address and written as
    /// one record per address per interval (`operation`
    /// `unauthenticated`, with `count` and `kinds`). Every authenticated
    /// request has a record of its own.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub audit_refusal_interval: u64,
    /// The audit trail's active file is sealed into an immutable segment
    /// (`audit-<first>-<last>[-<min time>-<max time>].log`) and a new one
    /// started once it holds this many bytes (default 67108864, 64 MiB;
    /// 0: never). Starting reads the active file only; queries skip the
    /// segments outside their time window. See `docs/design.md`, "Audit
    /// trail".
    #[arg(long, default_value_t = atrest_audit::DEFAULT_SEGMENT_BYTES)]
    pub audit_segment_bytes: u64,
    /// What an open disk does when its key becomes unusable (disabled,
    /// pending deletion, deleted, grant revoked).
    #[arg(long, value_enum, default_value_t = OnKeyLoss::Close)]
    pub disk_on_key_loss: OnKeyLoss,
    /// With `--disk-on-key-loss close`: seconds after which an open disk
    /// whose key is unusable is closed.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub disk_close_after: u64,
    #[command(flatten)]
    pub object_store: ObjectStoreArgs,
    /// Keep the key service's and the projects' metadata in this
    /// PostgreSQL database (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`,
    /// `?sslmode=require|verify-full&sslrootcert=FILE` for TLS), shared by
    /// every node pointed at it [default: the embedded redb files in the
    /// data dir]. Prefer a password in PGPASSWORD to one in the URL.
    #[arg(long, env = "ATREST_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// This node's name in `atrest node list` [default: the host name].
    #[arg(long, env = "ATREST_NODE_NAME")]
    pub node_name: Option<String>,
    /// The URL clients and the other nodes reach this node's API at
    /// [default: the listen address].
    #[arg(long, value_name = "URL")]
    pub advertise_api: Option<String>,
    /// The address clients reach this node's NBD server at [default: the
    /// NBD listen address].
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_nbd: Option<String>,
    /// Seconds between checks of open disks' keys.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub disk_key_check_interval: u64,
    /// Seconds between checks of every external key (EXTERNAL_KMS) at its
    /// key provider; a refusal there locks the key within this period.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub key_provider_check_interval: u64,
    /// Serve disks over NBD on this address (the IANA NBD port is 10809).
    #[arg(long)]
    pub nbd_listen: Option<SocketAddr>,
    /// The NBD listener's TLS certificate chain (PEM) [default: --tls-cert].
    #[arg(long, requires = "nbd_listen")]
    pub nbd_tls_cert: Option<PathBuf>,
    /// The NBD listener's TLS private key (PEM) [default: --tls-key].
    #[arg(long, requires = "nbd_listen")]
    pub nbd_tls_key: Option<PathBuf>,
    /// CA certificates (PEM) whose client certificates NBD accepts; the
    /// principal is the certificate's `arn:` URI SAN or its common name.
    /// Pre-shared keys (`atrest nbd psk`) are accepted either way.
    #[arg(long, requires = "nbd_listen")]
    pub nbd_tls_client_ca: Option<PathBuf>,
    /// Accept plaintext NBD (loopback only), acting as this principal
    /// (`arn:aws:iam::ACCOUNT:root` or `...:user/NAME`, or `admin`: the
    /// root of the admin account the first start creates); without it,
    /// NBD requires TLS before anything else.
    #[arg(long, requires = "nbd_listen")]
    pub nbd_plaintext_principal: Option<String>,
    /// The directory of PostgreSQL's programs (initdb, pg_ctl, postgres,
    /// pg_basebackup); default: initdb's directory on PATH, or the newest
    /// /usr/lib/postgresql/*/bin.
    #[arg(long, env = "ATREST_DB_PG_BIN")]
    pub db_pg_bin: Option<PathBuf>,
    /// The uids of database instances' own OS users (one user and group
    /// per instance, `atrest-<instance id>`, made and removed by atrest).
    #[arg(long, value_name = "START-END", default_value = "70000-79999", value_parser = atrest_dbservice::parse_uid_range)]
    pub db_uid_range: std::ops::RangeInclusive<u32>,
    /// A local directory for database instances' backups and WAL archives
    /// (default: the object store of --object-store, under db/); objects
    /// under DIR/db/. Backups an earlier release kept in DIR/<instance id>/
    /// are moved there at the start.
    #[arg(long)]
    pub db_backup_dir: Option<PathBuf>,
    /// Testing only: shift the clock of rotation and deletion schedules by
    /// this many days (request signing still uses the real clock).
    #[arg(long, hide = true, default_value_t = 0, allow_negative_numbers = true)]
    pub lifecycle_clock_offset_days: i64,
    /// Testing only: seconds between writes of an access key's last use to
    /// the store (it is kept in memory in between) [default: 60].
    #[arg(long, hide = true, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub access_key_last_used_flush_secs: u64,
    #[command(flatten)]
    pub connections: ConnectionArgs,
}

/// What a connection may hold and take, on every listener (HTTP, metrics,
/// NBD). See `docs/design.md`, "Hostile clients", for the memory these
/// bound.
#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// Connections open at once on each listener; one more is refused
    /// (HTTP 503, or closed over TLS and NBD).
    #[arg(long, default_value_t = atrest_listen::DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections: usize,
    /// Connections open at once from one client address (an IPv6 client
    /// counts by its /64); one more is refused (HTTP 429, or closed over
    /// TLS and NBD).
    #[arg(long, default_value_t = atrest_listen::DEFAULT_MAX_PER_ADDRESS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections_per_address: usize,
    /// Seconds from a connection's start, or from the first byte after an
    /// answer, to the request's complete head (HTTP 408 after it).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub header_timeout: u64,
    /// Seconds from a request's head to its body's last byte (HTTP 408
    /// after it).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub body_timeout: u64,
    /// Seconds a kept-alive HTTP connection may idle between requests.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_timeout: u64,
    /// Seconds a write to a client may make no progress (a client that
    /// does not read its answers is cut).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub write_timeout: u64,
    /// Seconds from an HTTPS connection's start to the end of its TLS
    /// handshake.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub tls_handshake_timeout: u64,
    /// Seconds from an NBD connection's start to the end of its option
    /// negotiation (TLS included).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub nbd_negotiation_timeout: u64,
    /// Seconds open connections get at shutdown to finish the request they
    /// are on before they are cut.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=3_600))]
    pub drain_timeout: u64,
}

impl ConnectionArgs {
    /// As the server takes them.
    pub fn limits(&self) -> atrest_server::config::ConnectionLimits {
        let secs = Duration::from_secs;
        atrest_server::config::ConnectionLimits {
            limits: atrest_listen::Limits {
                max_connections: self.max_connections,
                max_per_address: self.max_connections_per_address,
                drain: secs(self.drain_timeout),
            },
            deadlines: atrest_listen::Deadlines {
                header: secs(self.header_timeout),
                idle: secs(self.idle_timeout),
                write: secs(self.write_timeout),
            },
            body_timeout: secs(self.body_timeout),
            tls_handshake_timeout: secs(self.tls_handshake_timeout),
            nbd_negotiation_timeout: secs(self.nbd_negotiation_timeout),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The server's URL [default: the profile's `endpoint`, else
    /// http://127.0.0.1:7070].
    #[arg(long, global = true, env = "ATREST_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Region to sign requests for [default: the profile's `region`, else
    /// us-east-1].
    #[arg(long, global = true, env = "AWS_REGION")]
    pub region: Option<String>,
    /// Profile: a section of the atrest config file
    /// (`~/.config/atrest/config`, or ATREST_CONFIG_FILE) and of the
    /// credentials file.
    #[arg(long, global = true, env = "AWS_PROFILE", default_value = "default")]
    pub profile: String,
    /// How answers are printed: `table` for people, `json` for programs.
    #[arg(long, global = true, env = "ATREST_OUTPUT", value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// AWS shared-credentials file [default: ~/.aws/credentials]. The
    /// variables AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY take precedence.
    #[arg(long, global = true, env = "AWS_SHARED_CREDENTIALS_FILE")]
    pub credentials_file: Option<PathBuf>,
    /// PEM file of the CA certificates to trust for an https endpoint.
    #[arg(long, global = true)]
    pub ca_file: Option<PathBuf>,
}

/// How answers are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns (lists) or field and value lines (one resource).
    Table,
    /// The API's JSON, pretty-printed.
    Json,
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Accounts.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Access keys.
    #[command(subcommand, name = "access-key")]
    AccessKey(AccessKeyCommand),
    /// Users of an account and their identity policies.
    #[command(subcommand)]
    User(UserCommand),
    /// Make sure your account has a service's key (`alias/atrest/SERVICE`)
    /// in the region, creating it as the service would on first need.
    #[command(name = "service-key")]
    ServiceKey {
        /// The service (`disk`, `db`).
        service: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user.
    Create {
        /// The account.
        #[arg(long)]
        account: String,
        /// The user name.
        #[arg(long)]
        name: String,
    },
    /// List an account's users.
    List {
        /// The account.
        #[arg(long)]
        account: String,
    },
    /// Attach (or replace) an identity policy.
    PutPolicy {
        /// The account.
        #[arg(long)]
        account: String,
        /// The user.
        #[arg(long)]
        user: String,
        /// The policy's name.
        #[arg(long)]
        name: String,
        /// File holding the policy document (JSON).
        #[arg(long)]
        document_file: PathBuf,
    },
    /// Show an identity policy.
    GetPolicy {
        /// The account.
        #[arg(long)]
        account: String,
        /// The user.
        #[arg(long)]
        user: String,
        /// The policy's name.
        #[arg(long)]
        name: String,
    },
    /// Remove an identity policy.
    DeletePolicy {
        /// The account.
        #[arg(long)]
        account: String,
        /// The user.
        #[arg(long)]
        user: String,
        /// The policy's name.
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Create an account.
    Create {
        /// The 12-digit account id [default: random].
        #[arg(long)]
        id: Option<String>,
        /// Make it an admin account.
        #[arg(long)]
        admin: bool,
    },
    /// List accounts.
    List,
    /// Suspend an account's use of keys (every cryptographic operation by or
    /// for it fails until resumed; nothing is lost).
    Suspend {
        /// The account.
        id: String,
    },
    /// Resume a suspended account.
    Resume {
        /// The account.
        id: String,
    },
    /// Every disk of an account in the region, the disks atrest's
    /// services manage for it (database instances') included.
    Disks {
        /// The account.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AccessKeyCommand {
    /// Create an access key for an account's root (admins) or one of its
    /// users; prints its secret once.
    Create {
        /// The account.
        #[arg(long)]
        account: String,
        /// The user (omit for the account's root).
        #[arg(long)]
        user: Option<String>,
    },
    /// Import an existing access key pair (for users moving from another
    /// KMS). The secret is read from a file, or from standard input, never
    /// from the command line.
    Import {
        /// The account.
        #[arg(long)]
        account: String,
        /// The access key id.
        #[arg(long)]
        access_key_id: String,
        /// The user (omit for the account's root).
        #[arg(long)]
        user: Option<String>,
        /// File holding the secret access key [default: read standard input].
        #[arg(long)]
        secret_access_key_file: Option<PathBuf>,
    },
    /// List an account's access keys (a user's own, for a user), with
    /// their status and last use (time, service, region).
    List {
        /// The account.
        #[arg(long)]
        account: String,
    },
    /// Deactivate an access key: from now on it signs no request and its
    /// NBD pre-shared key opens no connection. Admins for any account, an
    /// account's root for its account's keys, a user for its own.
    Deactivate {
        /// The account.
        #[arg(long)]
        account: String,
        /// The access key id.
        id: String,
    },
    /// Activate a deactivated access key again.
    Activate {
        /// The account.
        #[arg(long)]
        account: String,
        /// The access key id.
        id: String,
    },
    /// Delete an access key for good. The last active root key of an admin
    /// account cannot be deleted (nor deactivated).
    Delete {
        /// The account.
        #[arg(long)]
        account: String,
        /// The access key id.
        id: String,
    },
}

/// The data dir and its root of trust: shared by `serve` and by offline
/// commands that read the data dir directly.
#[derive(Debug, Args)]
pub struct RootArgs {
    /// The data dir [default: $XDG_DATA_HOME/atrest, else ~/.local/share/atrest].
    #[arg(long, env = "ATREST_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Root key file (32 bytes, mode 0600), created on first start
    /// [default: <data-dir>.root.key, beside the data dir].
    #[arg(
        long,
        env = "ATREST_ROOT_KEY_FILE",
        conflicts_with = "root_passphrase_file"
    )]
    pub root_key_file: Option<PathBuf>,
    /// Seal the data dir with a passphrase read from this file (argon2id)
    /// instead of a key file. ATREST_ROOT_PASSPHRASE may hold it instead.
    #[arg(long, env = "ATREST_ROOT_PASSPHRASE_FILE")]
    pub root_passphrase_file: Option<PathBuf>,
    /// Seal the data dir with a key held in a PKCS#11 token (an HSM) instead
    /// of a key file: the token vendor's PKCS#11 module (a shared library,
    /// for SoftHSM2 /usr/lib/softhsm/libsofthsm2.so).
    #[arg(
        long,
        env = "ATREST_ROOT_PKCS11_MODULE",
        requires = "root_pkcs11_token",
        conflicts_with_all = ["root_key_file", "root_passphrase_file"]
    )]
    pub root_pkcs11_module: Option<PathBuf>,
    /// Label of the PKCS#11 token that holds the wrapping key.
    #[arg(
        long = "root-pkcs11-token",
        env = "ATREST_ROOT_PKCS11_TOKEN",
        requires = "root_pkcs11_module"
    )]
    pub root_pkcs11_token: Option<String>,
    /// Label of the AES-256 wrapping key in the token; a non-extractable key
    /// is generated there on first start if none has this label.
    #[arg(
        long,
        env = "ATREST_ROOT_PKCS11_KEY_LABEL",
        default_value = "atrest-root",
        requires = "root_pkcs11_module"
    )]
    pub root_pkcs11_key_label: String,
    /// File holding the token's user PIN. ATREST_ROOT_PKCS11_PIN may hold it
    /// instead.
    #[arg(
        long,
        env = "ATREST_ROOT_PKCS11_PIN_FILE",
        requires = "root_pkcs11_module"
    )]
    pub root_pkcs11_pin_file: Option<PathBuf>,
    /// The key providers file (JSON; keys held in another KMS: AWS KMS,
    /// KMIP, Azure Key Vault, Vault transit). Each provider is a custom key
    /// store customers create EXTERNAL_KMS keys in, and may hold the root
    /// key (--root-provider).
    #[arg(long, env = "ATREST_KEY_PROVIDERS")]
    pub key_providers: Option<PathBuf>,
    /// Seal the data dir with a key held by this provider of
    /// --key-providers (auto-unseal) instead of a key file.
    #[arg(
        long,
        env = "ATREST_ROOT_PROVIDER",
        requires_all = ["key_providers", "root_provider_key"],
        conflicts_with_all = ["root_key_file", "root_passphrase_file", "root_pkcs11_module"]
    )]
    pub root_provider: Option<String>,
    /// The provider's key that wraps the root key (an ARN or key id, a KMIP
    /// unique identifier, an Azure key name, a transit key name). Only read
    /// at first start; root.json records it.
    #[arg(long, env = "ATREST_ROOT_PROVIDER_KEY", requires = "root_provider")]
    pub root_provider_key: Option<String>,
}

/// `KEY=VALUE` (the value may be empty or hold `=`).
fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}
