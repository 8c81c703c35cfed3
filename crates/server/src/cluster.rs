//! Several nodes on one shared metadata store: who this node is, the node
//! registry, and the leases that keep each periodic task on one node.
//!
//! Every node writes its [`NodeRecord`] to the key service's store (table
//! `cluster.nodes`) every [`HEARTBEAT`]: its addresses, the disks and
//! database instances it hosts (a disk lives in one node's pool), and the
//! leases it holds. On the embedded store there is one node and the same
//! code answers for it. A node is up while its last heartbeat is younger
//! than [`DOWN_AFTER`].
//!
//! Leases ([`Lease`]) are the store's (`Store::lease`, on PostgreSQL's
//! clock): [`LEASE_TTL`] long, renewed every heartbeat, so another node takes
//! a dead holder's over within `LEASE_TTL + HEARTBEAT` (12 s, inside the
//! 15 s bound). A node counts a lease as held only until `LEASE_TTL -
//! HEARTBEAT` after the renewal that granted it began, so it stops before
//! anyone else may start, even if its renewals hang.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atrest_store::{Store, StoreError, Table};
use serde::{Deserialize, Serialize};

/// The registry's table in the key service's store.
pub const NODES: Table = Table::new("cluster.nodes");

/// How often a node renews its leases and writes its record.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node whose record is older than this is shown as down.
pub const DOWN_AFTER: Duration = Duration::from_secs(10);
/// How long a lease lasts unless renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// The periodic tasks that run on one node at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lease {
    /// Automatic rotation, deletion at the end of the waiting period,
    /// expiry of imported material.
    Lifecycle,
    /// The external keys' health check at their providers.
    ExternalKeys,
    /// The projects' revocation policies.
    Projects,
}

impl Lease {
    /// Every lease.
    pub const ALL: [Self; 3] = [Self::Lifecycle, Self::ExternalKeys, Self::Projects];

    /// Its name in the store and in `GET /v1/nodes`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Lifecycle => "lifecycle",
            Self::ExternalKeys => "external-keys-health",
            Self::Projects => "projects-revocation",
        }
    }
}

/// Who this node is: `<data-dir>/node.json` keeps its id across restarts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// A UUID made at the node's first start.
    pub id: String,
    /// A name for people (`--node-name`, default the host name).
    #[serde(skip)]
    pub name: String,
}

/// Reads (or makes, at first start) the node's id in `data_dir`.
pub fn node_identity(data_dir: &Path, name: Option<&str>) -> std::io::Result<NodeIdentity> {
    let path = data_dir.join("node.json");
    let mut node: NodeIdentity = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is damaged: {e}", path.display()),
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let node = NodeIdentity {
                id: uuid::Uuid::new_v4().to_string(),
                name: String::new(),
            };
            let tmp = path.with_extension("json.tmp");
            std::fs::write(
                &tmp,
                serde_json::to_vec(&node).map_err(std::io::Error::other)?,
            )?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            node
        }
        Err(e) => return Err(e),
    };
    node.name = match name {
        Some(n) => n.to_owned(),
        None => host_name(),
    };
    Ok(node)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "atrest".into())
}

/// The disks `disks` hosts now, as this node's record names them.
pub(crate) fn hosted_disks(disks: &atrest_diskservice::DiskService) -> Vec<HostedDisk> {
    disks
        .hosted()
        .into_iter()
        .map(|(id, account)| HostedDisk { id, account })
        .collect()
}

/// The instances `db` hosts now, as this node's record names them.
pub(crate) fn hosted_instances(db: &atrest_dbservice::DbService) -> Vec<HostedInstance> {
    db.hosted()
        .into_iter()
        .map(|(id, name, account)| HostedInstance { id, name, account })
        .collect()
}

/// A disk a node hosts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostedDisk {
    /// The disk's id.
    pub id: String,
    /// Its account.
    pub account: String,
}

/// A database instance a node hosts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostedInstance {
    /// The instance's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its account.
    pub account: String,
}

/// What a node publishes of itself every heartbeat.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The URL of its API.
    pub api_url: String,
    /// Its NBD address, if it serves NBD.
    pub nbd_addr: Option<String>,
    /// When it started (ms since the epoch).
    pub started_ms: i64,
    /// Its last heartbeat (ms since the epoch, its clock).
    pub heartbeat_ms: i64,
    /// The leases it held at that heartbeat.
    pub leases: Vec<String>,
    /// The disks in its pool.
    pub disks: Vec<HostedDisk>,
    /// The database instances it runs.
    pub instances: Vec<HostedInstance>,
    /// Anything else a part of the server publishes per node (the audit
    /// chain's head, metering), by name.
    #[serde(default)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Why a node could not be removed from the registry.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// No node has this id.
    #[error("no such node")]
    NotFound,
    /// The node is up (or is this node): it would register itself again.
    #[error("node {0} is up")]
    Up(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// This node's view of the cluster.
pub struct Cluster {
    store: Arc<dyn Store>,
    me: NodeIdentity,
    api_url: String,
    nbd_addr: Mutex<Option<String>>,
    started_ms: i64,
    /// Until when each lease counts as held here.
    held: Mutex<BTreeMap<Lease, Instant>>,
    /// Sources of [`NodeRecord::extra`], called at each heartbeat.
    extras: Mutex<Vec<(String, Extra)>>,
}

/// A source of one entry of [`NodeRecord::extra`].
pub type Extra = Box<dyn Fn() -> serde_json::Value + Send + Sync>;

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX)
}

impl core::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.me.id)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// This node, publishing to `store`.
    #[must_use]
    pub fn new(
        store: Arc<dyn Store>,
        me: NodeIdentity,
        api_url: String,
        nbd_addr: Option<String>,
    ) -> Self {
        Self {
            store,
            me,
            api_url,
            nbd_addr: Mutex::new(nbd_addr),
            started_ms: now_ms(),
            held: Mutex::new(BTreeMap::new()),
            extras: Mutex::new(Vec::new()),
        }
    }

    /// Whether other nodes share the store (and read this node's record).
    #[must_use]
    pub fn shared(&self) -> bool {
        self.store.is_shared()
    }

    /// The store the registry is in.
    #[must_use]
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// This node's identity.
    #[must_use]
    pub fn me(&self) -> &NodeIdentity {
        &self.me
    }

    /// The URL clients reach this node's API at.
    #[must_use]
    pub fn api_url(&self) -> String {
        self.api_url.clone()
    }

    /// The NBD address this node shows, when it serves NBD.
    #[must_use]
    pub fn nbd_addr(&self) -> Option<String> {
        self.nbd_addr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sets the NBD address this node shows (once its listener is bound).
    pub fn set_nbd_addr(&self, addr: String) {
        *self
            .nbd_addr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(addr);
    }

    /// Publishes `source()` as `extra[name]` at every heartbeat.
    pub fn publish(&self, name: &str, source: Extra) {
        self.extras
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((name.to_owned(), source));
    }

    /// Whether this node holds `lease` now (always, alone on the embedded
    /// store).
    #[must_use]
    pub fn holds(&self, lease: Lease) -> bool {
        if !self.store.is_shared() {
            return true;
        }
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&lease)
            .is_some_and(|until| Instant::now() < *until)
    }

    /// Takes or renews every lease it can; answers those held.
    pub fn renew_leases(&self) -> Vec<Lease> {
        let mut out = Vec::new();
        for lease in Lease::ALL {
            let began = Instant::now();
            let held = match self.store.lease(lease.name(), &self.me.id, LEASE_TTL) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(lease = lease.name(), error = %e, "renewing a lease failed");
                    false
                }
            };
            let mut map = self
                .held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if held {
                let was = map.insert(lease, began + (LEASE_TTL - HEARTBEAT));
                if was.is_none_or(|until| until <= began) {
                    tracing::info!(lease = lease.name(), "this node holds the lease now");
                }
                out.push(lease);
            } else if map.remove(&lease).is_some_and(|until| until > began) {
                tracing::warn!(lease = lease.name(), "this node lost the lease");
            }
        }
        out
    }

    /// Writes this node's record.
    pub fn heartbeat(
        &self,
        leases: &[Lease],
        disks: Vec<HostedDisk>,
        instances: Vec<HostedInstance>,
    ) -> Result<(), StoreError> {
        let extra = self
            .extras
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(name, f)| (name.clone(), f()))
            .collect();
        let record = NodeRecord {
            id: self.me.id.clone(),
            name: self.me.name.clone(),
            api_url: self.api_url.clone(),
            nbd_addr: self
                .nbd_addr
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            started_ms: self.started_ms,
            heartbeat_ms: now_ms(),
            leases: leases.iter().map(|l| l.name().to_owned()).collect(),
            disks,
            instances,
            extra,
        };
        let bytes = serde_json::to_vec(&record)
            .map_err(|e| StoreError::Backend(format!("encoding the node record: {e}")))?;
        let mut tx = self.store.write()?;
        tx.put(NODES, self.me.id.as_bytes(), &bytes)?;
        tx.commit()
    }

    /// Every node's last record (damaged ones skipped, with a warning).
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let tx = self.store.read()?;
        let mut out = Vec::new();
        for (key, value) in tx.scan(NODES, b"", None, usize::MAX)? {
            match serde_json::from_slice::<NodeRecord>(&value) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(
                    node = %String::from_utf8_lossy(&key),
                    error = %e,
                    "skipping a damaged node record"
                ),
            }
        }
        Ok(out)
    }

    /// Removes the record of node `id`, which must be down.
    pub fn remove(&self, id: &str) -> Result<(), RemoveError> {
        let mut tx = self.store.write()?;
        let bytes = tx.get(NODES, id.as_bytes())?.ok_or(RemoveError::NotFound)?;
        let record: NodeRecord = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Backend(format!("node record {id}: {e}")))?;
        if self.is_up(&record) {
            return Err(RemoveError::Up(record.name));
        }
        tx.delete(NODES, id.as_bytes())?;
        tx.commit()?;
        tracing::warn!(node = %id, name = %record.name, "removed a node that is down from the registry");
        Ok(())
    }

    /// Whether `record` is up (a recent heartbeat; this node always is).
    #[must_use]
    pub fn is_up(&self, record: &NodeRecord) -> bool {
        record.id == self.me.id
            || now_ms().saturating_sub(record.heartbeat_ms)
                < i64::try_from(DOWN_AFTER.as_millis()).unwrap_or(i64::MAX)
    }

    /// The leases `record`'s node still holds: those of its last heartbeat,
    /// while that is younger than the time a node counts a lease as held
    /// after renewing it (a dead holder's lease is not shown as its).
    #[must_use]
    pub fn leases_in_force(&self, record: &NodeRecord) -> Vec<String> {
        let age = now_ms().saturating_sub(record.heartbeat_ms);
        let held_for = i64::try_from((LEASE_TTL - HEARTBEAT).as_millis()).unwrap_or(i64::MAX);
        if record.id == self.me.id {
            Lease::ALL
                .iter()
                .filter(|l| self.holds(**l))
                .map(|l| l.name().to_owned())
                .collect()
        } else if age < held_for {
            record.leases.clone()
        } else {
            Vec::new()
        }
    }

    /// The other node that hosts disk `id`, if one says it does.
    #[must_use]
    pub fn disk_host(&self, id: &str) -> Option<NodeRecord> {
        self.nodes()
            .ok()?
            .into_iter()
            .find(|n| n.id != self.me.id && n.disks.iter().any(|d| d.id == id))
    }

    /// The other node that hosts the instance `name_or_id` of `account`.
    #[must_use]
    pub fn instance_host(&self, account: &str, name_or_id: &str) -> Option<NodeRecord> {
        self.nodes().ok()?.into_iter().find(|n| {
            n.id != self.me.id
                && n.instances
                    .iter()
                    .any(|i| i.account == account && (i.name == name_or_id || i.id == name_or_id))
        })
    }

    /// The message that sends a client to `host` for `what`.
    #[must_use]
    pub fn elsewhere(what: &str, host: &NodeRecord) -> String {
        match &host.nbd_addr {
            Some(nbd) => format!(
                "{what} is hosted by node {} ({}): use its API at {} or its NBD server at {nbd}",
                host.name, host.id, host.api_url
            ),
            None => format!(
                "{what} is hosted by node {} ({}): use its API at {}",
                host.name, host.id, host.api_url
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(store: &Arc<dyn Store>, name: &str) -> Cluster {
        Cluster::new(
            Arc::clone(store),
            NodeIdentity {
                id: uuid::Uuid::new_v4().to_string(),
                name: name.into(),
            },
            format!("http://{name}"),
            Some(format!("{name}:10809")),
        )
    }

    #[test]
    fn a_node_record_round_trips_and_names_its_disks_host() {
        let store: Arc<dyn Store> = Arc::new(atrest_store::MemoryStore::new());
        let (a, b) = (cluster(&store, "a"), cluster(&store, "b"));
        a.heartbeat(
            &[Lease::Lifecycle],
            vec![HostedDisk {
                id: "disk-1".into(),
                account: "111111111111".into(),
            }],
            vec![HostedInstance {
                id: "db-1".into(),
                name: "orders".into(),
                account: "111111111111".into(),
            }],
        )
        .unwrap();
        b.heartbeat(&[], vec![], vec![]).unwrap();
        let nodes = b.nodes().unwrap();
        assert_eq!(nodes.len(), 2);
        assert!(nodes.iter().all(|n| b.is_up(n)));
        let host = b.disk_host("disk-1").unwrap();
        assert_eq!(host.name, "a");
        assert!(
            a.disk_host("disk-1").is_none(),
            "a disk of this node is not elsewhere"
        );
        assert_eq!(b.instance_host("111111111111", "orders").unwrap().name, "a");
        assert!(b.instance_host("222222222222", "orders").is_none());
        let msg = Cluster::elsewhere("disk disk-1", &host);
        assert!(
            msg.contains("node a") && msg.contains("http://a") && msg.contains("a:10809"),
            "{msg}"
        );
    }

    #[test]
    fn only_a_node_that_is_down_can_be_removed() {
        let store: Arc<dyn Store> = Arc::new(atrest_store::MemoryStore::new());
        let (a, b) = (cluster(&store, "a"), cluster(&store, "b"));
        a.heartbeat(&[], vec![], vec![]).unwrap();
        b.heartbeat(&[], vec![], vec![]).unwrap();
        assert!(matches!(a.remove(&b.me().id), Err(RemoveError::Up(n)) if n == "b"));
        assert!(matches!(a.remove(&a.me().id), Err(RemoveError::Up(_))));
        assert!(matches!(a.remove("nobody"), Err(RemoveError::NotFound)));
        // b's last heartbeat, 11 s ago.
        let mut old = b
            .nodes()
            .unwrap()
            .into_iter()
            .find(|n| n.id == b.me().id)
            .unwrap();
        old.heartbeat_ms -= 11_000;
        let mut tx = store.write().unwrap();
        tx.put(NODES, old.id.as_bytes(), &serde_json::to_vec(&old).unwrap())
            .unwrap();
        tx.commit().unwrap();
        a.remove(&b.me().id).unwrap();
        assert_eq!(a.nodes().unwrap().len(), 1);
    }

    #[test]
    fn the_embedded_store_grants_every_lease() {
        let store: Arc<dyn Store> = Arc::new(atrest_store::MemoryStore::new());
        let a = cluster(&store, "a");
        assert!(
            Lease::ALL.iter().all(|l| a.holds(*l)),
            "alone, before any renewal"
        );
        assert_eq!(a.renew_leases(), Lease::ALL.to_vec());
        assert!(Lease::ALL.iter().all(|l| a.holds(*l)));
    }

    #[test]
    fn the_node_id_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = node_identity(dir.path(), Some("n1")).unwrap();
        let again = node_identity(dir.path(), None).unwrap();
        assert_eq!(first.id, again.id);
        assert_eq!(first.name, "n1");
        assert!(!again.name.is_empty());
        std::fs::write(dir.path().join("node.json"), b"{").unwrap();
        let err = node_identity(dir.path(), None).unwrap_err();
        assert!(err.to_string().contains("node.json is damaged"), "{err}");
    }
}
