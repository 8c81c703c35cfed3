//! The nodes sharing this server's metadata store: `GET /v1/nodes`,
//! `DELETE /v1/nodes/{id}`. Actions `admin:ListNodes`, `admin:RemoveNode`
//! on `*` (admins: an operator's view).
#![allow(
    unused_qualifications,
    reason = "utoipa's expansion of the declared parameters names their types in full"
)]

use atrest_kms::KeyService;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::cluster::{Cluster, HostedDisk, HostedInstance};
use crate::error::ApiError;
use crate::rest::{Replayable, Resource, endpoint};
use crate::routes::Deleted;
use crate::state::AppState;

/// A node in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct NodePath {
    /// The node's id.
    id: String,
}

/// The routes of this module.
pub(crate) fn routes() -> OpenApiRouter<std::sync::Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_nodes))
        .routes(routes!(remove_node))
}

/// One node.
#[derive(Clone, Serialize, ToSchema)]
pub(crate) struct NodeView {
    /// Its id (a UUID made at its first start).
    id: String,
    /// Its name.
    name: String,
    /// Whether it is the node that answered.
    this_node: bool,
    /// `up` (a heartbeat within the last 10 s) or `down`.
    health: &'static str,
    /// The URL of its API.
    api_url: String,
    /// Its NBD address, if it serves NBD.
    #[serde(skip_serializing_if = "Option::is_none")]
    nbd_addr: Option<String>,
    /// When it started (RFC 3339).
    started: String,
    /// Its last heartbeat (RFC 3339).
    last_heartbeat: String,
    /// The periodic tasks' leases it holds (as of its last heartbeat; none
    /// once that is older than a lease is held for).
    leases: Vec<String>,
    /// The disks in its pool.
    disks: Vec<HostedDisk>,
    /// The database instances it runs.
    instances: Vec<HostedInstance>,
}

/// Every node.
#[derive(Clone, Serialize, ToSchema)]
pub(crate) struct NodeList {
    /// Ordered by name.
    nodes: Vec<NodeView>,
}

impl Replayable for NodeList {}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

endpoint! {
    /// Every node sharing this server's metadata store, its addresses, its
    /// health and what it hosts (admins).
    list_nodes: get "/v1/nodes" => "admin:ListNodes",
    tag: "admin", status: OK, paged: false, idempotent: false,
    answer: NodeList,
    resource: |_, _, _, _, _| Ok(Resource::any()),
    run: |st, call, _, _, _| {
        KeyService::require_admin_caller(call.caller)?;
        let cluster: &Cluster = &st.cluster;
        let mut nodes: Vec<NodeView> = cluster
            .nodes()
            .map_err(|e| ApiError::Kms(e.into()))?
            .into_iter()
            .map(|mut n| {
                if n.id == cluster.me().id {
                    // This node as it is now (on the embedded store its
                    // record is written at start only).
                    n.disks = crate::cluster::hosted_disks(&st.disks);
                    n.instances = crate::cluster::hosted_instances(&st.db);
                    n.heartbeat_ms = i64::try_from(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_millis(),
                    )
                    .unwrap_or(n.heartbeat_ms);
                }
                n
            })
            .map(|n| NodeView {
                leases: cluster.leases_in_force(&n),
                this_node: n.id == cluster.me().id,
                health: if cluster.is_up(&n) { "up" } else { "down" },
                started: rfc3339(n.started_ms),
                last_heartbeat: rfc3339(n.heartbeat_ms),
                id: n.id,
                name: n.name,
                api_url: n.api_url,
                nbd_addr: n.nbd_addr,
                disks: n.disks,
                instances: n.instances,
            })
            .collect();
        nodes.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        Ok(NodeList { nodes })
    },
}

endpoint! {
    /// Remove a node that is down and will not come back from the registry
    /// (admins): its audit chain is no longer checked by `verify` (keep a
    /// copy of its data dir's `audit/` if the machine can be read). A node
    /// that is up, or this node, is refused; a node that starts again
    /// registers itself again.
    remove_node: delete "/v1/nodes/{id}" => "admin:RemoveNode",
    tag: "admin", status: OK, paged: false, idempotent: false,
    path: NodePath,
    answer: Deleted,
    resource: |_, _, _, _, _| Ok(Resource::any()),
    run: |st, call, p, _, _| {
        KeyService::require_admin_caller(call.caller)?;
        st.cluster.remove(&p.id).map_err(|e| match e {
            crate::cluster::RemoveError::Store(e) => ApiError::Kms(e.into()),
            crate::cluster::RemoveError::NotFound => ApiError::Kms(atrest_kms::KmsError::NotFound(
                format!("Node {} is not registered", p.id),
            )),
            crate::cluster::RemoveError::Up(name) => ApiError::Conflict(format!(
                "Node {name} ({}) is up: stop it first (a node is down 10 s after its last heartbeat)",
                p.id
            )),
        })?;
        Ok(Deleted { deleted: p.id })
    },
}
