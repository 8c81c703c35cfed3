//! The control plane's REST API: `/v1/projects`. Actions `project:*` on
//! `arn:aws:project:REGION:ACCOUNT:project/ID` (`project/*` for a
//! creation); the disks and instances a project makes are actions on the
//! project.
#![allow(
    unused_qualifications,
    reason = "utoipa's expansion of the declared parameters names their types in full"
)]

use atrest_control::{NewProject, Project, Revocation};
use atrest_dbservice::{Class, InstanceView, NewInstance};
use atrest_diskservice::{DiskView, NewDisk};
use atrest_kms::Caller;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::rest::{NoBody, Replayable, Resource, arn, endpoint};
use crate::routes::db::{InstanceReplay, Port, class, view};
use crate::routes::{Deleted, keyed};
use crate::state::AppState;

/// The routes of this module.
pub(crate) fn routes() -> OpenApiRouter<std::sync::Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_projects, create_project))
        .routes(routes!(describe_project, delete_project))
        .routes(routes!(get_key_policy))
        .routes(routes!(set_key))
        .routes(routes!(create_project_disk))
        .routes(routes!(create_project_instance))
        .routes(routes!(pause_project))
        .routes(routes!(resume_project))
}

/// A project in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct ProjectId {
    /// Project id (`prj-` and 16 hex digits).
    id: String,
}

/// A project and a region in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct ProjectRegion {
    /// Project id (`prj-` and 16 hex digits).
    id: String,
    /// The region the key is for.
    region: String,
}

/// `GET /v1/projects`: the control plane pages its own list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProjectPage {
    /// At most this many (default 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Where the previous page ended (its `next_token`).
    next_token: Option<String>,
}

/// `revocation`, refused with what it must be (its type alone would say
/// "internally tagged enum"). Read whole first, so that an error is the
/// member's and not one of its parts'.
fn revocation<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Revocation>, D::Error> {
    Option::<serde_json::Value>::deserialize(d)?
        .map(|v| {
            serde_json::from_value(v).map_err(|e| {
                de::Error::custom(format!(
                    "must be {{\"policy\": \"keep\"}} or {{\"policy\": \"stop\", \"after_seconds\": N}}: {e}"
                ))
            })
        })
        .transpose()
}

/// `POST /v1/projects`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateProjectRequest {
    /// Name: 1 to 64 of a-z, 0-9 and '-', starting with a letter; unique in
    /// the account.
    #[schema(pattern = "^[a-z][a-z0-9-]{0,63}$")]
    name: String,
    /// Customer-managed keys (fixed for the project's life; default false).
    cmek: Option<bool>,
    /// What the project does when a key becomes unusable (default keep).
    #[serde(default, deserialize_with = "revocation")]
    revocation: Option<Revocation>,
    /// Idempotency: a retry with the same token answers the first project.
    #[schema(min_length = 1, max_length = 64)]
    client_token: Option<String>,
    /// Tags (as a disk's), which identity policies see as
    /// `aws:ResourceTag/<key>` (and at this creation as
    /// `aws:RequestTag/<key>` and `aws:TagKeys`).
    tags: Option<std::collections::BTreeMap<String, String>>,
}

/// `PUT /v1/projects/{id}/keys/{region}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetKeyRequest {
    /// The customer's key in that region (id, ARN or alias).
    key_id: String,
}

/// `POST /v1/projects/{id}/disks`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateProjectDiskRequest {
    /// Size in bytes (a multiple of 4096).
    size: u64,
    /// Logical block size, 512 (default) or 4096.
    block_size: Option<u32>,
    /// Whether several clients may attach it at once.
    shareable: Option<bool>,
}

/// `POST /v1/projects/{id}/instances`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateProjectInstanceRequest {
    /// Name: 1 to 63 of a-z, 0-9 and '-', starting with a letter.
    #[schema(pattern = "^[a-z][a-z0-9-]{0,62}$")]
    name: String,
    /// Class (default `tde`).
    #[serde(default, deserialize_with = "class")]
    class: Option<Class>,
    /// Disk size in bytes.
    size: Option<u64>,
    /// Port (1024 to 65535; default: a free one).
    #[schema(value_type = Option<u16>, minimum = 1024, maximum = 65535)]
    port: Option<Port>,
    /// Superuser name (default `postgres`).
    master_username: Option<String>,
    /// Superuser password (default: generated and answered once).
    master_password: Option<String>,
}

/// A page of projects.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct ProjectList {
    /// The projects, in id order.
    projects: Vec<Project>,
    /// Give as `next_token` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

/// A project a creation answers: made by it (201), or by an earlier
/// request with the same client token (200).
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct CreatedProject {
    /// The project.
    #[serde(flatten)]
    project: Project,
    /// Whether this request made it (told by the status, not the body).
    #[serde(skip)]
    created: bool,
}

/// The key policy statements the customer attaches to their key for the
/// project in a region.
#[derive(Serialize, ToSchema, Clone)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub(crate) struct KeyPolicy(serde_json::Value);

// A project holds no secret (its client token is the customer's retry
// token, not a credential).
impl Replayable for Project {}
impl Replayable for ProjectList {}
impl Replayable for CreatedProject {}
impl Replayable for KeyPolicy {}

/// The project `id` names, with its tags as condition keys.
fn project_arn(st: &AppState, c: &Caller, id: &str) -> Resource {
    Resource::arn(arn(c, "project", "project", id))
        .resource_tags(&st.projects.tags_of(c, id).unwrap_or_default())
}

endpoint! {
    /// Create a project (with `cmek`, its disks and instances are encrypted
    /// under the customer's key in each region, set with `PUT
    /// /v1/projects/{id}/keys/{region}`).
    create_project: post "/v1/projects" => "project:CreateProject",
    tag: "projects", status: CREATED, paged: false, idempotent: true,
    body: CreateProjectRequest,
    answer: CreatedProject,
    resource: |_, c, _, _, b| Ok(Resource::arn(arn(c, "project", "project", "*"))
        .request_tags(b.tags.as_ref().unwrap_or(&std::collections::BTreeMap::new()))),
    run: |st, call, _, _, b| {
        let (project, created) = st.projects.create(call.caller, &NewProject {
            name: b.name,
            cmek: b.cmek.unwrap_or(false),
            revocation: b.revocation.unwrap_or_default(),
            client_token: b.client_token,
            tags: b.tags.unwrap_or_default(),
        })?;
        Ok(CreatedProject { project, created })
    },
    status_of: |a| if a.created { http::StatusCode::CREATED } else { http::StatusCode::OK },
    other_statuses: [OK],
}

endpoint! {
    /// The caller's projects, in id order, a page at a time.
    list_projects: get "/v1/projects" => "project:ListProjects",
    tag: "projects", status: OK, paged: false, idempotent: false,
    query: ProjectPage,
    answer: ProjectList,
    resource: |_, _, _, _, _| Ok(Resource::any()),
    run: |st, call, _, q, _| {
        let limit = crate::rest::paging::limit(q.limit)?;
        let after = q.next_token.filter(|t| !t.is_empty());
        let (projects, next_token) = st.projects.list(call.caller, limit, after.as_deref())?;
        Ok(ProjectList { projects, next_token })
    },
}

endpoint! {
    /// A project, with its disks and instances.
    describe_project: get "/v1/projects/{id}" => "project:DescribeProject",
    tag: "projects", status: OK, paged: false, idempotent: false,
    path: ProjectId,
    answer: Project,
    resource: |st, c, p, _, _| Ok(project_arn(st, c, &p.id)),
    run: |st, call, p, _, _| Ok(st.projects.describe(call.caller, &p.id)?),
}

endpoint! {
    /// Delete a project that has no disk or instance left (409 while it
    /// has).
    delete_project: delete "/v1/projects/{id}" => "project:DeleteProject",
    tag: "projects", status: OK, paged: false, idempotent: false,
    path: ProjectId,
    answer: Deleted,
    resource: |st, c, p, _, _| Ok(project_arn(st, c, &p.id)),
    run: |st, call, p, _, _| {
        st.projects.delete(call.caller, &p.id)?;
        Ok(Deleted { deleted: p.id })
    },
}

endpoint! {
    /// The key policy statements to attach to the customer's key in a
    /// region, so that atrest's services may use it for the project.
    get_key_policy: get "/v1/projects/{id}/key-policy/{region}" => "project:GetKeyPolicy",
    tag: "projects", status: OK, paged: false, idempotent: false,
    path: ProjectRegion,
    answer: KeyPolicy,
    resource: |st, c, p, _, _| Ok(project_arn(st, c, &p.id)),
    run: |st, call, p, _, _| Ok(KeyPolicy(st.projects.key_policy(call.caller, &p.id, &p.region)?)),
}

endpoint! {
    /// Set the project's key in a region: tested (each permission the
    /// services need, named when refused) and saved.
    set_key: put "/v1/projects/{id}/keys/{region}" => "project:SetKey",
    tag: "projects", status: OK, paged: false, idempotent: false,
    path: ProjectRegion,
    body: SetKeyRequest,
    answer: Project,
    resource: |st, c, p, _, _| Ok(project_arn(st, c, &p.id)),
    run: |st, call, p, _, b| {
        let project = st.projects.set_key(call.caller, &p.id, &p.region, &b.key_id)?;
        let key = project.keys.get(&p.region).map(|k| k.key_arn.clone());
        Ok(keyed(call, key.as_ref(), project))
    },
}

endpoint! {
    /// Create a disk under the project's key in the request's region (409
    /// while the project is paused or the region has no key).
    create_project_disk: post "/v1/projects/{id}/disks" => "project:CreateDisk",
    tag: "projects", status: CREATED, paged: false, idempotent: true,
    path: ProjectId,
    body: CreateProjectDiskRequest,
    answer: DiskView,
    resource: |st, c, p, _, _| Ok(project_arn(st, c, &p.id)),
    run: |st, call, p, _, b| {
        let d = st.projects.create_disk(call.caller, &p.id, &NewDisk {
            size: b.size,
            block_size: b.block_size,
            encrypted: None,
            key_id: None,
            shareable: b.shareable,
            tags: std::collections::BTreeMap::new(),
        })?;
        let key = d.key_arn.clone();
        Ok(keyed(call, key.as_ref(), d))
    },
}

endpoint! {
    /// Create a database instance under the project's key in the request's
    /// region. A generated password is answered once.
    create_project_instance: post "/v1/projects/{id}/instances" => "project:CreateInstance",
    tag: "projects", status: CREATED, paged: false, idempotent: true,
    path: ProjectId,
    body: CreateProjectInstanceRequest,
    answer: InstanceView,
    replay: InstanceReplay = InstanceReplay::of,
    resource: |st, c, p, _, _| Ok(project_arn(st, c, &p.id)),
    run: |st, call, p, _, b| {
        let v = st.projects.create_instance(call.caller, &p.id, &NewInstance {
            name: b.name,
            class: b.class,
            key_id: None,
            service_key: false,
            unencrypted: false,
            size: b.size,
            port: Port::of(b.port),
            master_username: b.master_username,
            master_password: b.master_password,
            tags: std::collections::BTreeMap::new(),
        })?;
        Ok(view(call, v))
    },
}

endpoint! {
    /// Pause a project: its instances are stopped until it is resumed.
    pause_project: post "/v1/projects/{id}/pause" => "project:PauseProject",
    tag: "projects", status: OK, paged: false, idempotent: true,
    path: ProjectId,
    body: NoBody,
    answer: Project,
    resource: |st, c, p, _, _| Ok(project_arn(st, c, &p.id)),
    run: |st, call, p, _, _| Ok(st.projects.pause(call.caller, &p.id)?),
}

endpoint! {
    /// Resume a project: its keys are tested (a refusal names the key that
    /// is unusable) and its instances started.
    resume_project: post "/v1/projects/{id}/resume" => "project:ResumeProject",
    tag: "projects", status: OK, paged: false, idempotent: true,
    path: ProjectId,
    body: NoBody,
    answer: Project,
    resource: |st, c, p, _, _| Ok(project_arn(st, c, &p.id)),
    run: |st, call, p, _, _| Ok(st.projects.resume(call.caller, &p.id)?),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_bodies_keep_their_messages() {
        let e = crate::rest::body::json::<CreateProjectRequest>(
            br#"{"name": "x", "revocation": {"policy": "sometimes"}}"#,
        )
        .err()
        .unwrap();
        let (_, code, msg) = e.parts();
        assert_eq!(code, "ValidationException");
        assert!(
            msg.starts_with(r#"'revocation' must be {"policy": "keep"} or {"policy": "stop", "after_seconds": N}: unknown variant `sometimes`"#),
            "{msg}"
        );
        let ok: CreateProjectRequest = crate::rest::body::json(
            br#"{"name": "x", "revocation": {"policy": "stop", "after_seconds": 5}, "cmek": null}"#,
        )
        .unwrap();
        assert_eq!(ok.revocation, Some(Revocation::Stop { after_seconds: 5 }));
        let e = crate::rest::body::json::<CreateProjectRequest>(br#"{"name": "x", "cmek": "yes"}"#)
            .err()
            .unwrap();
        assert_eq!(e.parts().1, "SerializationException");
        let q: ProjectPage = crate::rest::body::query("limit=2&next_token=prj-1", false).unwrap();
        assert_eq!((q.limit, q.next_token.as_deref()), (Some(2), Some("prj-1")));
    }
}
