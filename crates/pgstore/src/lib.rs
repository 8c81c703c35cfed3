//! atrest's shared metadata store: one namespace of a PostgreSQL database,
//! behind [`atrest_store::Store`], so that several atrest nodes share the
//! key service's and the control plane's records.
//!
//! Owns: the schema (`atrest_schema`, created and migrated at open), the
//! rows (`atrest_kv`), the cluster-wide order of writes (`atrest_version`,
//! one row per namespace, locked by every write transaction), the change
//! log (`atrest_changes`, pruned) with `NOTIFY`, the in-memory mirror that
//! serves reads, leases (`atrest_leases`, on PostgreSQL's clock), the
//! connections (pool, TLS, retries). Must not know what the records mean.
//!
//! # How it works
//!
//! * A write transaction begins with `SELECT v FROM atrest_version WHERE
//!   ns = $1 FOR UPDATE`: writers of a namespace are serialised across all
//!   nodes, and commit order is version order. The transaction's reads come
//!   from the mirror caught up to `v` (nobody else can commit meanwhile);
//!   its writes are kept in memory and sent at commit with the version bump
//!   to `v + 1`, one change-log row per touched key and `NOTIFY
//!   atrest_changes_<ns>`, then `COMMIT`. Before `commit` returns, the
//!   change is in this node's mirror (read-your-writes on one node).
//!   In-process writers queue on a local mutex first, so a node holds at
//!   most one connection waiting on the lock.
//! * Reads are served from the mirror, a persistent ordered map (`imbl`):
//!   a read transaction is a snapshot clone, no query.
//! * A listener task holds its own connection with `LISTEN` and wakes on a
//!   notification or every 250 ms; it catches up in one `REPEATABLE READ`
//!   transaction (the version, the change-log rows since the mirror's
//!   version and the current values of those keys), applies them
//!   atomically, calls the watchers with [`Change::Row`], and records when
//!   that query began as the time the mirror was confirmed current. If the
//!   log no longer reaches back (pruned), it reloads the namespace and
//!   calls the watchers with [`Change::All`].
//! * [`Store::is_current`] is "confirmed within the bound" (1 s,
//!   [`PgOptions::staleness_bound`]). When it is false, a read transaction
//!   first catches up synchronously ([`Store::refresh`], coalesced): a read
//!   either sees PostgreSQL's state as of the call or fails with a
//!   [`StoreError`], never stale data. Watchers hear [`Change::All`] when
//!   the store goes stale and again when it is current again.
//! * Transient errors (connection refused or reset, server shutting down,
//!   serialization failure) when beginning are retried with backoff (50,
//!   100, 200, 400 ms); a failure inside a transaction fails it.
//!
//! Calls block the calling thread and are safe from any thread, a tokio
//! worker included: the driver (`tokio-postgres`) runs on a private
//! runtime of two threads and the caller waits on a channel. Watchers run on
//! that runtime: they must be quick and must not call back into the store.
//!
//! Driver: `tokio-postgres` on the private runtime. The blocking `postgres`
//! crate is a wrapper of the same driver that runs its own runtime per
//! connection and panics when called from inside a tokio runtime, so it
//! would need threads of our own; it was not measured separately (same
//! protocol, same round trips). Measured here on loopback (PostgreSQL 15,
//! `fsync=off`, 2 cores, test `round_trip_figures`): a one-row write
//! transaction (lock, upsert, change row, version bump, notify, commit)
//! 0.9-1.3 ms; a read transaction from the mirror 0.4 us (no query); a
//! lease 0.2-0.3 ms; a refresh (catch-up query) 0.23 ms.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod conn;

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use atrest_store::{Change, Entry, ReadTx, Store, StoreError, Table, WriteTx};
use tokio_postgres::Client;

pub use conn::SslMode;
use conn::{BACKOFF, Failure, Pool};

/// The schema version this code writes and reads.
pub const SCHEMA_VERSION: i32 = 1;

/// Tunables; [`PgOptions::default`] is what a server uses.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// How old the last confirmation may be for the mirror to count as
    /// current (the documented bound: 1 s).
    pub staleness_bound: Duration,
    /// How often the listener checks the version without a notification.
    pub poll_interval: Duration,
    /// The change log keeps at least this many newest entries...
    pub changes_keep_entries: i64,
    /// ...or entries younger than this, whichever keeps fewer.
    pub changes_keep_age: Duration,
    /// The log is pruned on the commit of every version that is a multiple
    /// of this.
    pub prune_every: i64,
    /// Connection timeout.
    pub connect_timeout: Duration,
    /// The longest one call (begin, commit, a catch-up, a lease) may take.
    pub call_timeout: Duration,
    /// Idle connections kept.
    pub max_idle: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            staleness_bound: Duration::from_secs(1),
            poll_interval: Duration::from_millis(250),
            changes_keep_entries: 100_000,
            changes_keep_age: Duration::from_secs(600),
            prune_every: 256,
            connect_timeout: Duration::from_secs(3),
            call_timeout: Duration::from_secs(10),
            max_idle: 4,
        }
    }
}

type Key = (String, Vec<u8>);
type Map = imbl::OrdMap<Key, Vec<u8>>;
/// Pending changes of a write transaction: `None` is a deletion.
type Overlay = BTreeMap<Key, Option<Vec<u8>>>;

struct Mirror {
    version: i64,
    map: Map,
}

/// What a catch-up found.
enum Delta {
    /// The mirror is at the version already.
    None,
    /// The keys changed since the mirror's version and their values now.
    Rows(Vec<(String, Vec<u8>, Option<Vec<u8>>)>),
    /// The whole namespace (the change log did not reach back).
    Reload(Map),
}

struct Inner {
    ns: String,
    channel: String,
    opts: PgOptions,
    pool: Pool,
    mirror: RwLock<Mirror>,
    /// When the last confirmation's query began, in ns since `epoch` + 1
    /// (0: never).
    confirmed_ns: AtomicU64,
    epoch: Instant,
    /// Whether watchers were told the store went stale (and not yet that it
    /// is current again).
    stale_announced: AtomicBool,
    watchers: RwLock<Vec<atrest_store::Watcher>>,
    writer: Mutex<()>,
    refreshing: Mutex<()>,
    listener_paused: AtomicBool,
    commits: AtomicU64,
    catch_ups: AtomicU64,
    reloads: AtomicU64,
}

/// The metadata store in one namespace of a PostgreSQL database.
pub struct PgStore {
    inner: Arc<Inner>,
}

/// Counters of one [`PgStore`], for tests and diagnostics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PgStats {
    /// The mirror's version.
    pub version: i64,
    /// Write transactions committed by this store.
    pub commits: u64,
    /// Catch-ups that applied changes.
    pub catch_ups: u64,
    /// Full reloads (the change log did not reach back).
    pub reloads: u64,
}

fn backend(shown: &str, what: &str, message: &str) -> StoreError {
    StoreError::Backend(format!("PostgreSQL at {shown}: {what}: {message}"))
}

fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 40
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl PgStore {
    /// Opens namespace `namespace` (lowercase letters, digits, `_`) of the
    /// database at `url` (`postgres://USER:PASSWORD@HOST:PORT/DB`, with
    /// libpq's `sslmode=disable|prefer|require|verify-full` and
    /// `sslrootcert=FILE`), creating or migrating the schema, loading the
    /// namespace and starting the listener.
    pub fn open(url: &str, namespace: &str) -> Result<PgStore, StoreError> {
        Self::open_with(url, namespace, PgOptions::default())
    }

    /// [`PgStore::open`] with tunables.
    pub fn open_with(url: &str, namespace: &str, opts: PgOptions) -> Result<PgStore, StoreError> {
        if !valid_namespace(namespace) {
            return Err(StoreError::Backend(format!(
                "PostgreSQL store namespace {namespace:?}: use 1 to 40 lowercase letters, digits or _"
            )));
        }
        let target = conn::parse_url(url, opts.connect_timeout)?;
        let pool = Pool::new(target, opts.max_idle);
        let inner = Arc::new(Inner {
            ns: namespace.to_owned(),
            channel: format!("atrest_changes_{namespace}"),
            pool,
            mirror: RwLock::new(Mirror {
                version: -1,
                map: Map::new(),
            }),
            confirmed_ns: AtomicU64::new(0),
            epoch: Instant::now(),
            stale_announced: AtomicBool::new(false),
            watchers: RwLock::new(Vec::new()),
            writer: Mutex::new(()),
            refreshing: Mutex::new(()),
            listener_paused: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            catch_ups: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            opts,
        });
        let i = Arc::clone(&inner);
        inner.call("opening the store", async move {
            let c = i.pool.get().await?;
            migrate(&c, &i.ns).await?;
            i.pool.put(c);
            Ok(())
        })?;
        // The first load: version -1 is never in the log, so this reloads.
        inner.refresh()?;
        conn::spawn(listener(Arc::downgrade(&inner)))?;
        conn::spawn(watchdog(Arc::downgrade(&inner)))?;
        Ok(PgStore { inner })
    }

    /// The namespace.
    #[must_use]
    pub fn namespace(&self) -> &str {
        &self.inner.ns
    }

    /// The server, as shown in messages (`host:port (database, user)`).
    #[must_use]
    pub fn server(&self) -> &str {
        self.inner.pool.shown()
    }

    /// Counters of this store.
    #[must_use]
    pub fn stats(&self) -> PgStats {
        PgStats {
            version: self.inner.mirror_read().version,
            commits: self.inner.commits.load(Ordering::Relaxed),
            catch_ups: self.inner.catch_ups.load(Ordering::Relaxed),
            reloads: self.inner.reloads.load(Ordering::Relaxed),
        }
    }

    /// Stops (`true`) or resumes the listener's catch-ups: a test's way to
    /// make this store fall behind. Not for production use.
    #[doc(hidden)]
    pub fn pause_listener(&self, paused: bool) {
        self.inner.listener_paused.store(paused, Ordering::SeqCst);
    }
}

async fn migrate(c: &Client, ns: &str) -> Result<(), Failure> {
    c.batch_execute(
        "SET client_min_messages = warning; BEGIN; SELECT pg_advisory_xact_lock(7242773001);
         CREATE TABLE IF NOT EXISTS atrest_schema (
             id int PRIMARY KEY CHECK (id = 1), version int NOT NULL)",
    )
    .await?;
    let found: Option<i32> = c
        .query_opt("SELECT version FROM atrest_schema WHERE id = 1", &[])
        .await?
        .map(|r| r.get(0));
    let result = async {
        match found {
            None => {
                c.batch_execute(
                    "CREATE TABLE atrest_kv (
                         ns text NOT NULL, tbl text NOT NULL, key bytea NOT NULL,
                         value bytea NOT NULL, PRIMARY KEY (ns, tbl, key));
                     CREATE TABLE atrest_version (ns text PRIMARY KEY, v bigint NOT NULL);
                     CREATE TABLE atrest_changes (
                         ns text NOT NULL, seq bigint NOT NULL, tbl text NOT NULL,
                         key bytea NOT NULL, at timestamptz NOT NULL DEFAULT now());
                     CREATE INDEX atrest_changes_ns_seq ON atrest_changes (ns, seq);
                     CREATE TABLE atrest_leases (
                         ns text NOT NULL, name text NOT NULL, holder text NOT NULL,
                         expires_at timestamptz NOT NULL, PRIMARY KEY (ns, name));
                     INSERT INTO atrest_schema (id, version) VALUES (1, 1);",
                )
                .await?;
            }
            Some(v) if v == SCHEMA_VERSION => {}
            Some(v) if v > SCHEMA_VERSION => {
                return Err(Failure::fatal(format!(
                    "the database's atrest schema is version {v}, newer than this \
                     atrest's ({SCHEMA_VERSION}): upgrade atrest"
                )));
            }
            Some(v) => {
                return Err(Failure::fatal(format!(
                    "the database's atrest schema version {v} is unknown"
                )));
            }
        }
        c.execute(
            "INSERT INTO atrest_version (ns, v) VALUES ($1, 0) ON CONFLICT DO NOTHING",
            &[&ns],
        )
        .await?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => c.batch_execute("COMMIT").await.map_err(Failure::from),
        Err(e) => {
            let _ = c.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Reads what changed in namespace `ns` in versions (`from`, `to`], in the
/// transaction open on `c` (which must see exactly the writes <= `to`).
async fn fetch_delta(c: &Client, ns: &str, from: i64, to: i64) -> Result<Delta, Failure> {
    if to == from {
        return Ok(Delta::None);
    }
    let mut complete = to > from;
    let mut rows = Vec::new();
    if complete {
        let found = c
            .query(
                "SELECT c.seq, c.tbl, c.key, k.value FROM atrest_changes c
                 LEFT JOIN atrest_kv k ON k.ns = c.ns AND k.tbl = c.tbl AND k.key = c.key
                 WHERE c.ns = $1 AND c.seq > $2 AND c.seq <= $3 ORDER BY c.seq",
                &[&ns, &from, &to],
            )
            .await?;
        complete = found
            .first()
            .is_some_and(|r| r.get::<_, i64>(0) == from + 1);
        let mut seen = std::collections::HashSet::new();
        for r in found {
            let tbl: String = r.get(1);
            let key: Vec<u8> = r.get(2);
            if seen.insert((tbl.clone(), key.clone())) {
                rows.push((tbl, key, r.get::<_, Option<Vec<u8>>>(3)));
            }
        }
    }
    if complete {
        return Ok(Delta::Rows(rows));
    }
    let all = c
        .query(
            "SELECT tbl, key, value FROM atrest_kv WHERE ns = $1",
            &[&ns],
        )
        .await?;
    let mut map = Map::new();
    for r in all {
        map.insert((r.get(0), r.get(1)), r.get(2));
    }
    Ok(Delta::Reload(map))
}

impl Inner {
    fn mirror_read(&self) -> std::sync::RwLockReadGuard<'_, Mirror> {
        match self.mirror.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn mirror_write(&self) -> std::sync::RwLockWriteGuard<'_, Mirror> {
        match self.mirror.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn snapshot(&self) -> (i64, Map) {
        let m = self.mirror_read();
        (m.version, m.map.clone())
    }

    /// Runs one call on the runtime; failures become [`StoreError`]s.
    fn call<T, F>(&self, what: &str, fut: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, Failure>> + Send + 'static,
    {
        let shown = self.pool.shown().to_owned();
        let what_owned = what.to_owned();
        conn::run(self.pool.shown(), self.opts.call_timeout, async move {
            fut.await
                .map_err(|f| backend(&shown, &what_owned, &f.message))
        })
    }

    /// Runs `attempt` until it succeeds, fails for good, or the backoff is
    /// spent (transient failures only).
    fn call_retrying<T, F, Fut>(self: &Arc<Self>, what: &str, attempt: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(Arc<Inner>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Failure>> + Send,
    {
        let me = Arc::clone(self);
        self.call(what, async move {
            let mut last = None;
            for pause in std::iter::once(Duration::ZERO).chain(BACKOFF) {
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                match attempt(Arc::clone(&me)).await {
                    Ok(v) => return Ok(v),
                    Err(f) if f.transient => last = Some(f),
                    Err(f) => return Err(f),
                }
            }
            Err(last.unwrap_or_else(|| Failure::fatal("no attempt made")))
        })
    }

    fn now_ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn is_current(&self) -> bool {
        let confirmed = self.confirmed_ns.load(Ordering::SeqCst);
        if confirmed == 0 {
            return false;
        }
        let bound = u64::try_from(self.opts.staleness_bound.as_nanos()).unwrap_or(u64::MAX);
        self.now_ns(Instant::now()) < confirmed.saturating_add(bound)
    }

    fn notify(&self, change: &Change<'_>) {
        let watchers = match self.watchers.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        for w in watchers {
            w(change);
        }
    }

    /// Tells the watchers once when the store has gone stale.
    fn check_stale(&self) {
        if !self.is_current()
            && self.confirmed_ns.load(Ordering::SeqCst) != 0
            && !self.stale_announced.swap(true, Ordering::SeqCst)
        {
            tracing::warn!(
                namespace = %self.ns,
                server = %self.pool.shown(),
                "the PostgreSQL store is not confirmed current: reads go to PostgreSQL"
            );
            self.notify(&Change::All);
        }
    }

    /// Applies a delta that brings the mirror from `from` to `to`, then
    /// records `began` as confirmation and tells the watchers.
    fn apply(&self, from: i64, to: i64, delta: Delta, began: Instant, announce: bool) {
        let mut changed: Vec<(String, Vec<u8>)> = Vec::new();
        let mut reloaded = false;
        {
            let mut m = self.mirror_write();
            if m.version >= from && m.version < to {
                match delta {
                    Delta::None => {}
                    Delta::Rows(rows) => {
                        for (t, k, v) in rows {
                            let key = (t, k);
                            match v {
                                Some(v) => {
                                    m.map.insert(key.clone(), v);
                                }
                                None => {
                                    m.map.remove(&key);
                                }
                            }
                            changed.push(key);
                        }
                    }
                    Delta::Reload(map) => {
                        m.map = map;
                        reloaded = true;
                    }
                }
                m.version = to;
            }
        }
        self.confirmed_ns
            .fetch_max(self.now_ns(began), Ordering::SeqCst);
        if reloaded {
            self.reloads.fetch_add(1, Ordering::Relaxed);
        }
        if !changed.is_empty() || reloaded {
            self.catch_ups.fetch_add(1, Ordering::Relaxed);
        }
        let back = self.stale_announced.swap(false, Ordering::SeqCst);
        if announce {
            if reloaded || back {
                self.notify(&Change::All);
            } else {
                for (t, k) in &changed {
                    self.notify(&Change::Row { table: t, key: k });
                }
            }
        }
    }

    /// One catch-up on `c`, in a REPEATABLE READ transaction.
    async fn catch_up_on(&self, c: &Client) -> Result<(), Failure> {
        let began = Instant::now();
        let from = self.mirror_read().version;
        c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let result = async {
            let to: i64 = c
                .query_opt("SELECT v FROM atrest_version WHERE ns = $1", &[&self.ns])
                .await?
                .map(|r| r.get(0))
                .ok_or_else(|| {
                    Failure::fatal(format!(
                        "namespace {} has no version row (was the schema dropped?)",
                        self.ns
                    ))
                })?;
            let delta = fetch_delta(c, &self.ns, from, to).await?;
            Ok::<_, Failure>((to, delta))
        }
        .await;
        let _ = c.batch_execute("COMMIT").await;
        let (to, delta) = result?;
        self.apply(from, to, delta, began, true);
        Ok(())
    }

    /// A synchronous catch-up; concurrent callers share one.
    fn refresh(self: &Arc<Self>) -> Result<(), StoreError> {
        let called = Instant::now();
        let _one = match self.refreshing.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if self.confirmed_ns.load(Ordering::SeqCst) > self.now_ns(called) {
            // A catch-up that began after this call finished meanwhile.
            return Ok(());
        }
        self.call_retrying("catching up", |me| async move {
            let c = me.pool.get().await?;
            me.catch_up_on(&c).await?;
            me.pool.put(c);
            Ok(())
        })
    }
}

/// The listener: LISTEN on its own connection, catch up on a notification
/// or every poll interval; reconnect when the connection fails. Ends when
/// the store is dropped.
async fn listener(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let poll = inner.opts.poll_interval;
        let connected = inner.pool.connect_listening().await;
        let (client, mut rx) = match connected {
            Ok(v) => v,
            Err(f) => {
                tracing::debug!(error = %f.message, "PostgreSQL store listener: connecting");
                inner.check_stale();
                drop(inner);
                tokio::time::sleep(poll).await;
                continue;
            }
        };
        let listen = format!("LISTEN {}", inner.channel);
        if client.batch_execute(&listen).await.is_err() {
            inner.check_stale();
            drop(inner);
            tokio::time::sleep(poll).await;
            continue;
        }
        drop(inner);
        loop {
            let closed = match tokio::time::timeout(poll, rx.recv()).await {
                Ok(Some(())) => {
                    while rx.try_recv().is_ok() {}
                    false
                }
                Ok(None) => true,
                Err(_) => false,
            };
            let Some(inner) = weak.upgrade() else { return };
            if closed || client.is_closed() {
                inner.check_stale();
                break;
            }
            if !inner.listener_paused.load(Ordering::SeqCst) {
                let limit = inner.opts.staleness_bound;
                match tokio::time::timeout(limit, inner.catch_up_on(&client)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(f)) => {
                        tracing::debug!(error = %f.message, "PostgreSQL store listener: catching up");
                        inner.check_stale();
                        break;
                    }
                    Err(_) => {
                        inner.check_stale();
                        break;
                    }
                }
            }
            inner.check_stale();
        }
        tokio::time::sleep(poll).await;
    }
}

/// Tells the watchers when the store goes stale even while the listener
/// is stuck (a connection attempt into a network split takes up to the
/// connect timeout). Ends when the store is dropped.
async fn watchdog(weak: Weak<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(inner) = weak.upgrade() else { return };
        inner.check_stale();
    }
}

impl Store for PgStore {
    fn read(&self) -> Result<Box<dyn ReadTx + '_>, StoreError> {
        if !self.inner.is_current() {
            self.inner.check_stale();
            self.inner.refresh()?;
        }
        let (_, map) = self.inner.snapshot();
        Ok(Box::new(PgRead { map }))
    }

    fn write(&self) -> Result<Box<dyn WriteTx + '_>, StoreError> {
        let guard = match self.inner.writer.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let (client, version) =
            self.inner
                .call_retrying("beginning a write transaction", |me| async move {
                    let c = me.pool.get().await?;
                    let began = Instant::now();
                    let locked = async {
                        c.batch_execute("BEGIN").await?;
                        let v: i64 = c
                            .query_opt(
                                "SELECT v FROM atrest_version WHERE ns = $1 FOR UPDATE",
                                &[&me.ns],
                            )
                            .await?
                            .map(|r| r.get(0))
                            .ok_or_else(|| {
                                Failure::fatal(format!("namespace {} has no version row", me.ns))
                            })?;
                        let from = me.mirror_read().version;
                        if from != v {
                            // Nobody else can commit while we hold the lock:
                            // what we read now is exactly version v.
                            let delta = fetch_delta(&c, &me.ns, from, v).await?;
                            me.apply(from, v, delta, began, true);
                        }
                        Ok::<_, Failure>(v)
                    }
                    .await;
                    match locked {
                        Ok(v) => Ok((c, v)),
                        Err(f) => {
                            // The connection may be mid-transaction: drop it.
                            drop(c);
                            Err(f)
                        }
                    }
                })?;
        let (at, base) = self.inner.snapshot();
        if at != version {
            rollback(&self.inner, client);
            return Err(backend(
                self.inner.pool.shown(),
                "beginning a write transaction",
                "the mirror did not reach the locked version",
            ));
        }
        Ok(Box::new(PgWrite {
            inner: &self.inner,
            client: Some(client),
            version,
            base,
            changes: Overlay::new(),
            _guard: guard,
        }))
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn watch(&self, watcher: atrest_store::Watcher) {
        match self.inner.watchers.write() {
            Ok(mut g) => g.push(watcher),
            Err(p) => p.into_inner().push(watcher),
        }
    }

    fn is_current(&self) -> bool {
        self.inner.is_current()
    }

    fn refresh(&self) -> Result<(), StoreError> {
        self.inner.refresh()
    }

    fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        let secs = ttl.as_secs_f64();
        self.inner.call_retrying("taking a lease", move |me| {
            let (name, holder) = (name.clone(), holder.clone());
            async move {
                let c = me.pool.get().await?;
                let row = c
                    .query_opt(
                        "INSERT INTO atrest_leases (ns, name, holder, expires_at)
                         VALUES ($1, $2, $3, now() + make_interval(secs => $4))
                         ON CONFLICT (ns, name) DO UPDATE
                           SET holder = excluded.holder, expires_at = excluded.expires_at
                           WHERE atrest_leases.expires_at <= now()
                              OR atrest_leases.holder = excluded.holder
                         RETURNING holder",
                        &[&me.ns, &name, &holder, &secs],
                    )
                    .await?;
                me.pool.put(c);
                Ok(row.is_some())
            }
        })
    }

    fn tables(&self) -> Result<Vec<Table>, StoreError> {
        if !self.inner.is_current() {
            self.inner.refresh()?;
        }
        let (_, map) = self.inner.snapshot();
        let mut names: Vec<String> = Vec::new();
        for (t, _) in map.keys() {
            if names.last() != Some(t) {
                names.push(t.clone());
            }
        }
        Ok(names.into_iter().map(Table::named).collect())
    }
}

/// Ends a transaction that will not commit, in the background; the
/// connection goes back to the pool if that works.
fn rollback(inner: &Arc<Inner>, client: Arc<Client>) {
    let me = Arc::clone(inner);
    let _ = conn::spawn(async move {
        if client.batch_execute("ROLLBACK").await.is_ok() {
            me.pool.put(client);
        }
    });
}

fn bounds(table: &str, prefix: &[u8], after: Option<&[u8]>) -> (Bound<Key>, Bound<Key>) {
    let t = table.to_owned();
    let start = match after {
        Some(a) if a >= prefix => Bound::Excluded((t.clone(), a.to_vec())),
        _ => Bound::Included((t.clone(), prefix.to_vec())),
    };
    let end = match prefix_end(prefix) {
        Some(e) => Bound::Excluded((t, e)),
        None => {
            // Every key of `table` is below (table + "\0", []).
            let mut next = t;
            next.push('\0');
            Bound::Excluded((next, Vec::new()))
        }
    };
    (start, end)
}

fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn scan_map(
    map: &Map,
    table: Table,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
) -> Vec<Entry> {
    let t = table.name();
    map.range(bounds(t, prefix, after))
        .take_while(|((tn, _), _)| tn == t)
        .take(limit)
        .map(|((_, k), v)| (k.clone(), v.clone()))
        .collect()
}

struct PgRead {
    map: Map,
}

impl ReadTx for PgRead {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .map
            .get(&(table.name().to_owned(), key.to_vec()))
            .cloned())
    }

    fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        Ok(scan_map(&self.map, table, prefix, after, limit))
    }
}

struct PgWrite<'a> {
    inner: &'a Arc<Inner>,
    client: Option<Arc<Client>>,
    version: i64,
    base: Map,
    changes: Overlay,
    _guard: MutexGuard<'a, ()>,
}

impl ReadTx for PgWrite<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let k = (table.name().to_owned(), key.to_vec());
        match self.changes.get(&k) {
            Some(change) => Ok(change.clone()),
            None => Ok(self.base.get(&k).cloned()),
        }
    }

    /// Merges the snapshot with this transaction's changes, which win.
    fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let t = table.name();
        let base = self
            .base
            .range(bounds(t, prefix, after))
            .take_while(|((tn, _), _)| tn == t)
            .map(|((_, k), v)| (k.as_slice(), v.as_slice()));
        let pending = self
            .changes
            .range(bounds(t, prefix, after))
            .take_while(|((tn, _), _)| tn == t)
            .map(|((_, k), v)| (k.as_slice(), v.as_deref()));
        Ok(atrest_store::merge_pending(base, pending, limit))
    }
}

impl WriteTx for PgWrite<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.changes.insert(
            (table.name().to_owned(), key.to_vec()),
            Some(value.to_vec()),
        );
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
        let existed = self.get(table, key)?.is_some();
        self.changes
            .insert((table.name().to_owned(), key.to_vec()), None);
        Ok(existed)
    }

    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        let Some(client) = self.client.take() else {
            return Err(backend(
                self.inner.pool.shown(),
                "committing",
                "the transaction is already over",
            ));
        };
        if self.changes.is_empty() {
            rollback(self.inner, client);
            return Ok(());
        }
        let changes = std::mem::take(&mut self.changes);
        let next = self.version + 1;
        let mut put = (Vec::new(), Vec::new(), Vec::new());
        let mut del = (Vec::new(), Vec::new());
        let mut all = (Vec::new(), Vec::new());
        for ((t, k), v) in &changes {
            all.0.push(t.clone());
            all.1.push(k.clone());
            match v {
                Some(v) => {
                    put.0.push(t.clone());
                    put.1.push(k.clone());
                    put.2.push(v.clone());
                }
                None => {
                    del.0.push(t.clone());
                    del.1.push(k.clone());
                }
            }
        }
        let ns = self.inner.ns.clone();
        let channel = self.inner.channel.clone();
        let opts = self.inner.opts.clone();
        let c = Arc::clone(&client);
        let result = self.inner.call("committing", async move {
            let keep_age = opts.changes_keep_age.as_secs_f64();
            let prune_below = next - opts.changes_keep_entries;
            let version = next.to_string();
            let work = async {
                if !put.0.is_empty() {
                    c.execute(
                        "INSERT INTO atrest_kv (ns, tbl, key, value)
                         SELECT $1, t, k, v FROM unnest($2::text[], $3::bytea[], $4::bytea[]) AS u(t, k, v)
                         ON CONFLICT (ns, tbl, key) DO UPDATE SET value = excluded.value",
                        &[&ns, &put.0, &put.1, &put.2],
                    )
                    .await?;
                }
                if !del.0.is_empty() {
                    c.execute(
                        "DELETE FROM atrest_kv WHERE ns = $1 AND (tbl, key) IN
                         (SELECT t, k FROM unnest($2::text[], $3::bytea[]) AS u(t, k))",
                        &[&ns, &del.0, &del.1],
                    )
                    .await?;
                }
                c.execute(
                    "INSERT INTO atrest_changes (ns, seq, tbl, key)
                     SELECT $1, $2, t, k FROM unnest($3::text[], $4::bytea[]) AS u(t, k)",
                    &[&ns, &next, &all.0, &all.1],
                )
                .await?;
                c.execute(
                    "UPDATE atrest_version SET v = $2 WHERE ns = $1",
                    &[&ns, &next],
                )
                .await?;
                if opts.prune_every > 0 && next % opts.prune_every == 0 {
                    c.execute(
                        "DELETE FROM atrest_changes WHERE ns = $1
                         AND (seq <= $2 OR at < now() - make_interval(secs => $3))",
                        &[&ns, &prune_below, &keep_age],
                    )
                    .await?;
                }
                c.execute("SELECT pg_notify($1, $2)", &[&channel, &version])
                    .await?;
                c.batch_execute("COMMIT").await?;
                Ok::<(), Failure>(())
            };
            work.await
        });
        match result {
            Ok(()) => {
                {
                    let mut m = self.inner.mirror_write();
                    if m.version == self.version {
                        for (k, v) in changes {
                            match v {
                                Some(v) => {
                                    m.map.insert(k, v);
                                }
                                None => {
                                    m.map.remove(&k);
                                }
                            }
                        }
                        m.version = next;
                    }
                }
                self.inner.commits.fetch_add(1, Ordering::Relaxed);
                self.inner.pool.put(client);
                Ok(())
            }
            // The connection's state is unknown: it is dropped, which ends
            // any transaction still open on it.
            Err(e) => Err(e),
        }
    }
}

impl Drop for PgWrite<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            rollback(self.inner, c);
        }
    }
}
