//! The server in-process, driven over real HTTP with the signing client:
//! secrecy of the data dir, TLS, authentication errors, bad requests, data
//! dir locking, and refusal of plain HTTP off loopback.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use atrest_client::{Client, Credentials, load_shared_credentials};
use atrest_kms::root::RootSource;
use atrest_server::datadir::DataDirError;
use atrest_server::{Listener, RunningServer, ServerConfig, StartError, TlsError, TlsFiles};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http::{Method, StatusCode};
use serde_json::json;

fn config(dir: &Path, tls: Option<TlsFiles>) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls,
        allow_plaintext_remote: false,
        data_dir: dir.join("data"),
        admin_credentials: None,
        root: RootSource::KeyFile(dir.join("data.root.key")),
        regions: vec!["us-east-1".into(), "eu-west-1".into()],
        lifecycle_interval: Duration::from_secs(3600),
        lifecycle_clock_offset: time::Duration::ZERO,
        max_body_bytes: 64 * 1024,
        metrics_listen: None,
        audit: atrest_audit::Options::default(),
        audit_sync: atrest_server::config::AuditSync::default(),
        disks: atrest_diskservice::Config::default(),
        nbd: None,
        db: atrest_server::DbSettings::default(),
        providers: Default::default(),
        provider_check_interval: Duration::from_secs(60),
        access_key_use_flush: Duration::from_secs(60),
        connections: atrest_server::config::ConnectionLimits::default(),
        audit_refusal_interval: atrest_server::config::DEFAULT_AUDIT_REFUSAL_INTERVAL,
        object_store: None,
        region_object_stores: Vec::new(),
        cluster: atrest_server::ClusterSettings::default(),
        console: Some(atrest_console::Options::default()),
    }
}

fn admin_client(server: &RunningServer, dir: &Path, scheme: &str, ca: Option<&Path>) -> Client {
    let creds = load_shared_credentials(&dir.join("data.admin-credentials"), "default").unwrap();
    Client::new(
        &format!("{scheme}://{}", server.addr),
        creds,
        "us-east-1",
        ca,
    )
    .unwrap()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    vec![
        secret.to_vec(),
        B64.encode(secret).into_bytes(),
        hex::encode(secret).into_bytes(),
        hex::encode_upper(secret).into_bytes(),
    ]
}

/// Which of `needles` occur in `haystack`: one pass per distinct needle length.
fn found(haystack: &[u8], needles: &[Vec<u8>]) -> Vec<usize> {
    use std::collections::{BTreeMap, HashMap};
    let mut by_len: BTreeMap<usize, HashMap<&[u8], usize>> = BTreeMap::new();
    for (i, n) in needles.iter().enumerate() {
        by_len.entry(n.len()).or_default().insert(n, i);
    }
    let mut hits = Vec::new();
    for (len, set) in by_len {
        for w in haystack.windows(len) {
            if let Some(i) = set.get(w) {
                hits.push(*i);
            }
        }
    }
    hits
}

/// After 1,000 GenerateDataKey calls no file under the data dir holds a
/// returned plaintext, key material, the root key, or an access key secret
/// (outside the admin credentials file written for the operator).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_holds_no_plaintext_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = atrest_server::start(config(dir.path(), None))
        .await
        .unwrap();
    let c = admin_client(&server, dir.path(), "http", None);
    let key = c.kms("CreateKey", &json!({})).await.unwrap().json()["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_owned();
    // A rotation, so two versions of material exist.
    assert_eq!(
        c.kms("RotateKeyOnDemand", &json!({"KeyId": key}))
            .await
            .unwrap()
            .status,
        StatusCode::OK
    );
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    for i in 0..1000 {
        let r = c
            .kms("GenerateDataKey", &json!({"KeyId": key, "KeySpec": "AES_256", "EncryptionContext": {"n": i.to_string()}}))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        secrets.push(B64.decode(r.json()["Plaintext"].as_str().unwrap()).unwrap());
    }
    let material = server
        .kms
        .material_for_tests(&key.parse().unwrap())
        .unwrap();
    assert_eq!(material.len(), 2);
    secrets.extend(material);
    // Keys of the other kinds (issue 20): their private keys (PKCS#8) and
    // HMAC keys, used once each, and data key pairs' private keys.
    for (spec, usage, op, body) in [
        (
            "RSA_2048",
            "SIGN_VERIFY",
            "Sign",
            json!({"Message": "eA==", "SigningAlgorithm": "RSASSA_PSS_SHA_256"}),
        ),
        (
            "ECC_NIST_P256",
            "SIGN_VERIFY",
            "Sign",
            json!({"Message": "eA==", "SigningAlgorithm": "ECDSA_SHA_256"}),
        ),
        (
            "HMAC_256",
            "GENERATE_VERIFY_MAC",
            "GenerateMac",
            json!({"Message": "eA==", "MacAlgorithm": "HMAC_SHA_256"}),
        ),
    ] {
        let made = c
            .kms("CreateKey", &json!({"KeySpec": spec, "KeyUsage": usage}))
            .await
            .unwrap();
        assert_eq!(made.status, StatusCode::OK, "{:?}", made.body);
        let id = made.json()["KeyMetadata"]["KeyId"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut body = body;
        body["KeyId"] = json!(id);
        let used = c.kms(op, &body).await.unwrap();
        assert_eq!(used.status, StatusCode::OK, "{:?}", used.body);
        let material = server.kms.material_for_tests(&id.parse().unwrap()).unwrap();
        assert_eq!(material.len(), 1, "{spec}");
        secrets.extend(material);
    }
    for spec in ["RSA_2048", "ECC_NIST_P384"] {
        let r = c
            .kms(
                "GenerateDataKeyPair",
                &json!({"KeyId": key, "KeyPairSpec": spec}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        secrets.push(
            B64.decode(r.json()["PrivateKeyPlaintext"].as_str().unwrap())
                .unwrap(),
        );
    }
    secrets.push(server.kms.root_key_for_tests());
    let admin_secret = {
        let creds =
            load_shared_credentials(&dir.path().join("data.admin-credentials"), "default").unwrap();
        creds.secret_access_key.expose().to_vec()
    };
    server.shutdown().await;

    let files = files_under(&dir.path().join("data"));
    assert!(files.iter().any(|f| f.ends_with("kms.redb")), "{files:?}");
    let needles: Vec<Vec<u8>> = secrets.iter().flat_map(|s| forms(s)).collect();
    let mut scanned = 0;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        scanned += bytes.len();
        assert_eq!(
            found(&bytes, &needles),
            Vec::<usize>::new(),
            "{} holds a secret",
            f.display()
        );
        // The admin's credentials are beside the data dir, not in it.
        assert!(
            found(&bytes, std::slice::from_ref(&admin_secret)).is_empty(),
            "{} holds the access key secret",
            f.display()
        );
    }
    let beside = dir.path().join("data.admin-credentials");
    assert!(
        !found(
            &std::fs::read(&beside).unwrap(),
            std::slice::from_ref(&admin_secret)
        )
        .is_empty(),
        "the credentials file beside the data dir holds the secret"
    );
    // The scan itself can find what it looks for.
    let planted = [b"prefix".as_slice(), &needles[7], b"suffix"].concat();
    assert_eq!(found(&planted, &needles), vec![7]);
    assert!(scanned > 10_000, "scanned only {scanned} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let (cert, key, ca_file) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let server = atrest_server::start(config(dir.path(), Some(TlsFiles { cert, key })))
        .await
        .unwrap();
    let c = admin_client(&server, dir.path(), "https", Some(&ca_file));
    let r = c
        .kms("GenerateRandom", &json!({"NumberOfBytes": 16}))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    // Plain HTTP to the TLS port does not get an answer.
    let plain = admin_client(&server, dir.path(), "http", None);
    assert!(
        plain
            .kms("GenerateRandom", &json!({"NumberOfBytes": 16}))
            .await
            .is_err()
    );
    // A client that does not trust the CA cannot connect.
    let untrusting = admin_client(&server, dir.path(), "https", None);
    assert!(
        untrusting
            .kms("GenerateRandom", &json!({"NumberOfBytes": 16}))
            .await
            .is_err()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_and_request_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = atrest_server::start(config(dir.path(), None))
        .await
        .unwrap();
    let c = admin_client(&server, dir.path(), "http", None);
    let endpoint = format!("http://{}", server.addr);
    let creds =
        load_shared_credentials(&dir.path().join("data.admin-credentials"), "default").unwrap();

    let wrong_secret = Client::new(
        &endpoint,
        Credentials {
            access_key_id: creds.access_key_id.clone(),
            secret_access_key: atrest_client::secret("not-the-secret-at-all"),
        },
        "us-east-1",
        None,
    )
    .unwrap();
    let unknown = Client::new(
        &endpoint,
        Credentials {
            access_key_id: "AKIAUNKNOWNUNKNOWN00".into(),
            secret_access_key: atrest_client::secret("whatever-secret-value"),
        },
        "us-east-1",
        None,
    )
    .unwrap();
    for (client, want) in [
        (&wrong_secret, "InvalidSignatureException"),
        (&unknown, "UnrecognizedClientException"),
        (&c.with_region("ap-south-1"), "InvalidSignatureException"),
    ] {
        let r = client.kms("ListKeys", &json!({})).await.unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.error_type().as_deref(), Some(want));
    }
    // The second served region works and is separate.
    let eu = c.with_region("eu-west-1");
    assert_eq!(
        eu.kms("CreateKey", &json!({})).await.unwrap().status,
        StatusCode::OK
    );
    assert_eq!(
        c.kms("ListKeys", &json!({})).await.unwrap().json()["Keys"],
        json!([])
    );

    for (op, body, status, want) in [
        (
            "NoSuchOperation",
            "{}".to_owned(),
            400,
            "UnknownOperationException",
        ),
        (
            "ListKeys",
            "{not json".to_owned(),
            400,
            "SerializationException",
        ),
        (
            "ListKeys",
            "[1,2]".to_owned(),
            400,
            "SerializationException",
        ),
        (
            "GenerateRandom",
            r#"{"NumberOfBytes":"eight"}"#.to_owned(),
            400,
            "SerializationException",
        ),
        (
            "GenerateRandom",
            r#"{"NumberOfBytes":100000}"#.to_owned(),
            400,
            "ValidationException",
        ),
        (
            "Encrypt",
            format!(r#"{{"KeyId":"x","Plaintext":"{}"}}"#, "A".repeat(70_000)),
            400,
            "ValidationException",
        ),
    ] {
        let r = c.kms_raw(op, body.into()).await.unwrap();
        assert_eq!(r.status.as_u16(), status, "{op}: {:?}", r.body);
        assert_eq!(r.error_type().as_deref(), Some(want), "{op}");
    }
    // An oversized body closes the connection, so the client's pool does not
    // reuse it; the next requests on the same client succeed (repeatedly).
    for _ in 0..20 {
        let big = format!(r#"{{"Description":"{}"}}"#, "x".repeat(70_000));
        let r = c.kms_raw("CreateKey", big.into()).await.unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let ok = c.kms("ListKeys", &json!({})).await.unwrap();
        assert_eq!(ok.status, StatusCode::OK);
    }
    // The admin API refuses a non-admin account.
    let made = c
        .rest(
            Method::POST,
            "/v1/accounts",
            Some(&json!({"id": "123456789012"})),
        )
        .await
        .unwrap();
    assert_eq!(made.status, StatusCode::CREATED);
    let key = c
        .rest(Method::POST, "/v1/accounts/123456789012/access-keys", None)
        .await
        .unwrap()
        .json();
    let user = Client::new(
        &endpoint,
        Credentials {
            access_key_id: key["access_key_id"].as_str().unwrap().to_owned(),
            secret_access_key: atrest_client::secret(key["secret_access_key"].as_str().unwrap()),
        },
        "us-east-1",
        None,
    )
    .unwrap();
    let denied = user
        .rest(Method::POST, "/v1/accounts", Some(&json!({})))
        .await
        .unwrap();
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.json()["code"], "AccessDeniedException");
    // REST calls signed for the KMS service name are refused.
    let r = user.kms("ListKeys", &json!({})).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let nowhere = c.rest(Method::GET, "/v1/nothing-here", None).await.unwrap();
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_per_data_dir_and_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let server = atrest_server::start(config(dir.path(), None))
        .await
        .unwrap();
    let c = admin_client(&server, dir.path(), "http", None);
    let blob = {
        let key =
            c.kms("CreateKey", &json!({})).await.unwrap().json()["KeyMetadata"]["KeyId"].clone();
        c.kms(
            "Encrypt",
            &json!({"KeyId": key, "Plaintext": B64.encode(b"persist")}),
        )
        .await
        .unwrap()
        .json()["CiphertextBlob"]
            .clone()
    };
    let second = atrest_server::start(config(dir.path(), None)).await;
    let err = second
        .err()
        .expect("a second server on the same data dir must fail");
    assert!(
        matches!(
            err,
            StartError::DataDir(DataDirError::Store(atrest_store::StoreError::Locked(_)))
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    server.shutdown().await;

    let server = atrest_server::start(config(dir.path(), None))
        .await
        .unwrap();
    assert!(server.bootstrap.is_none(), "the admin is created once");
    let c = admin_client(&server, dir.path(), "http", None);
    let back = c
        .kms("Decrypt", &json!({"CiphertextBlob": blob}))
        .await
        .unwrap()
        .json();
    assert_eq!(
        B64.decode(back["Plaintext"].as_str().unwrap()).unwrap(),
        b"persist"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn plain_http_off_loopback_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    cfg.listen = "0.0.0.0:0".parse().unwrap();
    let err = atrest_server::start(cfg).await.err().expect("must refuse");
    assert!(matches!(err, StartError::PlaintextRemote { .. }), "{err:?}");
    assert!(err.to_string().contains("not a loopback address"), "{err}");
    assert!(!dir.path().join("data").exists(), "nothing was created");
}

/// Each way of failing to start is its own variant, and its message says
/// what failed, where, and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_errors_are_typed_and_say_why() {
    let dir = tempfile::tempdir().unwrap();

    // A missing certificate: the HTTP listener's TLS, naming the file.
    let missing = dir.path().join("missing.pem");
    let cfg = config(
        dir.path(),
        Some(TlsFiles {
            cert: missing.clone(),
            key: missing.clone(),
        }),
    );
    let err = atrest_server::start(cfg).await.err().expect("must refuse");
    assert!(
        matches!(
            &err,
            StartError::Tls {
                listener: Listener::Http,
                error: TlsError::ReadCertificate { path, .. },
            } if *path == missing
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("missing.pem"), "{msg}");
    assert!(msg.contains("No such file"), "{msg}");

    // An address in use: the I/O error is kept, kind and message.
    // (Each case has a data dir of its own: a start that failed after
    // opening one may leave it locked until its background tasks end.)
    let busy_dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = config(busy_dir.path(), None);
    cfg.listen = taken.local_addr().unwrap();
    let err = atrest_server::start(cfg).await.err().expect("must refuse");
    match &err {
        StartError::Bind {
            listener: Listener::Http,
            addr,
            error,
        } => {
            assert_eq!(*addr, taken.local_addr().unwrap());
            assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
        }
        other => panic!("expected a bind error: {other:?}"),
    }
    assert!(err.to_string().contains("Address already in use"), "{err}");

    // NBD: plaintext off loopback, a principal that is not one, no TLS.
    let nbd_dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let nbd = |case: usize, listen: &str, principal: Option<&str>| {
        let mut cfg = config(nbd_dirs[case].path(), None);
        cfg.nbd = Some(atrest_server::nbd::NbdConfig {
            listen: listen.parse().unwrap(),
            tls: None,
            plaintext_principal: principal.map(str::to_owned),
        });
        cfg
    };
    let root = "arn:aws:iam::111122223333:root";
    let err = atrest_server::start(nbd(0, "0.0.0.0:0", Some(root)))
        .await
        .err()
        .expect("must refuse");
    assert!(
        matches!(err, StartError::NbdPlaintextRemote { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("loopback"), "{err}");
    let err = atrest_server::start(nbd(1, "127.0.0.1:0", Some("alice")))
        .await
        .err()
        .expect("must refuse");
    assert!(
        matches!(&err, StartError::NbdPrincipal { principal } if principal == "alice"),
        "{err:?}"
    );
    let err = atrest_server::start(nbd(2, "127.0.0.1:0", None))
        .await
        .err()
        .expect("must refuse");
    assert!(matches!(err, StartError::NbdWithoutTls), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_key_life_cycle_reaches_authentication_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = atrest_server::start(config(dir.path(), None))
        .await
        .unwrap();
    let admin = admin_client(&server, dir.path(), "http", None);
    let endpoint = format!("http://{}", server.addr);
    let r = admin
        .rest(
            Method::POST,
            "/v1/accounts",
            Some(&json!({"id": "123456789012"})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED);
    let key = admin
        .rest(Method::POST, "/v1/accounts/123456789012/access-keys", None)
        .await
        .unwrap()
        .json();
    let id = key["access_key_id"].as_str().unwrap().to_owned();
    let user = Client::new(
        &endpoint,
        Credentials {
            access_key_id: id.clone(),
            secret_access_key: atrest_client::secret(key["secret_access_key"].as_str().unwrap()),
        },
        "us-east-1",
        None,
    )
    .unwrap();
    let kms_status = || async { user.kms("ListKeys", &json!({})).await.unwrap() };
    let rest_status = || async {
        user.rest(Method::GET, "/v1/accounts/123456789012/access-keys", None)
            .await
            .unwrap()
    };
    // Used (so its signing key and its state are cached) before each change.
    assert_eq!(kms_status().await.status, StatusCode::OK);
    let listed = admin
        .rest(Method::GET, "/v1/accounts/123456789012/access-keys", None)
        .await
        .unwrap()
        .json();
    let last = &listed["access_keys"][0]["last_used"];
    assert_eq!(last["service"], "kms", "{listed}");
    assert_eq!(last["region"], "us-east-1", "{listed}");
    assert_eq!(listed["access_keys"][0]["status"], "Active");

    let path = format!("/v1/accounts/123456789012/access-keys/{id}");
    let r = admin
        .rest(Method::POST, &format!("{path}/deactivate"), None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "Inactive");
    let r = kms_status().await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.error_type().as_deref(),
        Some("UnrecognizedClientException")
    );
    assert_eq!(rest_status().await.status, StatusCode::UNAUTHORIZED);

    let r = admin
        .rest(Method::POST, &format!("{path}/activate"), None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(kms_status().await.status, StatusCode::OK);
    assert_eq!(rest_status().await.status, StatusCode::OK);

    let r = admin.rest(Method::DELETE, &path, None).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    assert_eq!(r.json()["deleted"], id.as_str());
    let r = kms_status().await;
    assert_eq!(
        r.error_type().as_deref(),
        Some("UnrecognizedClientException")
    );
    assert_eq!(rest_status().await.status, StatusCode::UNAUTHORIZED);

    // The operator cannot lock itself out.
    let creds =
        load_shared_credentials(&dir.path().join("data.admin-credentials"), "default").unwrap();
    let accounts = admin
        .rest(Method::GET, "/v1/accounts", None)
        .await
        .unwrap()
        .json();
    let admin_account = accounts["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["admin"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = admin
        .rest(
            Method::DELETE,
            &format!(
                "/v1/accounts/{admin_account}/access-keys/{}",
                creds.access_key_id
            ),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.json()["code"], "ConflictException");
    server.shutdown().await;
}

#[tokio::test]
async fn admin_credentials_are_kept_out_of_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    cfg.admin_credentials = Some(dir.path().join("data/sub/creds"));
    let err = atrest_server::start(cfg).await.err().expect("must refuse");
    assert!(
        matches!(&err, StartError::DataDir(DataDirError::Credentials(m)) if m.contains("inside the data dir")),
        "{err}"
    );
    assert!(!dir.path().join("data").exists(), "nothing was created");

    // An earlier release's file in the data dir is moved out at start.
    let server = atrest_server::start(config(dir.path(), None))
        .await
        .unwrap();
    server.shutdown().await;
    let beside = dir.path().join("data.admin-credentials");
    let legacy = dir.path().join("data/admin-credentials");
    std::fs::rename(&beside, &legacy).unwrap();
    let server = atrest_server::start(config(dir.path(), None))
        .await
        .unwrap();
    assert!(!legacy.exists());
    let c = admin_client(&server, dir.path(), "http", None);
    assert_eq!(
        c.kms("GenerateRandom", &json!({"NumberOfBytes": 8}))
            .await
            .unwrap()
            .status,
        StatusCode::OK
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&beside).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    server.shutdown().await;
}
