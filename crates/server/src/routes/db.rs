//! The database service's REST API: `/v1/instances`. Actions `db:*` on
//! `arn:aws:db:REGION:ACCOUNT:instance/NAME`. A path names an instance by
//! its name or its id; its ARN always by its name, so that a policy on
//! `instance/orders` covers the requests that name it by id too.
#![allow(
    unused_qualifications,
    reason = "utoipa's expansion of the declared parameters names their types in full"
)]

use std::collections::BTreeMap;
use std::fmt;

use atrest_dbservice::{Class, EncryptionChange, InstanceView, NewInstance};
use atrest_kms::{Call, Caller};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::rest::{NoBody, Replayable, Resource, arn, endpoint};
use crate::routes::{Deleted, keyed};
use crate::state::AppState;

/// The routes of this module.
pub(crate) fn routes() -> OpenApiRouter<std::sync::Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_instances, create_instance))
        .routes(routes!(describe_instance, delete_instance))
        .routes(routes!(start_instance))
        .routes(routes!(stop_instance))
        .routes(routes!(restart_instance))
        .routes(routes!(create_replica))
        .routes(routes!(switchover))
        .routes(routes!(change_encryption))
        .routes(routes!(set_parameters))
        .routes(routes!(resize_instance))
        .routes(routes!(clone_instance))
        .routes(routes!(set_backup_retention))
}

/// An instance in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct InstanceName {
    /// The instance's name, or its id (`db-` and 16 hex digits).
    pub name: String,
}

/// A port a request asks for. The service refuses a privileged one
/// (below 1024) and says why; what is not a port at all is refused here.
#[derive(Deserialize, Clone, Copy)]
#[serde(try_from = "u64")]
pub(crate) struct Port(u16);

impl TryFrom<u64> for Port {
    type Error = &'static str;

    fn try_from(p: u64) -> Result<Self, Self::Error> {
        u16::try_from(p)
            .map(Self)
            .map_err(|_| "must be 1024 to 65535")
    }
}

impl Port {
    /// The port of an optional member.
    pub(crate) fn of(p: Option<Self>) -> Option<u16> {
        p.map(|p| p.0)
    }
}

/// An instance class read as the service reads it, so that a bad one gets
/// the service's own words ("'gold' is not an instance class; use tde or
/// disk").
pub(crate) fn class<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Class>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|c| c.parse().map_err(de::Error::custom))
        .transpose()
}

/// `POST /v1/instances`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateInstanceRequest {
    /// Name: 1 to 63 of a-z, 0-9 and '-', starting with a letter.
    #[schema(pattern = "^[a-z][a-z0-9-]{0,62}$")]
    name: String,
    /// Class (default `tde`).
    #[serde(default, deserialize_with = "class")]
    class: Option<Class>,
    /// The customer's key (id, ARN or alias).
    key_id: Option<String>,
    /// Use the account's database service key.
    service_key: Option<bool>,
    /// No encryption (class `disk` only).
    unencrypted: Option<bool>,
    /// Disk size in bytes.
    size: Option<u64>,
    /// Port (1024 to 65535; default: a free one).
    #[schema(value_type = Option<u16>, minimum = 1024, maximum = 65535)]
    port: Option<Port>,
    /// The master user's name.
    master_username: Option<String>,
    /// The master user's password (default: generated and answered once).
    master_password: Option<String>,
    /// Tags (as a disk's), which identity policies see as
    /// `aws:ResourceTag/<key>` (and at this creation as
    /// `aws:RequestTag/<key>` and `aws:TagKeys`).
    tags: Option<BTreeMap<String, String>>,
}

/// `POST /v1/instances/{name}/parameters`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetParametersRequest {
    /// PostgreSQL settings: name to value (a string, number or boolean), or
    /// null to reset one to its default.
    parameters: BTreeMap<String, ParameterValue>,
}

/// A PostgreSQL setting's value as the configuration writes it: a string
/// as it is, a number in JSON's digits, a boolean as `on` or `off`; null
/// (`None`) resets the setting to its default.
pub(crate) struct ParameterValue(Option<String>);

impl<'de> Deserialize<'de> for ParameterValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Scalar;

        impl Visitor<'_> for Scalar {
            type Value = ParameterValue;

            // What a wrong type is told ("'parameters.work_mem' must be a
            // string, number, boolean or null").
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number, boolean or null")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(ParameterValue(Some(s.to_owned())))
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Ok(ParameterValue(Some(n.to_string())))
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Ok(ParameterValue(Some(n.to_string())))
            }

            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
                // JSON's own digits (`1000.0`), as the request wrote them.
                let n = serde_json::Number::from_f64(n)
                    .ok_or_else(|| E::custom("must be a finite number"))?;
                Ok(ParameterValue(Some(n.to_string())))
            }

            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(ParameterValue(Some(
                    if b { "on" } else { "off" }.to_owned(),
                )))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(ParameterValue(None))
            }
        }

        d.deserialize_any(Scalar)
    }
}

impl utoipa::PartialSchema for ParameterValue {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        let of = |t: Type| ObjectBuilder::new().schema_type(t);
        OneOfBuilder::new()
            .item(of(Type::String))
            .item(of(Type::Number))
            .item(of(Type::Boolean))
            .item(of(Type::Null))
            .description(Some(
                "The setting's value (a boolean is `on` or `off`), or null to reset it to its default",
            ))
            .into()
    }
}

impl ToSchema for ParameterValue {}

/// `POST /v1/instances/{name}/resize`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResizeInstanceRequest {
    /// The new disk size in bytes (disks only grow).
    size: u64,
}

/// `POST /v1/instances/{name}/backup-retention`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackupRetentionRequest {
    /// Days the instance's backups are kept (0: until deleted; at most
    /// 35). Backups that ended longer ago are deleted, except the newest.
    days: u32,
}

/// `POST /v1/instances/{name}/clone`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CloneInstanceRequest {
    /// The new instance's name.
    name: String,
    /// Its port (1024 to 65535; default: a free one).
    #[schema(value_type = Option<u16>, minimum = 1024, maximum = 65535)]
    port: Option<Port>,
}

/// `POST /v1/instances/{name}/replicas`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateReplicaRequest {
    /// The replica's name (default: derived from the primary's).
    name: Option<String>,
    /// Its port (1024 to 65535; default: a free one).
    #[schema(value_type = Option<u16>, minimum = 1024, maximum = 65535)]
    port: Option<Port>,
}

/// What `POST /v1/instances/{name}/encryption` does.
#[derive(Deserialize, ToSchema, Clone, Copy)]
#[serde(try_from = "String", rename_all = "kebab-case")]
pub(crate) enum EncryptionAction {
    /// Encrypt the instance's disk.
    Enable,
    /// Decrypt it (class `disk` only).
    Disable,
    /// Move it to another key.
    SetKey,
}

impl EncryptionAction {
    fn name(self) -> &'static str {
        match self {
            Self::Enable => "enable",
            Self::Disable => "disable",
            Self::SetKey => "set-key",
        }
    }
}

impl TryFrom<String> for EncryptionAction {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        [Self::Enable, Self::Disable, Self::SetKey]
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                format!("'{s}' is not an encryption action; use enable, disable or set-key")
            })
    }
}

/// `POST /v1/instances/{name}/encryption`: `enable` and `set-key` take
/// exactly one of `key_id` and `service_key: true`; `disable` takes
/// neither.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangeEncryptionRequest {
    /// The change.
    action: EncryptionAction,
    /// The customer's key (id, ARN or alias).
    key_id: Option<String>,
    /// Use the account's database service key.
    service_key: Option<bool>,
}

/// An instance as a replay may repeat it: without the password a creation
/// shows once, which [`InstanceReplay::of`] clears.
#[derive(Serialize, Clone)]
#[serde(transparent)]
pub(crate) struct InstanceReplay(InstanceView);

impl InstanceReplay {
    /// `v` without its password.
    pub(crate) fn of(v: &InstanceView) -> Self {
        Self::from(v.clone())
    }
}

impl From<InstanceView> for InstanceReplay {
    fn from(mut v: InstanceView) -> Self {
        v.master_password = None;
        Self(v)
    }
}

impl Replayable for InstanceReplay {}

/// The caller's instances (a list never shows a password).
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct InstanceList {
    /// The instances.
    #[schema(value_type = Vec<InstanceView>)]
    instances: Vec<InstanceReplay>,
}

impl Replayable for InstanceList {}

/// The resource of a request on instance `name_or_id` (see the module
/// doc); an instance that does not exist is named as the request names it,
/// so that a refusal comes before a "not found".
pub(crate) fn instance_arn(st: &AppState, c: &Caller, name_or_id: &str) -> Resource {
    let name = st
        .db
        .name_of(c, name_or_id)
        .unwrap_or_else(|| name_or_id.to_owned());
    Resource::arn(arn(c, "db", "instance", &name))
        .resource_tags(&st.db.tags_of(c, name_or_id).unwrap_or_default())
}

/// Names the instance's key in the call's audit record before acting on
/// it, so that a refused change is recorded with the key too.
pub(crate) fn audit_key(st: &AppState, call: &Call<'_>, name: &str) {
    if let Ok(v) = st.db.describe(call.caller, name)
        && let Some(k) = v.key_arn
    {
        call.set_key(k);
    }
}

/// The answer about an instance, its key named in the audit record.
pub(crate) fn view(call: &Call<'_>, v: InstanceView) -> InstanceView {
    let key = v.key_arn.clone();
    keyed(call, key.as_ref(), v)
}

endpoint! {
    /// Create and start an instance: encrypted under the named key or the
    /// account's database service key (class `tde`, the default, is always
    /// encrypted). A generated password is answered once.
    create_instance: post "/v1/instances" => "db:CreateInstance",
    tag: "databases", status: CREATED, paged: false, idempotent: true,
    body: CreateInstanceRequest,
    answer: InstanceView,
    replay: InstanceReplay = InstanceReplay::of,
    resource: |_, c, _, _, b| Ok(Resource::arn(arn(c, "db", "instance", &b.name))
        .request_tags(b.tags.as_ref().unwrap_or(&BTreeMap::new()))),
    run: |st, call, _, _, b| {
        let v = st.db.create(call.caller, &NewInstance {
            name: b.name,
            class: b.class,
            key_id: b.key_id,
            service_key: b.service_key.unwrap_or(false),
            unencrypted: b.unencrypted.unwrap_or(false),
            size: b.size,
            port: Port::of(b.port),
            master_username: b.master_username,
            master_password: b.master_password,
            tags: b.tags.unwrap_or_default(),
        })?;
        Ok(view(call, v))
    },
}

endpoint! {
    /// The caller's instances.
    list_instances: get "/v1/instances" => "db:ListInstances",
    tag: "databases", status: OK, paged: true, idempotent: false,
    answer: InstanceList,
    resource: |_, _, _, _, _| Ok(Resource::any()),
    run: |st, call, _, _, _| Ok(InstanceList {
        instances: st.db.list(call.caller).into_iter().map(InstanceReplay::from).collect(),
    }),
}

endpoint! {
    /// An instance (by name or id).
    describe_instance: get "/v1/instances/{name}" => "db:DescribeInstance",
    tag: "databases", status: OK, paged: false, idempotent: false,
    path: InstanceName,
    answer: InstanceView,
    replay: InstanceReplay = InstanceReplay::of,
    resource: |st, c, p, _, _| Ok(instance_arn(st, c, &p.name)),
    run: |st, call, p, _, _| Ok(view(call, st.db.describe(call.caller, &p.name)?)),
}

endpoint! {
    /// Stop and delete an instance and its disk (its backups stay until
    /// deleted).
    delete_instance: delete "/v1/instances/{name}" => "db:DeleteInstance",
    tag: "databases", status: OK, paged: false, idempotent: false,
    path: InstanceName,
    answer: Deleted,
    resource: |st, c, p, _, _| Ok(instance_arn(st, c, &p.name)),
    run: |st, call, p, _, _| {
        let key = st.db.describe(call.caller, &p.name)?.key_arn;
        st.db.delete(call.caller, &p.name)?;
        Ok(keyed(call, key.as_ref(), Deleted { deleted: p.name }))
    },
}

endpoint! {
    /// Start a stopped instance.
    start_instance: post "/v1/instances/{name}/start" => "db:StartInstance",
    tag: "databases", status: OK, paged: false, idempotent: true,
    path: InstanceName,
    body: NoBody,
    answer: InstanceView,
    replay: InstanceReplay = InstanceReplay::of,
    resource: |st, c, p, _, _| Ok(instance_arn(st, c, &p.name)),
    run: |st, call, p, _, _| {
        audit_key(st, call, &p.name);
        Ok(view(call, st.db.start(call.caller, &p.name)?))
    },
}

endpoint! {
    /// Stop an instance (it stays stopped across restarts of atrest).
    stop_instance: post "/v1/instances/{name}/stop" => "db:StopInstance",
    tag: "databases", status: OK, paged: false, idempotent: true,
    path: InstanceName,
    body: NoBody,
    answer: InstanceView,
    replay: InstanceReplay = InstanceReplay::of,
    resource: |st, c, p, _, _| Ok(instance_arn(st, c, &p.name)),
    run: |st, call, p, _, _| {
        audit_key(st, call, &p.name);
        Ok(view(call, st.db.stop(call.caller, &p.name)?))
    },
}

endpoint! {
    /// Restart an instance.
    restart_instance: post "/v1/instances/{name}/restart" => "db:RestartInstance",
    tag: "databases", status: OK, paged: false, idempotent: true,
    path: InstanceName,
    body: NoBody,
    answer: InstanceView,
    replay: InstanceReplay = InstanceReplay::of,
    resource: |st, c, p, _, _| Ok(instance_arn(st, c, &p.name)),
    run: |st, call, p, _, _| {
        audit_key(st, call, &p.name);
        Ok(view(call, st.db.restart(call.caller, &p.name)?))
    },
}

endpoint! {
    /// Create a streaming replica of an instance, under its key (the
    /// action is on the primary, which is what is read).
    create_replica: post "/v1/instances/{name}/replicas" => "db:CreateReplica",
    tag: "databases", status: CREATED, paged: false, idempotent: true,
    path: InstanceName,
    body: CreateReplicaRequest,
    answer: InstanceView,
    replay: InstanceReplay = InstanceReplay::of,
    resource: |st, c, p, _, _| Ok(instance_arn(st, c, &p.name)),
    run: |st, call, p, _, b| {
        audit_key(st, call, &p.name);
        let v = st.db.create_replica(call.caller, &p.name, b.name.as_deref(), Port::of(b.port))?;
        Ok(view(call, v))
    },
}

endpoint! {
    /// Promote a replica to primary; the old primary follows it.
    switchover: post "/v1/instances/{name}/switchover" => "db:Switchover",
    tag: "databases", status: OK, paged: false, idempotent: true,
    path: InstanceName,
    body: NoBody,
    answer: InstanceView,
    replay: InstanceReplay = InstanceReplay::of,
    resource: |st, c, p, _, _| Ok(instance_arn(st, c, &p.name)),
    run: |st, call, p, _, _| {
        audit_key(st, call, &p.name);
        Ok(view(call, st.db.switchover(call.caller, &p.name)?))
    },
}

endpoint! {
    /// Enable, disable or re-key an instance's encryption (restarts it).
    change_encryption: post "/v1/instances/{name}/encryption" => "db:ChangeEncryption",
    tag: "databases", status: OK, paged: false, idempotent: true,
    path: InstanceName,
    body: ChangeEncryptionRequest,
    answer: InstanceView,
    replay: InstanceReplay = InstanceReplay::of,
    resource: |st, c, p, _, _| Ok(instance_arn(st, c, &p.name)),
    run: |st, call, p, _, b| {
        audit_key(st, call, &p.name);
        let service_key = b.service_key.unwrap_or(false);
        let change = match b.action {
            EncryptionAction::Enable | EncryptionAction::SetKey => {
                if b.key_id.is_some() == service_key {
                    return Err(ApiError::Invalid(format!(
                        "'{}' takes exactly one of 'key_id' and 'service_key'",
                        b.action.name()
                    )));
                }
                match b.action {
                    EncryptionAction::Enable => EncryptionChange::Enable { key_id: b.key_id },
                    _ => EncryptionChange::SetKey { key_id: b.key_id },
                }
            }
            EncryptionAction::Disable => {
                if b.key_id.is_some() || service_key {
                    return Err(ApiError::Invalid("'disable' takes no key".into()));
                }
                EncryptionChange::Disable
            }
        };
        Ok(view(call, st.db.change_encryption(call.caller, &p.name, &change)?))
    },
}

endpoint! {
    /// Set or reset PostgreSQL settings (those on the allow-list) and
    /// restart the instance so that each takes effect.
    set_parameters: post "/v1/instances/{name}/parameters" => "db:SetParameters",
    tag: "databases", status: OK, paged: false, idempotent: true,
    path: InstanceName,
    body: SetParametersRequest,
    answer: InstanceView,
    replay: InstanceReplay = InstanceReplay::of,
    resource: |st, c, p, _, _| Ok(instance_arn(st, c, &p.name)),
    run: |st, call, p, _, b| {
        audit_key(st, call, &p.name);
        let params: BTreeMap<String, Option<String>> =
            b.parameters.into_iter().map(|(k, v)| (k, v.0)).collect();
        Ok(view(call, st.db.set_parameters(call.caller, &p.name, &params)?))
    },
}

endpoint! {
    /// Grow an instance's disk and file system.
    resize_instance: post "/v1/instances/{name}/resize" => "db:ResizeInstance",
    tag: "databases", status: OK, paged: false, idempotent: true,
    path: InstanceName,
    body: ResizeInstanceRequest,
    answer: InstanceView,
    replay: InstanceReplay = InstanceReplay::of,
    resource: |st, c, p, _, _| Ok(instance_arn(st, c, &p.name)),
    run: |st, call, p, _, b| {
        audit_key(st, call, &p.name);
        Ok(view(call, st.db.resize(call.caller, &p.name, b.size)?))
    },
}

endpoint! {
    /// Clone an instance into a new one under the same key (a snapshot of
    /// its disk: no data is copied; the action is on the source).
    clone_instance: post "/v1/instances/{name}/clone" => "db:CloneInstance",
    tag: "databases", status: CREATED, paged: false, idempotent: true,
    path: InstanceName,
    body: CloneInstanceRequest,
    answer: InstanceView,
    replay: InstanceReplay = InstanceReplay::of,
    resource: |st, c, p, _, _| Ok(instance_arn(st, c, &p.name)),
    run: |st, call, p, _, b| {
        audit_key(st, call, &p.name);
        let v = st.db.clone_instance(call.caller, &p.name, &b.name, Port::of(b.port))?;
        Ok(view(call, v))
    },
}

endpoint! {
    /// Set how many days an instance's backups are kept (0: until
    /// deleted) and apply it now: backups that ended longer ago are deleted,
    /// except the newest, with the WAL only they needed.
    set_backup_retention: post "/v1/instances/{name}/backup-retention" => "db:SetBackupRetention",
    tag: "databases", status: OK, paged: false, idempotent: true,
    path: InstanceName,
    body: BackupRetentionRequest,
    answer: InstanceView,
    replay: InstanceReplay = InstanceReplay::of,
    resource: |st, c, p, _, _| Ok(instance_arn(st, c, &p.name)),
    run: |st, call, p, _, b| {
        Ok(view(call, st.db.set_backup_retention(call.caller, &p.name, b.days)?))
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str) -> (String, String) {
        let e = crate::rest::body::json::<CreateInstanceRequest>(body.as_bytes())
            .err()
            .unwrap();
        let (_, code, msg) = e.parts();
        (code.to_owned(), msg)
    }

    #[test]
    fn instance_bodies_keep_their_messages() {
        let (code, msg) = refused(r#"{"name": "a", "port": 70000}"#);
        assert_eq!(
            (code.as_str(), msg.as_str()),
            ("ValidationException", "'port' must be 1024 to 65535")
        );
        let (code, msg) = refused(r#"{"name": "a", "port": "5432"}"#);
        assert_eq!(
            (code.as_str(), msg.as_str()),
            ("SerializationException", "'port' must be a number")
        );
        let (code, msg) = refused(r#"{"name": "a", "class": "gold"}"#);
        assert_eq!(code, "ValidationException");
        assert!(
            msg.contains("'gold' is not an instance class; use tde or disk"),
            "{msg}"
        );
        let (code, msg) = refused(r#"{"name": "a", "colour": "red"}"#);
        assert_eq!(code, "ValidationException");
        assert!(
            msg.starts_with("unknown member 'colour'; this operation takes: name, class"),
            "{msg}"
        );
        let ok: CreateInstanceRequest = crate::rest::body::json(
            br#"{"name": "a", "class": "disk", "port": null, "key_id": null}"#,
        )
        .unwrap();
        assert_eq!((ok.class, Port::of(ok.port)), (Some(Class::Disk), None));

        let e = crate::rest::body::json::<ChangeEncryptionRequest>(br#"{"action": "explode"}"#)
            .err()
            .unwrap();
        assert!(
            e.parts()
                .2
                .contains("'explode' is not an encryption action; use enable, disable or set-key"),
            "{}",
            e.parts().2
        );
        let ok: ChangeEncryptionRequest =
            crate::rest::body::json(br#"{"action": "set-key", "service_key": true}"#).unwrap();
        assert_eq!(ok.action.name(), "set-key");
    }

    #[test]
    fn parameters_take_strings_numbers_booleans_and_null() {
        let b: SetParametersRequest = crate::rest::body::json(
            br#"{"parameters": {"a": "64MB", "b": 5, "c": 1.5, "d": 1000.0, "e": true, "f": false, "g": null, "h": -1}}"#,
        )
        .unwrap();
        let got: Vec<(&str, Option<&str>)> = b
            .parameters
            .iter()
            .map(|(k, v)| (k.as_str(), v.0.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("a", Some("64MB")),
                ("b", Some("5")),
                ("c", Some("1.5")),
                ("d", Some("1000.0")),
                ("e", Some("on")),
                ("f", Some("off")),
                ("g", None),
                ("h", Some("-1")),
            ]
        );
        let e = crate::rest::body::json::<SetParametersRequest>(
            br#"{"parameters": {"work_mem": [1]}}"#,
        )
        .err()
        .unwrap();
        let (_, code, msg) = e.parts();
        assert_eq!(
            (code, msg.as_str()),
            (
                "SerializationException",
                "'parameters.work_mem' must be a string, number, boolean or null"
            )
        );
        let e = crate::rest::body::json::<SetParametersRequest>(b"{}")
            .err()
            .unwrap();
        assert_eq!(e.parts().2, "'parameters' is required");
    }

    #[test]
    fn a_replay_never_holds_a_password() {
        let v = InstanceView {
            id: "db-0123456789abcdef".into(),
            name: "orders".into(),
            class: Class::Tde,
            state: "running".into(),
            reason: None,
            encrypted: true,
            key_arn: None,
            disk: "disk-0123456789abcdef".into(),
            host: "127.0.0.1".into(),
            port: 5432,
            master_username: "postgres".into(),
            role: "primary".into(),
            primary: None,
            account: "111122223333".into(),
            region: "us-east-1".into(),
            created: "2026-01-01T00:00:00Z".into(),
            master_password: Some("generated-once".into()),
            tags: BTreeMap::new(),
            backup_retention_days: 0,
        };
        let shown = serde_json::to_value(&v).unwrap();
        assert_eq!(shown["master_password"], "generated-once");
        let replay = serde_json::to_value(InstanceReplay::of(&v)).unwrap();
        assert!(replay.get("master_password").is_none(), "{replay}");
        assert_eq!(replay["name"], "orders");
    }
}
