//! The REST API's routes, one module per service, each declaring its
//! endpoints with [`crate::rest::endpoint!`]. [`api`] gathers them into one
//! router with its OpenAPI document.

pub(crate) mod accounts;
pub(crate) mod audit;
pub(crate) mod backups;
pub(crate) mod db;
pub(crate) mod disks;
pub(crate) mod nodes;
pub(crate) mod projects;

use std::sync::Arc;

use atrest_kms::Call;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;

use crate::rest::Replayable;
use crate::state::AppState;

/// The answer of a deletion.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct Deleted {
    /// What was deleted (its id or name).
    pub deleted: String,
}

impl Replayable for Deleted {}

/// Names the master key an answer is about in the call's audit record.
pub(crate) fn keyed<T>(call: &Call<'_>, key_arn: Option<&String>, v: T) -> T {
    if let Some(k) = key_arn {
        call.set_key(k.clone());
    }
    v
}

/// Every route declared with the REST framework, with its document.
pub(crate) fn api() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .merge(accounts::routes())
        .merge(audit::routes())
        .merge(disks::routes())
        .merge(db::routes())
        .merge(backups::routes())
        .merge(projects::routes())
        .merge(nodes::routes())
}

/// The routes driven in process, through the whole router (signature,
/// authorization, typed bodies, idempotency, audit), on a fresh data dir.
#[cfg(test)]
mod tests {
    use std::path::Path;

    use axum::body::Body;
    use http::{Method, Request, StatusCode};
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use super::*;

    /// A server's state on `dir`, without a listener, and the admin's key.
    fn state(dir: &Path) -> (Arc<AppState>, (String, Vec<u8>)) {
        let data = dir.join("data");
        let opened = crate::datadir::open(
            &data,
            &dir.join("data.admin-credentials"),
            atrest_kms::root::RootSource::KeyFile(dir.join("data.root.key")),
            vec!["us-east-1".into()],
            Arc::new(atrest_kms::clock::SystemClock),
            (
                &atrest_audit::Options::default(),
                crate::config::AuditSync::default(),
            ),
            (atrest_diskservice::Config::default(), None),
        )
        .unwrap();
        let (boot, _) = opened.bootstrap.unwrap();
        let admin = (
            boot.key.access_key_id.clone(),
            boot.key.secret_access_key.expose().to_vec(),
        );
        let local = Arc::new(crate::local::LocalDisks::open(
            dir.join("run/local"),
            Arc::clone(&opened.disks),
        ));
        let db = atrest_dbservice::DbService::open(
            Arc::clone(&opened.kms),
            Arc::clone(&opened.disks),
            Arc::clone(&local) as Arc<dyn atrest_dbservice::Volumes>,
            atrest_dbservice::Config {
                pg_bin: None,
                uid_range: 70_000..=70_099,
                state_dir: data.join("db"),
                run_dir: dir.join("run/db"),
                backups: atrest_objstore::Objects::open(&atrest_objstore::StoreConfig {
                    url: format!("file://{}", data.join("objects").display()),
                    ..atrest_objstore::StoreConfig::default()
                })
                .unwrap(),
                legacy_backups: None,
                agent_program: dir.join("atrest"),
                on_key_loss: atrest_diskservice::Config::default().on_key_loss,
                check_interval: std::time::Duration::from_secs(3600),
                default_size: 1 << 30,
            },
        )
        .unwrap();
        let cluster = Arc::new(crate::cluster::Cluster::new(
            Arc::clone(&opened.kms_store),
            crate::cluster::node_identity(&data, Some("test")).unwrap(),
            "http://127.0.0.1:1".into(),
            None,
        ));
        let store: Arc<dyn atrest_store::Store> =
            Arc::new(atrest_store::RedbStore::open(&data.join("control.redb")).unwrap());
        let projects = Arc::new(atrest_control::Projects::new(
            store,
            Arc::clone(&opened.kms),
            Arc::clone(&opened.disks),
            Arc::clone(&db),
        ));
        let peers = Arc::new(
            crate::internal::Peers::new(
                &opened.kms.cluster_key().unwrap(),
                cluster.me().id.clone(),
                None,
            )
            .unwrap(),
        );
        let st = AppState {
            peers,
            kms: opened.kms,
            trail: opened.trail,
            body: crate::request::BodyLimits {
                max: 64 * 1024,
                timeout: std::time::Duration::from_secs(10),
            },
            signing_keys: atrest_sigv4::SigningKeyCache::new(),
            audit_dir: data.join("audit"),
            disks: opened.disks,
            local,
            db,
            projects,
            idempotency: crate::rest::idempotency::Idempotency::default(),
            cluster,
        };
        (Arc::new(st), admin)
    }

    /// Sends a request signed with `key` through the router.
    async fn call(
        st: &Arc<AppState>,
        key: &(String, Vec<u8>),
        method: Method,
        path: &str,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let uri: http::Uri = format!("http://localhost{path}").parse().unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::HOST, "localhost".parse().unwrap());
        headers.insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        if let Some(k) = idempotency_key {
            headers.insert("idempotency-key", k.parse().unwrap());
        }
        atrest_sigv4::sign(
            &method,
            &uri,
            &mut headers,
            body.as_bytes(),
            &atrest_sigv4::Credentials {
                access_key_id: &key.0,
                secret_access_key: &key.1,
            },
            &atrest_sigv4::Scope {
                region: "us-east-1",
                service: crate::REST_SERVICE,
                time: time::OffsetDateTime::now_utc(),
            },
        )
        .unwrap();
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(h) = req.headers_mut() {
            *h = headers;
        }
        let resp = crate::router::router(Arc::clone(st), None)
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_another_node_hosts_is_answered_with_that_node_and_only_to_its_account() {
        let dir = tempfile::tempdir().unwrap();
        let (st, admin) = state(dir.path());
        let account = st
            .kms
            .access_key(&admin.0)
            .unwrap()
            .unwrap()
            .account
            .clone();
        // Another node's record, as its heartbeat writes it.
        let other = crate::cluster::Cluster::new(
            Arc::clone(&st.cluster_store()),
            crate::cluster::NodeIdentity {
                id: "0f0f0f0f-0000-4000-8000-000000000002".into(),
                name: "node-b".into(),
            },
            "https://b.internal:7070".into(),
            Some("b.internal:10809".into()),
        );
        other
            .heartbeat(
                &[],
                vec![crate::cluster::HostedDisk {
                    id: "disk-00000000000000b1".into(),
                    account: account.as_str().to_owned(),
                }],
                vec![crate::cluster::HostedInstance {
                    id: "db-b1".into(),
                    name: "orders-b".into(),
                    account: account.as_str().to_owned(),
                }],
            )
            .unwrap();
        for path in [
            "/v1/disks/disk-00000000000000b1",
            "/v1/instances/orders-b",
            "/v1/instances/db-b1",
        ] {
            let (s, v) = call(&st, &admin, Method::GET, path, None, None).await;
            assert_eq!(s, StatusCode::MISDIRECTED_REQUEST, "{path}: {v}");
            assert_eq!(v["code"], "WrongNodeException", "{v}");
            let m = v["message"].as_str().unwrap();
            assert!(
                m.contains("node node-b")
                    && m.contains("https://b.internal:7070")
                    && m.contains("b.internal:10809"),
                "{m}"
            );
        }
        // What no node hosts stays not found; so does another account's.
        let (s, _) = call(
            &st,
            &admin,
            Method::GET,
            "/v1/disks/disk-00000000000000c1",
            None,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, v) = call(
            &st,
            &admin,
            Method::POST,
            "/v1/accounts",
            Some(json!({"id": "222233334444"})),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, v) = call(
            &st,
            &admin,
            Method::POST,
            "/v1/accounts/222233334444/access-keys",
            Some(json!({})),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let stranger = (
            v["access_key_id"].as_str().unwrap().to_owned(),
            v["secret_access_key"].as_str().unwrap().as_bytes().to_vec(),
        );
        for path in ["/v1/disks/disk-00000000000000b1", "/v1/instances/orders-b"] {
            let (s, v) = call(&st, &stranger, Method::GET, path, None, None).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {v}");
            assert!(!v.to_string().contains("node-b"), "{v}");
        }
        // The node list shows both nodes (admins).
        let (s, v) = call(&st, &admin, Method::GET, "/v1/nodes", None, None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let names: Vec<&str> = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"node-b"), "{v}");
        let (s, v) = call(&st, &stranger, Method::GET, "/v1/nodes", None, None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn db_and_project_endpoints_are_typed_authorized_and_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (st, admin) = state(dir.path());
        let account = st
            .kms
            .access_key(&admin.0)
            .unwrap()
            .unwrap()
            .account
            .clone();
        let account = account.as_str();

        // The database service: a list, a typed body, a name that names no
        // instance (authorized on its ARN first, then not found).
        let (s, v) = call(&st, &admin, Method::GET, "/v1/instances", None, None).await;
        assert_eq!((s, v), (StatusCode::OK, json!({"instances": []})));
        let bad = json!({"name": "orders", "port": "5432"});
        let (s, v) = call(&st, &admin, Method::POST, "/v1/instances", Some(bad), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(
            (v["code"].as_str(), v["message"].as_str()),
            (
                Some("SerializationException"),
                Some("'port' must be a number")
            )
        );
        let path = "/v1/instances/orders/start";
        let (s, v) = call(&st, &admin, Method::POST, path, Some(json!({"x": 1})), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .starts_with("unknown member 'x'"),
            "{v}"
        );
        let (s, v) = call(&st, &admin, Method::GET, "/v1/instances/orders", None, None).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("NotFoundException"))
        );

        // A user allowed one instance: that one gets past authorization
        // (and is not found), another is refused by its ARN.
        let users = format!("/v1/accounts/{account}/users");
        let (s, v) = call(
            &st,
            &admin,
            Method::POST,
            &users,
            Some(json!({"name": "reader"})),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let policy = json!({"document": {
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Action": "db:DescribeInstance",
                "Resource": format!("arn:aws:db:us-east-1:{account}:instance/orders"),
            }],
        }});
        let path = format!("{users}/reader/policies/orders");
        let (s, v) = call(&st, &admin, Method::PUT, &path, Some(policy), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let path = format!("/v1/accounts/{account}/access-keys");
        let (s, v) = call(
            &st,
            &admin,
            Method::POST,
            &path,
            Some(json!({"user": "reader"})),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let reader = (
            v["access_key_id"].as_str().unwrap().to_owned(),
            v["secret_access_key"].as_str().unwrap().as_bytes().to_vec(),
        );
        let (s, v) = call(
            &st,
            &reader,
            Method::GET,
            "/v1/instances/orders",
            None,
            None,
        )
        .await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("NotFoundException"))
        );
        // AccessDeniedException is a 403 on the REST API.
        let (s, v) = call(&st, &reader, Method::GET, "/v1/instances/other", None, None).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("AccessDeniedException")),
            "{v}"
        );
        let msg = v["message"].as_str().unwrap();
        assert!(
            msg.contains("db:DescribeInstance")
                && msg.contains(&format!("{account}:instance/other")),
            "{msg}"
        );
        let (s, v) = call(&st, &reader, Method::GET, "/v1/instances", None, None).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("AccessDeniedException"))
        );

        // The control plane: a create replayed by its idempotency key, a
        // create retried by its client token (200), its own paging.
        let body = json!({"name": "web", "client_token": "t-1"});
        let (s, first) = call(
            &st,
            &admin,
            Method::POST,
            "/v1/projects",
            Some(body.clone()),
            Some("k-1"),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{first}");
        let (s, again) = call(
            &st,
            &admin,
            Method::POST,
            "/v1/projects",
            Some(body.clone()),
            Some("k-1"),
        )
        .await;
        assert_eq!((s, &again), (StatusCode::CREATED, &first));
        let (s, retried) = call(&st, &admin, Method::POST, "/v1/projects", Some(body), None).await;
        assert_eq!(
            (s, retried["id"].as_str()),
            (StatusCode::OK, first["id"].as_str())
        );
        let (s, v) = call(&st, &reader, Method::GET, "/v1/projects", None, None).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("AccessDeniedException"))
        );
        let (s, v) = call(&st, &admin, Method::GET, "/v1/projects?limit=0", None, None).await;
        assert_eq!(
            (s, v["message"].as_str()),
            (
                StatusCode::BAD_REQUEST,
                Some("'limit' must be an integer from 1 to 1000")
            )
        );
        let (s, v) = call(&st, &admin, Method::GET, "/v1/projects?limit=1", None, None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["projects"][0]["id"], first["id"]);
        assert!(v.get("next_token").is_none(), "{v}");
    }
}
