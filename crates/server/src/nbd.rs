//! Disks over NBD (D3, D4): the exports of a connection are the disks its
//! principal may attach. STARTTLS uses rustls for certificates and OpenSSL
//! (`atrest-tlspsk`) for pre-shared keys, which rustls does not implement.
//!
//! Who a client is:
//! - a client certificate signed by `--nbd-tls-client-ca`: the principal
//!   ARN in its first `arn:` URI subject alternative name, or else in its
//!   subject common name;
//! - a pre-shared key: the PSK identity is an access key id, and the key is
//!   derived from that access key's secret (`atrest nbd psk`), so the
//!   client is the access key's user, and deactivating the access key
//!   stops it;
//! - no TLS (only on loopback, only when configured): the principal given
//!   by `--nbd-plaintext-principal`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use atrest_diskservice::{DiskService, ServiceError};
use atrest_kms::{Caller, KeyService, KmsError};
use atrest_nbd::server::{
    self, Backend, BoxStream, ClientIdentity, Export, ExportInfo, IoError, Refused, Session,
    StartTls, TlsFuture,
};
use atrest_nbd::transmit::errno;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::AsyncReadExt;
use zeroize::Zeroizing;

use crate::start_error::{Listener, StartError};
use crate::tls::TlsError;

/// The NBD listener's configuration.
#[derive(Debug, Clone)]
pub struct NbdConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// TLS, if offered.
    pub tls: Option<NbdTls>,
    /// Accept plaintext connections (loopback only), acting as this
    /// principal (`arn:aws:iam::ACCOUNT:root` or `...:user/NAME`, or
    /// [`ADMIN`] for the root of the admin account the first start
    /// created). Without it, TLS is required.
    pub plaintext_principal: Option<String>,
}

/// The NBD listener's TLS.
#[derive(Debug, Clone)]
pub struct NbdTls {
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA certificates (PEM) that sign client certificates; without it,
    /// clients authenticate with pre-shared keys only.
    pub client_ca: Option<PathBuf>,
}

/// The context a PSK is derived under from an access key's secret.
const PSK_CONTEXT: &[u8] = b"atrest nbd tls-psk v1";

/// The TLS pre-shared key of an access key: HMAC-SHA256 of a fixed context
/// under the secret access key (what `atrest nbd psk` prints for qemu).
#[must_use]
pub fn psk_for_secret(secret: &[u8]) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(atrest_crypto::hash::hmac_sha256(secret, PSK_CONTEXT).to_vec())
}

/// Parses `arn:aws:iam::ACCOUNT:root` or `arn:aws:iam::ACCOUNT:user/NAME`
/// into a caller in `region`.
pub fn principal_caller(arn: &str, region: &str) -> Option<Caller> {
    let rest = arn.strip_prefix("arn:aws:iam::")?;
    let (account, who) = rest.split_once(':')?;
    let account = atrest_kms::names::AccountId::parse(account)?;
    if who == "root" {
        return Some(Caller::root(account, region));
    }
    let name = who.strip_prefix("user/")?;
    let valid = !name.is_empty()
        && name.len() <= 512
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c));
    valid.then(|| Caller::user(account, region, name))
}

/// What `--nbd-plaintext-principal` takes for the root of the admin
/// account the first start created (whose id is random).
pub const ADMIN: &str = "admin";

/// The checks of `config` that need nothing but it, made before the data
/// dir is opened: plaintext only on loopback and as a principal atrest
/// knows the form of, TLS otherwise.
pub(crate) fn check(config: &NbdConfig) -> Result<(), StartError> {
    if let Some(p) = &config.plaintext_principal {
        if !config.listen.ip().is_loopback() {
            return Err(StartError::NbdPlaintextRemote {
                listen: config.listen,
            });
        }
        if p != ADMIN && principal_caller(p, "").is_none() {
            return Err(StartError::NbdPrincipal {
                principal: p.clone(),
            });
        }
    } else if config.tls.is_none() {
        return Err(StartError::NbdWithoutTls);
    }
    Ok(())
}

/// Starts the NBD listener; it serves until `stopped` turns true.
/// `config` has passed [`check`] (before the data dir was opened).
pub(crate) async fn start(
    config: &NbdConfig,
    kms: Arc<KeyService>,
    disks: Arc<DiskService>,
    cluster: Arc<crate::cluster::Cluster>,
    (limits, stats): (crate::config::ConnectionLimits, Arc<atrest_listen::Stats>),
    stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), StartError> {
    let plaintext = match config.plaintext_principal.as_deref() {
        Some(ADMIN) => {
            let account = kms
                .first_admin_account()
                .map_err(|e| StartError::DataDir(crate::datadir::DataDirError::Kms(e.to_string())))?
                .ok_or_else(|| StartError::NbdPrincipal {
                    principal: ADMIN.to_owned(),
                })?;
            Some(format!("arn:aws:iam::{account}:root"))
        }
        other => other.map(str::to_owned),
    };
    let tls: Option<Arc<dyn StartTls>> = match &config.tls {
        Some(t) => Some(Arc::new(Tls::new(t, Arc::clone(&kms)).map_err(
            |error| StartError::Tls {
                listener: Listener::Nbd,
                error,
            },
        )?)),
        None => None,
    };
    let nbd_config = Arc::new(server::Config {
        tls_required: config.plaintext_principal.is_none(),
        tls,
        negotiation_timeout: limits.nbd_negotiation_timeout,
        limits: limits.limits,
        ..server::Config::default()
    });
    let backend: Arc<dyn Backend> = Arc::new(DiskExports {
        kms,
        disks,
        plaintext,
        cluster: Some(cluster),
    });
    let bind = |error| StartError::Bind {
        listener: Listener::Nbd,
        addr: config.listen,
        error,
    };
    let listener = atrest_listen::bind(config.listen).map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    tracing::info!(%addr, tls = config.tls.is_some(), tls_required = nbd_config.tls_required, "NBD serving");
    let task = tokio::spawn(server::serve(listener, nbd_config, backend, stats, stopped));
    Ok((addr, task))
}

/// The disk service as NBD exports.
struct DiskExports {
    kms: Arc<KeyService>,
    disks: Arc<DiskService>,
    plaintext: Option<String>,
    /// The other nodes: a disk one of them hosts is refused naming it.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

fn refused(e: ServiceError) -> Refused {
    use atrest_disk::DiskError;
    let msg = e.to_string();
    match e {
        ServiceError::Disk(DiskError::NotFound { .. }) => Refused::Unknown(msg),
        ServiceError::Kms(KmsError::NotFound(_)) => Refused::Unknown(msg),
        // It exists and is the client's account's, but a service of
        // atrest manages it (an instance's disk): refused, saying whose.
        ServiceError::Managed { .. } => Refused::Policy(msg),
        e if e.is_server_fault() => Refused::Failed(msg),
        _ => Refused::Policy(msg),
    }
}

impl DiskExports {
    /// The caller a session acts as, in `region`.
    fn caller(&self, s: &Session, region: &str) -> Result<Caller, Refused> {
        let unknown = |what: String| Refused::Policy(what);
        match &s.identity {
            ClientIdentity::Certificate(arn) => principal_caller(arn, region).ok_or_else(|| {
                unknown(format!(
                    "the client certificate names {arn}, which is not an atrest principal ARN"
                ))
            }),
            // The key's current state again (the handshake checked it
            // too): an in-memory lookup that every change invalidates.
            ClientIdentity::Psk(akid) => match self.kms.access_key(akid) {
                Ok(Some(k)) if k.active => {
                    self.kms
                        .note_access_key_use(akid, atrest_kms::AccessKeyUse::Nbd, region);
                    Ok(k.caller(region))
                }
                Ok(_) => Err(unknown(format!("access key {akid} is not active"))),
                Err(e) => Err(Refused::Failed(e.to_string())),
            },
            ClientIdentity::None => match &self.plaintext {
                Some(p) if s.peer.ip().is_loopback() => principal_caller(p, region)
                    .ok_or_else(|| Refused::Failed(format!("bad plaintext principal {p}"))),
                _ => Err(unknown(
                    "the client did not authenticate: use a client certificate or a pre-shared key"
                        .into(),
                )),
            },
        }
    }

    /// Authorizes `action` (`disk:AttachDisk`, ...) on `resource` for the
    /// session's principal, with its identity policies, as the REST API
    /// does: a user may attach over NBD only what a policy allows it to.
    fn authorize(&self, caller: &Caller, action: &str, resource: &str) -> Result<(), Refused> {
        let meta = atrest_kms::RequestMeta::in_process();
        let call = atrest_kms::Call::new(caller, &meta);
        self.kms
            .authorize_action(&call, action, resource, &[])
            .map_err(|e| refused(ServiceError::Kms(e)))
    }

    fn disk_arn(caller: &Caller, disk: &str) -> String {
        format!(
            "arn:aws:disk:{}:{}:disk/{disk}",
            caller.region, caller.account
        )
    }

    fn caller_for_disk(&self, s: &Session, name: &str) -> Result<Caller, Refused> {
        if name.is_empty() {
            return Err(Refused::Unknown(
                "there is no default export: give a disk id as the export name".into(),
            ));
        }
        let region = match self.disks.disk_region(name) {
            Ok(r) => r,
            Err(e) => return Err(self.elsewhere(s, name).unwrap_or_else(|| refused(e))),
        };
        self.caller(s, &region)
    }

    /// If another node hosts disk `name` of the session's account: the
    /// refusal that names that node.
    fn elsewhere(&self, s: &Session, name: &str) -> Option<Refused> {
        let host = self.cluster.as_ref()?.disk_host(name)?;
        let region = self.kms.regions().first()?;
        let caller = self.caller(s, region).ok()?;
        host.disks
            .iter()
            .any(|d| d.id == name && d.account == caller.account.as_str())
            .then(|| {
                Refused::Unknown(crate::cluster::Cluster::elsewhere(
                    &format!("disk {name}"),
                    &host,
                ))
            })
    }
}

impl Backend for DiskExports {
    fn list(&self, s: &Session) -> Result<Vec<String>, Refused> {
        let mut out = Vec::new();
        for region in self.kms.regions() {
            let caller = self.caller(s, region)?;
            self.authorize(&caller, "disk:ListDisks", "*")?;
            let disks = self.disks.list_disks(&caller).map_err(refused)?;
            out.extend(disks.into_iter().map(|d| d.id));
        }
        Ok(out)
    }

    fn describe(&self, s: &Session, name: &str) -> Result<ExportInfo, Refused> {
        let caller = self.caller_for_disk(s, name)?;
        self.authorize(&caller, "disk:DescribeDisk", &Self::disk_arn(&caller, name))?;
        let d = self.disks.describe_disk(&caller, name).map_err(refused)?;
        Ok(ExportInfo {
            size: d.size,
            block_size: d.block_size,
            read_only: false,
            multi_conn: true,
            description: describe(&d.id, d.key_arn.as_deref()),
        })
    }

    fn open(&self, s: &Session, name: &str) -> Result<Arc<dyn Export>, Refused> {
        let caller = self.caller_for_disk(s, name)?;
        self.authorize(&caller, "disk:AttachDisk", &Self::disk_arn(&caller, name))?;
        let holder = format!("{} at {}", caller.principal_arn(), s.peer.ip());
        let att = self
            .disks
            .attach_as(&caller, name, &holder)
            .map_err(refused)?;
        let io = |e: ServiceError| Refused::Failed(e.to_string());
        let info = ExportInfo {
            size: att.size().map_err(io)?,
            block_size: att.block_size().map_err(io)?,
            read_only: false,
            // Every connection to a disk shares its one open handle, and a
            // flush makes the whole engine durable: a flush on any
            // connection covers writes completed on all of them.
            multi_conn: true,
            description: describe(name, None),
        };
        Ok(Arc::new(DiskExport { att, info }))
    }
}

fn describe(id: &str, key: Option<&str>) -> String {
    match key {
        Some(k) => format!("atrest disk {id}, encrypted under {k}"),
        None => format!("atrest disk {id}"),
    }
}

/// An attached disk as an NBD export.
struct DiskExport {
    att: atrest_diskservice::Attachment,
    info: ExportInfo,
}

/// The reply to a failed I/O on a disk: `ESHUTDOWN` for a disk closed
/// because its key was lost, else the errno of the error's kind
/// ([`ServiceError::io_kind`] through [`errno::of_kind`]: a full pool is
/// `ENOSPC`, a range outside the disk `EINVAL`, the rest mostly `EIO`).
fn io_error(e: ServiceError) -> IoError {
    let errno = match &e {
        ServiceError::Closed { .. } => errno::ESHUTDOWN,
        e => errno::of_kind(e.io_kind()),
    };
    IoError {
        errno,
        message: e.to_string(),
    }
}

impl Export for DiskExport {
    fn info(&self) -> ExportInfo {
        self.info.clone()
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.att.read(offset, buf).map_err(io_error)
    }

    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), IoError> {
        self.att.write(offset, data, fua).map_err(io_error)
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), IoError> {
        self.att.trim(offset, len).map_err(io_error)?;
        if fua {
            self.att.flush().map_err(io_error)?;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), IoError> {
        self.att.write_zeroes(offset, len, fua).map_err(io_error)
    }

    fn flush(&self) -> Result<(), IoError> {
        self.att.flush().map_err(io_error)
    }
}

/// STARTTLS: a PSK ClientHello goes to OpenSSL, any other to rustls.
struct Tls {
    rustls: tokio_rustls::TlsAcceptor,
    psk: atrest_tlspsk::PskAcceptor,
}

/// PSKs of access keys, looked up at every handshake in the key service's
/// current state: a deactivated or deleted key's PSK opens no new
/// connection from the moment of the change.
struct AccessKeyPsk(Arc<KeyService>);

impl atrest_tlspsk::PskLookup for AccessKeyPsk {
    fn key(&self, identity: &str) -> Option<Zeroizing<Vec<u8>>> {
        match self.0.access_key(identity) {
            Ok(Some(k)) if k.active => Some(psk_for_secret(k.secret())),
            _ => None,
        }
    }
}

impl Tls {
    fn new(t: &NbdTls, kms: Arc<KeyService>) -> Result<Self, TlsError> {
        let (certs, key) = crate::tls::load(&crate::tls::TlsFiles {
            cert: t.cert.clone(),
            key: t.key.clone(),
        })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Versions)?;
        let builder = match &t.client_ca {
            Some(ca) => {
                let path = || ca.clone();
                let mut roots = rustls::RootCertStore::empty();
                for c in
                    CertificateDer::pem_file_iter(ca).map_err(|error| TlsError::ReadClientCa {
                        path: path(),
                        error,
                    })?
                {
                    let c = c.map_err(|error| TlsError::ParseClientCa {
                        path: path(),
                        error,
                    })?;
                    roots.add(c).map_err(|error| TlsError::ClientCa {
                        path: path(),
                        error,
                    })?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|error| TlsError::ClientVerifier {
                    path: path(),
                    error,
                })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(TlsError::KeyMismatch)?;
        let psk =
            atrest_tlspsk::PskAcceptor::new(Arc::new(AccessKeyPsk(kms))).map_err(TlsError::Psk)?;
        Ok(Self {
            rustls: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            psk,
        })
    }
}

/// The most a ClientHello may take before it is routed.
const MAX_HELLO: usize = 64 << 10;

impl StartTls for Tls {
    fn handshake(&self, mut stream: BoxStream) -> TlsFuture {
        let (rustls, psk) = (self.rustls.clone(), self.psk.clone());
        Box::pin(async move {
            let mut head = Vec::new();
            let offers_psk = loop {
                if let Some(r) = atrest_tlspsk::client_hello_offers_psk(&head) {
                    break r.map_err(|e| {
                        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
                    })?;
                }
                if head.len() >= MAX_HELLO {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the ClientHello is too long",
                    ));
                }
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                head.extend_from_slice(&buf[..n]);
            };
            let stream = atrest_tlspsk::Rewind::new(head, stream);
            if offers_psk {
                let (s, identity) = psk.accept(stream).await.map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::PermissionDenied, e.to_string())
                })?;
                return Ok((Box::new(s) as BoxStream, ClientIdentity::Psk(identity)));
            }
            let s = rustls.accept(stream).await?;
            let identity = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map_or(ClientIdentity::None, |leaf| {
                    cert_principal(leaf.as_ref())
                        .map_or(ClientIdentity::None, ClientIdentity::Certificate)
                });
            Ok((Box::new(s) as BoxStream, identity))
        })
    }
}

/// The principal ARN a client certificate carries: its first URI subject
/// alternative name that is an ARN, or else its subject common name.
fn cert_principal(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(u) = n
                && u.starts_with("arn:")
            {
                return Some((*u).to_owned());
            }
        }
    }
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_arns_parse_strictly() {
        let c = principal_caller("arn:aws:iam::123456789012:root", "r1").unwrap();
        assert!(c.is_root());
        assert_eq!(c.region, "r1");
        let u = principal_caller("arn:aws:iam::123456789012:user/ops/alice", "r1").unwrap();
        assert_eq!(
            u.principal_arn(),
            "arn:aws:iam::123456789012:user/ops/alice"
        );
        for bad in [
            "",
            "arn:aws:iam::12345678901:root",
            "arn:aws:iam::123456789012:role/x",
            "arn:aws:iam::123456789012:user/",
            "arn:aws:iam::123456789012:user/a b",
            "arn:aws:kms::123456789012:root",
        ] {
            assert!(principal_caller(bad, "r1").is_none(), "{bad}");
        }
    }

    /// A managed disk (an instance's) is not among a client's exports,
    /// and asking for it is refused by policy, saying whose it is; the
    /// client's own disk is listed and opens.
    #[test]
    fn managed_disks_are_not_exported_and_refused_by_policy() {
        let dir = tempfile::tempdir().unwrap();
        let kms = Arc::new(
            KeyService::open(
                Arc::new(atrest_store::MemoryStore::new()),
                atrest_kms::root::RootKey::from_key(atrest_crypto::Aes256Key::generate().unwrap()),
                vec!["r1".to_owned()],
                Arc::new(atrest_kms::clock::SystemClock),
            )
            .unwrap(),
        );
        let engine = atrest_disk::Engine::open(
            Arc::new(atrest_store::MemoryStore::new()),
            Arc::new(atrest_disk::FileStorage::open(&dir.path().join("pool")).unwrap()),
        )
        .unwrap();
        let disks = DiskService::start(
            Arc::clone(&kms),
            engine,
            atrest_diskservice::Config::default(),
        )
        .unwrap();
        let principal = "arn:aws:iam::111122223333:root";
        let alice = principal_caller(principal, "r1").unwrap();
        let plain = atrest_diskservice::NewDisk {
            size: 1 << 20,
            encrypted: Some(false),
            ..Default::default()
        };
        let mine = disks.create_disk(&alice, &plain).unwrap();
        let instance = "instance orders (db-0123456789abcdef)";
        let theirs = disks
            .managed("db")
            .create_disk(&alice, instance, &plain)
            .unwrap();
        let exports = DiskExports {
            kms,
            disks: Arc::clone(&disks),
            plaintext: Some(principal.to_owned()),
            cluster: None,
        };
        let session = Session {
            peer: "127.0.0.1:40000".parse().unwrap(),
            tls: false,
            identity: ClientIdentity::None,
        };
        assert_eq!(exports.list(&session).unwrap(), vec![mine.id.clone()]);
        exports.describe(&session, &mine.id).unwrap();
        drop(exports.open(&session, &mine.id).unwrap());
        let refusals = [
            exports.describe(&session, &theirs.id).map(drop),
            exports.open(&session, &theirs.id).map(drop),
        ];
        for r in refusals {
            match r {
                Err(Refused::Policy(m)) => {
                    assert!(m.contains(&theirs.id), "{m}");
                    assert!(m.contains(instance), "{m}");
                    assert!(m.contains("atrest's db service"), "{m}");
                }
                other => panic!("a managed export must be refused by policy: {other:?}"),
            }
        }
    }

    /// A pool whose writes fail as a full file system's do (`ENOSPC`,
    /// which std reads as `ErrorKind::StorageFull`) while `full` is set.
    struct FillingPool {
        file: atrest_disk::FileStorage,
        full: std::sync::atomic::AtomicBool,
    }

    impl atrest_disk::Storage for FillingPool {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            self.file.read_at(offset, buf)
        }
        fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            if self.full.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            self.file.write_at(offset, data)
        }
        fn len(&self) -> std::io::Result<u64> {
            self.file.len()
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.file.set_len(len)
        }
        fn sync(&self) -> std::io::Result<()> {
            self.file.sync()
        }
    }

    const PRINCIPAL: &str = "arn:aws:iam::111122223333:root";

    /// The exports of a disk service over `pool`, for [`PRINCIPAL`] in
    /// plaintext, and one plain 1 MiB disk of its.
    fn exports_over(pool: Arc<dyn atrest_disk::Storage>) -> (DiskExports, String) {
        let kms = Arc::new(
            KeyService::open(
                Arc::new(atrest_store::MemoryStore::new()),
                atrest_kms::root::RootKey::from_key(atrest_crypto::Aes256Key::generate().unwrap()),
                vec!["r1".to_owned()],
                Arc::new(atrest_kms::clock::SystemClock),
            )
            .unwrap(),
        );
        let engine =
            atrest_disk::Engine::open(Arc::new(atrest_store::MemoryStore::new()), pool).unwrap();
        let disks = DiskService::start(
            Arc::clone(&kms),
            engine,
            atrest_diskservice::Config::default(),
        )
        .unwrap();
        let caller = principal_caller(PRINCIPAL, "r1").unwrap();
        let disk = disks
            .create_disk(
                &caller,
                &atrest_diskservice::NewDisk {
                    size: 1 << 20,
                    encrypted: Some(false),
                    ..Default::default()
                },
            )
            .unwrap();
        let exports = DiskExports {
            kms,
            disks,
            plaintext: Some(PRINCIPAL.to_owned()),
            cluster: None,
        };
        (exports, disk.id)
    }

    /// The one mapping, error by error: the kind decides, never the
    /// message.
    #[test]
    fn io_errors_map_to_the_errno_of_their_kind() {
        use atrest_disk::DiskError;
        use std::io::{Error, ErrorKind};
        let disk_io = |error: Error| {
            ServiceError::Disk(DiskError::Io {
                context: "writing the pool".into(),
                error,
            })
        };
        let cases = [
            (disk_io(Error::from_raw_os_error(28)), errno::ENOSPC),
            (disk_io(Error::from(ErrorKind::StorageFull)), errno::ENOSPC),
            (
                disk_io(Error::from(ErrorKind::QuotaExceeded)),
                errno::ENOSPC,
            ),
            (
                disk_io(Error::from(ErrorKind::ReadOnlyFilesystem)),
                errno::EPERM,
            ),
            (
                disk_io(Error::from(ErrorKind::PermissionDenied)),
                errno::EPERM,
            ),
            (disk_io(Error::from(ErrorKind::InvalidInput)), errno::EINVAL),
            // The words are not looked at: this is an EIO.
            (disk_io(Error::other("No space left on device")), errno::EIO),
            (
                ServiceError::Disk(DiskError::Invalid("beyond the end".into())),
                errno::EINVAL,
            ),
            (
                ServiceError::Disk(DiskError::Failed("engine stopped".into())),
                errno::EIO,
            ),
            (
                ServiceError::Closed {
                    disk: "disk-1".into(),
                    reason: "its key was disabled".into(),
                },
                errno::ESHUTDOWN,
            ),
            (
                ServiceError::Kms(KmsError::Internal("store".into())),
                errno::EIO,
            ),
        ];
        for (e, want) in cases {
            let shown = e.to_string();
            let got = io_error(e);
            assert_eq!(got.errno, want, "{shown}");
            assert_eq!(got.message, shown);
        }
    }

    /// A write the pool has no room for is answered `ENOSPC` on the wire
    /// (with the pool's words in the message), and the disk serves on once
    /// there is room again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_pool_answers_enospc_over_nbd() {
        use atrest_nbd::transmit::{Request, SIMPLE_REPLY_MAGIC, cmd};
        use tokio::io::AsyncWriteExt;

        let dir = tempfile::tempdir().unwrap();
        let pool = Arc::new(FillingPool {
            file: atrest_disk::FileStorage::open(&dir.path().join("pool")).unwrap(),
            full: std::sync::atomic::AtomicBool::new(false),
        });
        let (exports, disk) = exports_over(Arc::clone(&pool) as Arc<dyn atrest_disk::Storage>);

        // The export itself: the error's errno and message.
        let session = Session {
            peer: "127.0.0.1:40000".parse().unwrap(),
            tls: false,
            identity: ClientIdentity::None,
        };
        let export = exports.open(&session, &disk).unwrap();
        pool.full.store(true, std::sync::atomic::Ordering::SeqCst);
        let e = export.write(0, &[1; 4096], false).unwrap_err();
        assert_eq!(e.errno, errno::ENOSPC, "{e:?}");
        assert!(e.message.contains("No space left on device"), "{e:?}");
        pool.full.store(false, std::sync::atomic::Ordering::SeqCst);
        drop(export);

        // Over the wire: a plaintext client on loopback.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let config = Arc::new(server::Config {
            tls_required: false,
            ..server::Config::default()
        });
        let task = tokio::spawn(server::serve(
            listener,
            config,
            Arc::new(exports),
            Arc::default(),
            stopped,
        ));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).await.unwrap();
        assert_eq!(greeting, atrest_nbd::negotiate::greeting());
        let flags = atrest_nbd::handshake::C_FIXED_NEWSTYLE | atrest_nbd::handshake::C_NO_ZEROES;
        s.write_all(&flags.to_be_bytes()).await.unwrap();
        let mut option = atrest_nbd::IHAVEOPT.to_be_bytes().to_vec();
        option.extend_from_slice(&atrest_nbd::negotiate::opt::EXPORT_NAME.to_be_bytes());
        option.extend_from_slice(&u32::try_from(disk.len()).unwrap().to_be_bytes());
        option.extend_from_slice(disk.as_bytes());
        s.write_all(&option).await.unwrap();
        let mut export_info = [0u8; 10];
        s.read_exact(&mut export_info).await.unwrap();
        assert_eq!(export_info[..8], (1u64 << 20).to_be_bytes());

        // One WRITE: its simple reply's errno.
        async fn write(s: &mut tokio::net::TcpStream, cookie: u64) -> u32 {
            let mut req = Request::encode(0, cmd::WRITE, cookie, 8192, 4096).to_vec();
            req.extend_from_slice(&[7; 4096]);
            s.write_all(&req).await.unwrap();
            let mut reply = [0u8; 16];
            s.read_exact(&mut reply).await.unwrap();
            assert_eq!(reply[..4], SIMPLE_REPLY_MAGIC.to_be_bytes());
            assert_eq!(reply[8..], cookie.to_be_bytes());
            u32::from_be_bytes(reply[4..8].try_into().unwrap())
        }
        pool.full.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(write(&mut s, 1).await, errno::ENOSPC);
        pool.full.store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(write(&mut s, 2).await, 0);

        stop.send(true).unwrap();
        drop(s);
        task.await.unwrap();
    }

    #[test]
    fn the_psk_depends_on_the_secret() {
        let a = psk_for_secret(b"secret-a");
        assert_eq!(a.len(), 32);
        assert_ne!(*a, *psk_for_secret(b"secret-b"));
        assert_eq!(*a, *psk_for_secret(b"secret-a"));
    }
}
