//! What every handler shares: the services and the front's own state.

use std::sync::Arc;

use atrest_kms::KeyService;

use crate::rest::idempotency::Idempotency;
use crate::trail::SharedTrail;

/// The server's state, shared by every request.
pub(crate) struct AppState {
    pub kms: Arc<KeyService>,
    pub trail: SharedTrail,
    pub body: crate::request::BodyLimits,
    /// Access keys' secrets never change, so their derived signing keys can
    /// be cached per scope. The cache never decides whether a key may sign:
    /// `authenticate` asks the key service for the key's current state on
    /// every request first (an in-memory lookup that every deactivation or
    /// deletion invalidates), and a deactivated or deleted key's derived
    /// keys are dropped from it as well.
    pub signing_keys: atrest_sigv4::SigningKeyCache,
    /// Where the audit log lives (for queries and verification).
    pub audit_dir: std::path::PathBuf,
    /// The disk service.
    pub disks: Arc<atrest_diskservice::DiskService>,
    /// Disks attached as block devices of this host.
    pub local: Arc<crate::local::LocalDisks>,
    /// The database service.
    pub db: Arc<atrest_dbservice::DbService>,
    /// The control plane (projects).
    pub projects: Arc<atrest_control::Projects>,
    /// Answers of recent `POST`s with an `Idempotency-Key`.
    pub idempotency: Idempotency,
    /// This node and the others sharing its store.
    pub cluster: Arc<crate::cluster::Cluster>,
    /// Calls to the other nodes, and the check of theirs.
    pub peers: Arc<crate::internal::Peers>,
}

impl AppState {
    /// The store the node registry is in (tests write other nodes' records).
    #[cfg(test)]
    pub(crate) fn cluster_store(&self) -> Arc<dyn atrest_store::Store> {
        self.cluster.store()
    }
}

impl crate::rest::Host for AppState {
    fn kms(&self) -> &KeyService {
        &self.kms
    }

    fn trail(&self) -> &SharedTrail {
        &self.trail
    }

    fn body_limits(&self) -> crate::request::BodyLimits {
        self.body
    }

    fn signing_keys(&self) -> &atrest_sigv4::SigningKeyCache {
        &self.signing_keys
    }

    fn idempotency(&self) -> &Idempotency {
        &self.idempotency
    }

    fn elsewhere(
        &self,
        caller: &atrest_kms::Caller,
        path: &str,
        err: &crate::error::ApiError,
    ) -> Option<crate::error::ApiError> {
        if err.parts().0 != http::StatusCode::NOT_FOUND {
            return None;
        }
        let mut segments = path.trim_start_matches('/').split('/');
        let (Some("v1"), Some(kind), Some(id)) =
            (segments.next(), segments.next(), segments.next())
        else {
            return None;
        };
        let account = caller.account.as_str();
        let (what, host) = match kind {
            "disks" => {
                let host = self.cluster.disk_host(id)?;
                host.disks
                    .iter()
                    .any(|d| d.id == id && d.account == account)
                    .then_some((format!("disk {id}"), host))?
            }
            "instances" => (
                format!("instance {id}"),
                self.cluster.instance_host(account, id)?,
            ),
            _ => return None,
        };
        Some(crate::error::ApiError::WrongNode(
            crate::cluster::Cluster::elsewhere(&what, &host),
        ))
    }
}
