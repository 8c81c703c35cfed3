//! Disks that a service of atrest manages for a customer, as RDS owns the
//! EBS volumes of its instances. An instance's disk holds a file system
//! that atrest mounts as root: a customer who could attach it could plant
//! hostile ext4 metadata or links for atrest to follow, and one who could
//! snapshot, resize or delete it would act behind the service. So such a
//! disk carries its manager in its labels, the customer's API neither
//! lists it nor acts on it ([`ServiceError::Managed`]), and only the
//! manager's handle ([`ManagedDisks`]) does.
//!
//! The labels: `managed_by` (the service, e.g. `db`) and `managed_for`
//! (what the manager says the disk is for, e.g. an instance's name and
//! id). Snapshots and conversion targets inherit them. A disk without
//! them (a previous release's instance disk) is usable by both paths until
//! the manager [adopts](ManagedDisks::adopt) it.

use std::sync::Arc;

use atrest_disk::{DiskError, Labels};
use atrest_kms::Caller;

use crate::{
    Attachment, DiskService, DiskView, Job, NewDisk, Result, ServiceError, SnapshotView,
    busy_check, label,
};

/// The service that manages a resource.
pub(crate) const L_MANAGED_BY: &str = "managed_by";
/// What its manager says it is for (shown in refusals).
pub(crate) const L_MANAGED_FOR: &str = "managed_for";
/// The longest `managed_for` accepted: it is a label and goes into every
/// refusal's message.
const MAX_MANAGED_FOR: usize = 256;

/// Who asks for an operation: the customer through the disk API, or a
/// service of atrest acting for the customer on the disks it manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Actor {
    /// The customer (REST, NBD, local attach).
    Customer,
    /// The named service, through [`ManagedDisks`].
    Manager(&'static str),
}

impl Actor {
    /// Refuses with [`ServiceError::Managed`] when a resource with
    /// `labels` is managed by another than this actor. Unlabelled
    /// resources are everyone's (of the owning account).
    pub(crate) fn check(self, kind: &str, id: &str, labels: &Labels) -> Result<()> {
        if self.sees(labels) {
            return Ok(());
        }
        let by = label(labels, L_MANAGED_BY);
        Err(ServiceError::Managed {
            resource: format!("{kind} {id}"),
            service: by,
            managed_for: label(labels, L_MANAGED_FOR),
        })
    }

    /// Whether this actor may use a resource with `labels` (and a list
    /// made for it shows it).
    pub(crate) fn sees(self, labels: &Labels) -> bool {
        match (labels.get(L_MANAGED_BY), self) {
            (None, _) => true,
            (Some(by), Self::Manager(me)) => by == me,
            (Some(_), Self::Customer) => false,
        }
    }
}

/// The manager's labels of `labels` (none for an unmanaged resource): what
/// a snapshot, a conversion target or a job inherits.
pub(crate) fn manager_labels(labels: &Labels) -> Labels {
    labels
        .iter()
        .filter(|(k, _)| *k == L_MANAGED_BY || *k == L_MANAGED_FOR)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The labels that make `service` the manager of a new or adopted disk.
fn labels_for(service: &'static str, managed_for: &str) -> Result<Labels> {
    if managed_for.is_empty()
        || managed_for.len() > MAX_MANAGED_FOR
        || managed_for.chars().any(char::is_control)
    {
        return Err(DiskError::Invalid(format!(
            "what a managed disk is for must be 1 to {MAX_MANAGED_FOR} bytes without control characters"
        ))
        .into());
    }
    Ok(Labels::from([
        (L_MANAGED_BY.to_owned(), service.to_owned()),
        (L_MANAGED_FOR.to_owned(), managed_for.to_owned()),
    ]))
}

/// A service's handle on the disks it manages for customers: the
/// customer's operations, allowed on disks and snapshots this service
/// manages (and on unlabelled ones, a previous release's, until adopted).
/// Each takes the owning customer's [`Caller`], as the customer's methods
/// do: keys are used and grants made as that customer, and another
/// account's disk is not found.
#[derive(Clone)]
pub struct ManagedDisks {
    svc: Arc<DiskService>,
    service: &'static str,
}

impl std::fmt::Debug for ManagedDisks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedDisks")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl DiskService {
    /// The handle through which the service named `service` (e.g. `db`)
    /// creates and uses the disks it manages.
    #[must_use]
    pub fn managed(self: &Arc<Self>, service: &'static str) -> ManagedDisks {
        ManagedDisks {
            svc: Arc::clone(self),
            service,
        }
    }
}

impl ManagedDisks {
    fn actor(&self) -> Actor {
        Actor::Manager(self.service)
    }

    /// The managing service's name.
    #[must_use]
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// Creates a disk for `caller`, managed by this service for
    /// `managed_for` (shown to the customer when refused).
    pub fn create_disk(
        &self,
        caller: &Caller,
        managed_for: &str,
        req: &NewDisk,
    ) -> Result<DiskView> {
        let extra = labels_for(self.service, managed_for)?;
        self.svc.create_disk_labelled(caller, req, extra)
    }

    /// Takes over one of the caller's disks that no service manages (a
    /// previous release's), or renames what one of this service's disks
    /// is for. Refused while a customer has it attached (naming the
    /// client) and while a job works on it.
    pub fn adopt(&self, caller: &Caller, disk: &str, managed_for: &str) -> Result<DiskView> {
        let mine = labels_for(self.service, managed_for)?;
        let svc = &self.svc;
        let _g = svc.lock_ops();
        let d = svc.own_disk(self.actor(), caller, disk)?;
        busy_check(&d)?;
        if svc.is_converting_source(disk) {
            return Err(DiskError::Conflict(format!(
                "disk {disk} is being copied by a conversion; adopt it when the job is done"
            ))
            .into());
        }
        let mut labels = d.labels.clone();
        labels.extend(mine);
        let adopted = svc.engine.set_labels(disk, labels)?;
        // Labelled first, then the customer's holds looked at: a customer
        // attach claims first, then looks at the labels (`claim`), so one
        // of the two sees the other.
        if let Some(holder) = svc.customer_holder(disk) {
            svc.engine.set_labels(disk, d.labels)?;
            return Err(DiskError::Conflict(format!(
                "disk {disk} is attached by {holder}; detach it there before the {} service takes it over",
                self.service
            ))
            .into());
        }
        tracing::info!(disk, service = self.service, managed_for, "disk adopted");
        Ok(svc.disk_view(&adopted))
    }

    /// One of the caller's disks this service manages.
    pub fn describe_disk(&self, caller: &Caller, disk: &str) -> Result<DiskView> {
        self.svc.describe_disk_by(self.actor(), caller, disk)
    }

    /// As [`DiskService::check_disk_key`].
    pub fn check_disk_key(&self, caller: &Caller, disk: &str) -> Result<()> {
        self.svc.check_disk_key_by(self.actor(), caller, disk)
    }

    /// As [`DiskService::attach_as`]; `holder` names the client.
    pub fn attach_as(&self, caller: &Caller, disk: &str, holder: &str) -> Result<Attachment> {
        self.svc.attach_as_by(self.actor(), caller, disk, holder)
    }

    /// As [`DiskService::create_snapshot`]; the snapshot inherits the
    /// disk's manager.
    pub fn create_snapshot(&self, caller: &Caller, disk: &str) -> Result<SnapshotView> {
        self.svc.create_snapshot_by(self.actor(), caller, disk)
    }

    /// As [`DiskService::clone_snapshot`]; the new disk is managed by this
    /// service for `managed_for`.
    pub fn clone_snapshot(
        &self,
        caller: &Caller,
        snapshot: &str,
        managed_for: &str,
    ) -> Result<DiskView> {
        let extra = labels_for(self.service, managed_for)?;
        self.svc
            .clone_snapshot_by(self.actor(), caller, snapshot, extra)
    }

    /// As [`DiskService::delete_snapshot`].
    pub fn delete_snapshot(&self, caller: &Caller, snapshot: &str) -> Result<()> {
        self.svc.delete_snapshot_by(self.actor(), caller, snapshot)
    }

    /// As [`DiskService::delete_disk`].
    pub fn delete_disk(&self, caller: &Caller, disk: &str) -> Result<()> {
        self.svc.delete_disk_by(self.actor(), caller, disk)
    }

    /// As [`DiskService::resize`].
    pub fn resize(&self, caller: &Caller, disk: &str, size: u64) -> Result<DiskView> {
        self.svc.resize_by(self.actor(), caller, disk, size)
    }

    /// As [`DiskService::change_key`].
    pub fn change_key(&self, caller: &Caller, disk: &str, key_id: &str) -> Result<DiskView> {
        self.svc.change_key_by(self.actor(), caller, disk, key_id)
    }

    /// As [`DiskService::regrant`]: without it, a managed disk whose grant
    /// was revoked could never be unlocked, as its customer may not.
    pub fn regrant(&self, caller: &Caller, disk: &str) -> Result<DiskView> {
        self.svc.regrant_by(self.actor(), caller, disk)
    }

    /// As [`DiskService::convert`]; the new disk inherits the source's
    /// manager, and the job is this service's.
    pub fn convert(
        &self,
        caller: &Caller,
        disk: &str,
        encrypted: bool,
        key_id: Option<&str>,
    ) -> Result<Job> {
        self.svc
            .convert_by(self.actor(), caller, disk, encrypted, key_id)
    }

    /// One of this service's jobs for the caller.
    pub fn job(&self, caller: &Caller, id: &str) -> Result<Job> {
        self.svc.job_by(self.actor(), caller, id)
    }
}
