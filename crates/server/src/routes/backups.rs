//! Database backups' REST API: `POST /v1/instances/{name}/backups`,
//! `/v1/backups` (describe, delete, restore, copy to another region). Actions `db:*` on `arn:aws:db:REGION:ACCOUNT:backup/ID`;
//! taking a backup is an action on its instance (`instance/NAME`, see
//! [`super::db`]).
#![allow(
    unused_qualifications,
    reason = "utoipa's expansion of the declared parameters names their types in full"
)]

use atrest_dbservice::{BackupView, InstanceView};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::rest::{NoBody, Replayable, Resource, arn, endpoint};
use crate::routes::Deleted;
use crate::routes::db::{InstanceName, InstanceReplay, audit_key, instance_arn, view};
use crate::state::AppState;

/// The routes of this module.
pub(crate) fn routes() -> OpenApiRouter<std::sync::Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(create_backup))
        .routes(routes!(list_backups))
        .routes(routes!(describe_backup, delete_backup))
        .routes(routes!(restore_backup))
        .routes(routes!(copy_backup))
}

/// A backup in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct BackupId {
    /// Backup id (`bk-` and 16 hex digits).
    id: String,
}

/// `GET /v1/backups`: the filter.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackupFilter {
    /// Only this instance's backups (its name or id).
    instance: Option<String>,
}

/// `POST /v1/backups/{id}/restore`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RestoreBackupRequest {
    /// The new instance's name.
    name: String,
    /// Restore to this time (RFC 3339; default the latest archived).
    to_time: Option<String>,
    /// A backup another server made in the same store: the key provider
    /// (type `aws-kms`) behind which that server's key service answers,
    /// which decrypts its data keys.
    source_key_provider: Option<String>,
    /// With `source_key_provider`: the new instance's key here (default:
    /// the account's service key).
    key_id: Option<String>,
}

/// `POST /v1/backups/{id}/copy`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CopyBackupRequest {
    /// The destination region.
    region: String,
    /// The copy's key there (default: the account's service key there).
    key_id: Option<String>,
}

/// The caller's backups.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct BackupList {
    /// The backups.
    backups: Vec<BackupView>,
}

impl Replayable for BackupView {}
impl Replayable for BackupList {}

fn backup_arn(c: &atrest_kms::Caller, id: &str) -> Resource {
    Resource::arn(arn(c, "db", "backup", id))
}

endpoint! {
    /// Back an instance up: a base backup, encrypted under the instance's
    /// key, and from then on its WAL.
    create_backup: post "/v1/instances/{name}/backups" => "db:CreateBackup",
    tag: "databases", status: CREATED, paged: false, idempotent: true,
    path: InstanceName,
    body: NoBody,
    answer: BackupView,
    resource: |st, c, p, _, _| Ok(instance_arn(st, c, &p.name)),
    run: |st, call, p, _, _| {
        audit_key(st, call, &p.name);
        let b = st.db.backup(call.caller, &p.name)?;
        call.set_key(b.key_arn.clone());
        Ok(b)
    },
}

endpoint! {
    /// The caller's backups, or one instance's.
    list_backups: get "/v1/backups" => "db:ListBackups",
    tag: "databases", status: OK, paged: true, idempotent: false,
    query: BackupFilter,
    answer: BackupList,
    resource: |_, _, _, _, _| Ok(Resource::any()),
    run: |st, call, _, q, _| Ok(BackupList {
        backups: st.db.list_backups(call.caller, q.instance.as_deref())?,
    }),
}

endpoint! {
    /// A backup.
    describe_backup: get "/v1/backups/{id}" => "db:DescribeBackup",
    tag: "databases", status: OK, paged: false, idempotent: false,
    path: BackupId,
    answer: BackupView,
    resource: |_, c, p, _, _| Ok(backup_arn(c, &p.id)),
    run: |st, call, p, _, _| {
        let b = st.db.describe_backup(call.caller, &p.id)?;
        call.set_key(b.key_arn.clone());
        Ok(b)
    },
}

endpoint! {
    /// Delete a backup (and the WAL only it needed).
    delete_backup: delete "/v1/backups/{id}" => "db:DeleteBackup",
    tag: "databases", status: OK, paged: false, idempotent: false,
    path: BackupId,
    answer: Deleted,
    resource: |_, c, p, _, _| Ok(backup_arn(c, &p.id)),
    run: |st, call, p, _, _| {
        call.set_key(st.db.delete_backup(call.caller, &p.id)?.key_arn);
        Ok(Deleted { deleted: p.id })
    },
}

endpoint! {
    /// Restore a backup into a new instance under the same key, to a time
    /// if given (the action is on the backup, which is what is read).
    restore_backup: post "/v1/backups/{id}/restore" => "db:RestoreBackup",
    tag: "databases", status: CREATED, paged: false, idempotent: true,
    path: BackupId,
    body: RestoreBackupRequest,
    answer: InstanceView,
    replay: InstanceReplay = InstanceReplay::of,
    resource: |_, c, p, _, _| Ok(backup_arn(c, &p.id)),
    run: |st, call, p, _, b| {
        if let Ok(backup) = st.db.describe_backup(call.caller, &p.id) {
            call.set_key(backup.key_arn);
        }
        let source = match (&b.source_key_provider, &b.key_id) {
            (Some(provider), key_id) => Some(atrest_dbservice::SourceKeys {
                provider: provider.clone(),
                key_id: key_id.clone(),
            }),
            (None, Some(_)) => {
                return Err(atrest_dbservice::DbError::Invalid(
                    "key_id applies only with source_key_provider (a restore under the backup's own key otherwise)".into(),
                )
                .into());
            }
            (None, None) => None,
        };
        Ok(view(
            call,
            st.db.restore_from(
                call.caller,
                &p.id,
                &b.name,
                b.to_time.as_deref(),
                source.as_ref(),
            )?,
        ))
    },
}

endpoint! {
    /// Copy a backup into another region, re-encrypted under a key there
    /// (a new backup, with the WAL archived since the backup began,
    /// restorable in that region).
    copy_backup: post "/v1/backups/{id}/copy" => "db:CopyBackup",
    tag: "databases", status: CREATED, paged: false, idempotent: true,
    path: BackupId,
    body: CopyBackupRequest,
    answer: BackupView,
    resource: |_, c, p, _, _| Ok(backup_arn(c, &p.id)),
    run: |st, call, p, _, b| {
        let copy = st.db.copy_backup(call.caller, &p.id, &b.region, b.key_id.as_deref())?;
        call.set_key(copy.key_arn.clone());
        Ok(copy)
    },
}
