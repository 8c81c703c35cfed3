//! The disk service's REST API: `/v1/disks`, `/v1/snapshots`, `/v1/jobs`,
//! and the operators' inventory of an account's disks. Actions `disk:*` on
//! `arn:aws:disk:REGION:ACCOUNT:disk/ID` (`snapshot/ID`, `job/ID`).
#![allow(
    unused_qualifications,
    reason = "utoipa's expansion of the declared parameters names their types in full"
)]

use std::collections::BTreeMap;

use atrest_diskservice::{DiskView, Job, NewDisk, SnapshotView};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::local::LocalView;
use crate::rest::{Replayable, Resource, arn, endpoint};
use crate::routes::{Deleted, keyed};
use crate::state::AppState;

/// The routes of this module.
pub(crate) fn routes() -> OpenApiRouter<std::sync::Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_disks, create_disk))
        .routes(routes!(describe_disk, delete_disk))
        .routes(routes!(resize_disk))
        .routes(routes!(rollback_disk))
        .routes(routes!(rekey_disk))
        .routes(routes!(regrant_disk))
        .routes(routes!(convert_disk))
        .routes(routes!(attach_local))
        .routes(routes!(detach_local))
        .routes(routes!(list_snapshots, create_snapshot))
        .routes(routes!(describe_snapshot, delete_snapshot))
        .routes(routes!(copy_snapshot))
        .routes(routes!(list_jobs))
        .routes(routes!(describe_job))
        .routes(routes!(account_disks))
}

/// A disk in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct DiskId {
    /// Disk id (`disk-` and 16 hex digits).
    id: String,
}

/// A snapshot in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct SnapshotId {
    /// Snapshot id (`snap-` and 16 hex digits).
    id: String,
}

/// A job in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct JobId {
    /// Job id (`job-` and 16 hex digits).
    id: String,
}

/// An account in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct AccountPath {
    /// Account id (12 digits).
    account: String,
}

/// `POST /v1/disks`: either `size` (and options), or only `snapshot_id` to
/// create the disk from a snapshot.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateDiskRequest {
    /// Size in bytes (required unless `snapshot_id` is given).
    size: Option<u64>,
    /// Logical block size: 512 or 4096.
    block_size: Option<u32>,
    /// Whether the data is encrypted (default true).
    encrypted: Option<bool>,
    /// The master key (id, ARN or alias; default the account's disk service key).
    key_id: Option<String>,
    /// Create the disk as a copy of this snapshot (nothing else may be
    /// given); a snapshot in the object store is restored (state
    /// `restoring` until its job is done).
    snapshot_id: Option<String>,
    /// With `snapshot_id`: the snapshot was stored by another server, whose
    /// key service answers behind this key provider (an `aws-kms`
    /// provider of this server); the disk is restored here under
    /// `key_id` (default the disk service key), re-encrypted.
    source_key_provider: Option<String>,
    /// Whether several clients may attach it read-write at once.
    shareable: Option<bool>,
    /// Tags (at most 50; keys of 1 to 128 characters, values of at most
    /// 256; no key starting with `aws:`), which identity policies see as
    /// `aws:ResourceTag/<key>` (and at this creation as
    /// `aws:RequestTag/<key>` and `aws:TagKeys`).
    tags: Option<BTreeMap<String, String>>,
}

/// `POST /v1/disks/{id}/resize`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResizeDiskRequest {
    /// The new size in bytes (disks only grow).
    size: u64,
}

/// `POST /v1/disks/{id}/rollback`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollbackDiskRequest {
    /// The snapshot (of this disk) to roll back to.
    snapshot_id: String,
}

/// `POST /v1/disks/{id}/rekey`: exactly one of `key_id` and
/// `reencrypt: true`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RekeyDiskRequest {
    /// Move the disk to this master key (re-wraps its data key).
    key_id: Option<String>,
    /// Re-encrypt the disk under a fresh data key (a job).
    reencrypt: Option<bool>,
}

/// `POST /v1/disks/{id}/convert`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConvertDiskRequest {
    /// Whether the new disk is encrypted.
    encrypted: bool,
    /// Its master key (when encrypted; default the disk service key).
    key_id: Option<String>,
}

/// `POST /v1/snapshots`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateSnapshotRequest {
    /// The disk to snapshot.
    disk_id: String,
    /// Store the snapshot in the server's object store: it is uploaded in
    /// the background (state `uploading`, followed through its `job`) and
    /// usable once `available`. Default false: a local snapshot.
    to_object_store: Option<bool>,
}

/// `POST /v1/snapshots/{id}/copy`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CopySnapshotRequest {
    /// The destination region (served by this server).
    region: String,
    /// The copy's master key there (default: the account's disk service
    /// key of that region).
    key_id: Option<String>,
}

/// Disks.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct DiskList {
    /// The disks.
    disks: Vec<DiskView>,
}

/// The caller's snapshots.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct SnapshotList {
    /// The snapshots.
    snapshots: Vec<SnapshotView>,
}

/// A job.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct JobAnswer {
    /// The job.
    job: Job,
}

/// The caller's jobs.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct JobList {
    /// The jobs.
    jobs: Vec<Job>,
}

/// What a re-key answers: the disk (moved to a new master key, 200) or the
/// re-encryption job (202).
#[derive(Serialize, ToSchema, Clone)]
#[serde(untagged)]
pub(crate) enum RekeyAnswer {
    /// Moved to the new master key.
    Disk(DiskView),
    /// Re-encryption started.
    Job(JobAnswer),
}

impl Replayable for DiskView {}
impl Replayable for DiskList {}
impl Replayable for SnapshotView {}
impl Replayable for SnapshotList {}
impl Replayable for JobAnswer {}
impl Replayable for JobList {}
impl Replayable for RekeyAnswer {}
impl Replayable for LocalView {}

/// The disk `id` names, with its tags as condition keys.
fn disk_arn(st: &AppState, c: &atrest_kms::Caller, id: &str) -> Resource {
    Resource::arn(arn(c, "disk", "disk", id))
        .resource_tags(&st.disks.disk_tags(c, id).unwrap_or_default())
}

endpoint! {
    /// Create a disk: encrypted under the named key (by default the
    /// account's disk service key), or from a snapshot.
    create_disk: post "/v1/disks" => "disk:CreateDisk",
    tag: "disks", status: CREATED, paged: false, idempotent: true,
    body: CreateDiskRequest,
    answer: DiskView,
    resource: |_, c, _, _, b| Ok(match &b.snapshot_id {
        Some(s) => Resource::arn(arn(c, "disk", "snapshot", s)),
        None => Resource::arn(arn(c, "disk", "disk", "*")),
    }
    .request_tags(b.tags.as_ref().unwrap_or(&BTreeMap::new()))),
    run: |st, call, _, _, b| {
        if let (Some(snap), Some(provider)) = (&b.snapshot_id, &b.source_key_provider) {
            if b.size.is_some() || b.block_size.is_some() || b.encrypted == Some(false) || b.shareable.is_some() {
                return Err(ApiError::Invalid(
                    "a disk restored from another server's snapshot takes its size and block size from it and is encrypted; give 'snapshot_id', 'source_key_provider', and optionally 'key_id' and 'tags'".into(),
                ));
            }
            let d = st.disks.restore_from_store(call.caller, snap, &atrest_diskservice::ForeignRestore {
                provider: provider.clone(),
                key_id: b.key_id.clone(),
                tags: b.tags.clone().unwrap_or_default(),
            })?;
            return Ok(keyed(call, d.key_arn.as_ref(), d.clone()));
        }
        if b.source_key_provider.is_some() {
            return Err(ApiError::Invalid("'source_key_provider' goes with 'snapshot_id'".into()));
        }
        if let Some(snap) = &b.snapshot_id {
            if b.size.is_some() || b.block_size.is_some() || b.encrypted.is_some()
                || b.key_id.is_some() || b.shareable.is_some()
            {
                return Err(ApiError::Invalid(
                    "a disk created from a snapshot takes its size, block size and key from it; give only 'snapshot_id' and 'tags' (and 'shareable' is not taken either)".into(),
                ));
            }
            let d = st.disks.clone_snapshot_tagged(call.caller, snap, &b.tags.unwrap_or_default())?;
            return Ok(keyed(call, d.key_arn.as_ref(), d.clone()));
        }
        let size = b.size.ok_or_else(|| ApiError::Invalid("'size' (bytes) is required".into()))?;
        let d = st.disks.create_disk(call.caller, &NewDisk {
            size,
            block_size: b.block_size,
            encrypted: b.encrypted,
            key_id: b.key_id,
            shareable: b.shareable,
            tags: b.tags.unwrap_or_default(),
        })?;
        Ok(keyed(call, d.key_arn.as_ref(), d.clone()))
    },
}

endpoint! {
    /// The caller's disks (a database instance's disk is the database
    /// service's and not among them).
    list_disks: get "/v1/disks" => "disk:ListDisks",
    tag: "disks", status: OK, paged: true, idempotent: false,
    answer: DiskList,
    resource: |_, _, _, _, _| Ok(Resource::any()),
    run: |st, call, _, _, _| Ok(DiskList { disks: st.disks.list_disks(call.caller)? }),
}

endpoint! {
    /// Every disk of an account in the region, the disks atrest's services
    /// manage for it included, with what they are for (admins only).
    account_disks: get "/v1/accounts/{account}/disks" => "admin:ListAccountDisks",
    tag: "admin", status: OK, paged: true, idempotent: false,
    path: AccountPath,
    answer: DiskList,
    resource: |_, _, _, _, _| Ok(Resource::any()),
    run: |st, call, p, _, _| {
        atrest_kms::KeyService::require_admin_caller(call.caller)?;
        let id = atrest_kms::names::AccountId::parse(&p.account).ok_or_else(|| {
            ApiError::Invalid(format!("'{}' is not an account id (12 digits)", p.account))
        })?;
        let owner = atrest_kms::Caller::root(id, &call.caller.region);
        Ok(DiskList { disks: st.disks.inventory(&owner)? })
    },
}

endpoint! {
    /// A disk.
    describe_disk: get "/v1/disks/{id}" => "disk:DescribeDisk",
    tag: "disks", status: OK, paged: false, idempotent: false,
    path: DiskId,
    answer: DiskView,
    resource: |st, c, p, _, _| Ok(disk_arn(st, c, &p.id)),
    run: |st, call, p, _, _| {
        let d = st.disks.describe_disk(call.caller, &p.id)?;
        Ok(keyed(call, d.key_arn.as_ref(), d.clone()))
    },
}

endpoint! {
    /// Delete a disk (its space is reclaimed once no snapshot refers to it).
    delete_disk: delete "/v1/disks/{id}" => "disk:DeleteDisk",
    tag: "disks", status: OK, paged: false, idempotent: false,
    path: DiskId,
    answer: Deleted,
    resource: |st, c, p, _, _| Ok(disk_arn(st, c, &p.id)),
    run: |st, call, p, _, _| {
        st.disks.delete_disk(call.caller, &p.id)?;
        Ok(Deleted { deleted: p.id })
    },
}

endpoint! {
    /// Grow a disk.
    resize_disk: post "/v1/disks/{id}/resize" => "disk:ResizeDisk",
    tag: "disks", status: OK, paged: false, idempotent: true,
    path: DiskId,
    body: ResizeDiskRequest,
    answer: DiskView,
    resource: |st, c, p, _, _| Ok(disk_arn(st, c, &p.id)),
    run: |st, call, p, _, b| {
        let d = st.disks.resize(call.caller, &p.id, b.size)?;
        Ok(keyed(call, d.key_arn.as_ref(), d.clone()))
    },
}

endpoint! {
    /// Roll a disk back to one of its snapshots.
    rollback_disk: post "/v1/disks/{id}/rollback" => "disk:RollbackDisk",
    tag: "disks", status: OK, paged: false, idempotent: true,
    path: DiskId,
    body: RollbackDiskRequest,
    answer: DiskView,
    resource: |st, c, p, _, _| Ok(disk_arn(st, c, &p.id)),
    run: |st, call, p, _, b| {
        let d = st.disks.rollback(call.caller, &p.id, &b.snapshot_id)?;
        Ok(keyed(call, d.key_arn.as_ref(), d.clone()))
    },
}

endpoint! {
    /// `{"key_id": K}` moves the disk to master key K (re-wrap, O(1), 200);
    /// `{"reencrypt": true}` re-encrypts it under a fresh data key (a job,
    /// 202).
    rekey_disk: post "/v1/disks/{id}/rekey" => "disk:RekeyDisk",
    tag: "disks", status: OK, paged: false, idempotent: true,
    path: DiskId,
    body: RekeyDiskRequest,
    answer: RekeyAnswer,
    resource: |st, c, p, _, _| Ok(disk_arn(st, c, &p.id)),
    run: |st, call, p, _, b| match (b.key_id, b.reencrypt.unwrap_or(false)) {
        (Some(k), false) => {
            let d = st.disks.change_key(call.caller, &p.id, &k)?;
            Ok(keyed(call, d.key_arn.as_ref(), RekeyAnswer::Disk(d.clone())))
        }
        (None, true) => Ok(RekeyAnswer::Job(JobAnswer { job: st.disks.reencrypt(call.caller, &p.id)? })),
        _ => Err(ApiError::Invalid(
            "give either 'key_id' (a new master key) or 'reencrypt': true (a new data key)".into(),
        )),
    },
    status_of: |a| match a {
        RekeyAnswer::Disk(_) => http::StatusCode::OK,
        RekeyAnswer::Job(_) => http::StatusCode::ACCEPTED,
    },
    other_statuses: [ACCEPTED],
}

endpoint! {
    /// Let the disk service use the disk's key again after its grant was
    /// revoked.
    regrant_disk: post "/v1/disks/{id}/regrant" => "disk:RegrantDisk",
    tag: "disks", status: OK, paged: false, idempotent: true,
    path: DiskId,
    answer: DiskView,
    resource: |st, c, p, _, _| Ok(disk_arn(st, c, &p.id)),
    run: |st, call, p, _, _| {
        let d = st.disks.regrant(call.caller, &p.id)?;
        Ok(keyed(call, d.key_arn.as_ref(), d.clone()))
    },
}

endpoint! {
    /// Copy a disk into a new disk, encrypted or not (a job).
    convert_disk: post "/v1/disks/{id}/convert" => "disk:ConvertDisk",
    tag: "disks", status: ACCEPTED, paged: false, idempotent: true,
    path: DiskId,
    body: ConvertDiskRequest,
    answer: JobAnswer,
    resource: |st, c, p, _, _| Ok(disk_arn(st, c, &p.id)),
    run: |st, call, p, _, b| Ok(JobAnswer {
        job: st.disks.convert(call.caller, &p.id, b.encrypted, b.key_id.as_deref())?,
    }),
}

endpoint! {
    /// Attach a disk as a block device of the server's host (answers the
    /// device).
    attach_local: post "/v1/disks/{id}/attach-local" => "disk:AttachDisk",
    tag: "disks", status: OK, paged: false, idempotent: true,
    path: DiskId,
    body: crate::rest::NoBody,
    answer: LocalView,
    resource: |st, c, p, _, _| Ok(disk_arn(st, c, &p.id)),
    run: |st, call, p, _, _| Ok(st.local.attach(call.caller, &p.id)?),
}

endpoint! {
    /// Flush a locally attached disk and remove its block device (409
    /// while it is mounted).
    detach_local: post "/v1/disks/{id}/detach-local" => "disk:DetachDisk",
    tag: "disks", status: OK, paged: false, idempotent: true,
    path: DiskId,
    body: crate::rest::NoBody,
    answer: LocalView,
    resource: |st, c, p, _, _| Ok(disk_arn(st, c, &p.id)),
    run: |st, call, p, _, _| Ok(st.local.detach(call.caller, &p.id)?),
}

endpoint! {
    /// Snapshot a disk (instant, whatever its size).
    create_snapshot: post "/v1/snapshots" => "disk:CreateSnapshot",
    tag: "disks", status: CREATED, paged: false, idempotent: true,
    body: CreateSnapshotRequest,
    answer: SnapshotView,
    resource: |st, c, _, _, b| Ok(disk_arn(st, c, &b.disk_id)),
    run: |st, call, _, _, b| {
        let s = if b.to_object_store == Some(true) {
            st.disks.create_stored_snapshot(call.caller, &b.disk_id)?
        } else {
            st.disks.create_snapshot(call.caller, &b.disk_id)?
        };
        Ok(keyed(call, s.key_arn.as_ref(), s.clone()))
    },
}

endpoint! {
    /// The caller's snapshots.
    list_snapshots: get "/v1/snapshots" => "disk:ListSnapshots",
    tag: "disks", status: OK, paged: true, idempotent: false,
    answer: SnapshotList,
    resource: |_, _, _, _, _| Ok(Resource::any()),
    run: |st, call, _, _, _| Ok(SnapshotList { snapshots: st.disks.list_snapshots(call.caller)? }),
}

endpoint! {
    /// A snapshot.
    describe_snapshot: get "/v1/snapshots/{id}" => "disk:DescribeSnapshot",
    tag: "disks", status: OK, paged: false, idempotent: false,
    path: SnapshotId,
    answer: SnapshotView,
    resource: |_, c, p, _, _| Ok(Resource::arn(arn(c, "disk", "snapshot", &p.id))),
    run: |st, call, p, _, _| {
        let s = st.disks.describe_snapshot(call.caller, &p.id)?;
        Ok(keyed(call, s.key_arn.as_ref(), s.clone()))
    },
}

endpoint! {
    /// Delete a snapshot.
    delete_snapshot: delete "/v1/snapshots/{id}" => "disk:DeleteSnapshot",
    tag: "disks", status: OK, paged: false, idempotent: false,
    path: SnapshotId,
    answer: Deleted,
    resource: |_, c, p, _, _| Ok(Resource::arn(arn(c, "disk", "snapshot", &p.id))),
    run: |st, call, p, _, _| {
        st.disks.delete_snapshot(call.caller, &p.id)?;
        Ok(Deleted { deleted: p.id })
    },
}

endpoint! {
    /// Copy a snapshot stored in the object store into another region,
    /// re-encrypted under a fresh data key of a key of that region (a job;
    /// the copy is `available` when it is done).
    copy_snapshot: post "/v1/snapshots/{id}/copy" => "disk:CopySnapshot",
    tag: "disks", status: CREATED, paged: false, idempotent: true,
    path: SnapshotId,
    body: CopySnapshotRequest,
    answer: SnapshotView,
    resource: |_, c, p, _, _| Ok(Resource::arn(arn(c, "disk", "snapshot", &p.id))),
    run: |st, call, p, _, b| {
        let s = st.disks.copy_stored_snapshot(call.caller, &p.id, &b.region, b.key_id.as_deref())?;
        Ok(keyed(call, s.key_arn.as_ref(), s.clone()))
    },
}

endpoint! {
    /// The caller's jobs (re-encryptions, conversions) and their progress.
    list_jobs: get "/v1/jobs" => "disk:ListJobs",
    tag: "disks", status: OK, paged: true, idempotent: false,
    answer: JobList,
    resource: |_, _, _, _, _| Ok(Resource::any()),
    run: |st, call, _, _, _| Ok(JobList { jobs: st.disks.list_jobs(call.caller) }),
}

endpoint! {
    /// A job and its progress.
    describe_job: get "/v1/jobs/{id}" => "disk:DescribeJob",
    tag: "disks", status: OK, paged: false, idempotent: false,
    path: JobId,
    answer: JobAnswer,
    resource: |_, c, p, _, _| Ok(Resource::arn(arn(c, "disk", "job", &p.id))),
    run: |st, call, p, _, _| Ok(JobAnswer { job: st.disks.job(call.caller, &p.id)? }),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_refuse_unknown_members() {
        let e = crate::rest::body::json::<CreateDiskRequest>(br#"{"sise": 1}"#)
            .err()
            .unwrap();
        assert_eq!(e.parts().1, "ValidationException");
    }
}
