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

/// The NBD listener's configuration.
#[derive(Debug, Clone)]
pub struct NbdConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// TLS, if offered.
    pub tls: Option<NbdTls>,
    /// Accept plaintext connections (loopback only), acting as this
    /// principal (`arn:aws:iam::ACCOUNT:root` or `...:user/NAME`). Without
    /// it, TLS is required.
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

/// Starts the NBD listener; it serves until `stopped` turns true.
pub(crate) async fn start(
    config: &NbdConfig,
    kms: Arc<KeyService>,
    disks: Arc<DiskService>,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), String> {
    if let Some(p) = &config.plaintext_principal {
        if !config.listen.ip().is_loopback() {
            return Err(format!(
                "refusing plaintext NBD on {}, which is not a loopback address: NBD off loopback needs TLS (--nbd-tls-cert, --nbd-tls-key) and no --nbd-plaintext-principal",
                config.listen
            ));
        }
        if principal_caller(p, "").is_none() {
            return Err(format!(
                "--nbd-plaintext-principal {p} is not arn:aws:iam::ACCOUNT:root or arn:aws:iam::ACCOUNT:user/NAME"
            ));
        }
    } else if config.tls.is_none() {
        return Err(
            "NBD needs TLS (--nbd-tls-cert and --nbd-tls-key), or --nbd-plaintext-principal for plaintext on loopback".into(),
        );
    }
    let tls: Option<Arc<dyn StartTls>> = match &config.tls {
        Some(t) => Some(Arc::new(Tls::new(t, Arc::clone(&kms))?)),
        None => None,
    };
    let nbd_config = Arc::new(server::Config {
        tls_required: config.plaintext_principal.is_none(),
        tls,
        ..server::Config::default()
    });
    let backend: Arc<dyn Backend> = Arc::new(DiskExports {
        kms,
        disks,
        plaintext: config.plaintext_principal.clone(),
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("binding NBD listener {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, tls = config.tls.is_some(), tls_required = nbd_config.tls_required, "NBD serving");
    let task = tokio::spawn(server::serve(listener, nbd_config, backend, stopped));
    Ok((addr, task))
}

/// The disk service as NBD exports.
struct DiskExports {
    kms: Arc<KeyService>,
    disks: Arc<DiskService>,
    plaintext: Option<String>,
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

    fn caller_for_disk(&self, s: &Session, name: &str) -> Result<Caller, Refused> {
        if name.is_empty() {
            return Err(Refused::Unknown(
                "there is no default export: give a disk id as the export name".into(),
            ));
        }
        let region = self.disks.disk_region(name).map_err(refused)?;
        self.caller(s, &region)
    }
}

impl Backend for DiskExports {
    fn list(&self, s: &Session) -> Result<Vec<String>, Refused> {
        let mut out = Vec::new();
        for region in self.kms.regions() {
            let caller = self.caller(s, region)?;
            let disks = self.disks.list_disks(&caller).map_err(refused)?;
            out.extend(disks.into_iter().map(|d| d.id));
        }
        Ok(out)
    }

    fn describe(&self, s: &Session, name: &str) -> Result<ExportInfo, Refused> {
        let caller = self.caller_for_disk(s, name)?;
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

fn io_error(e: ServiceError) -> IoError {
    use atrest_disk::DiskError;
    let errno = match &e {
        ServiceError::Disk(DiskError::Invalid(_)) => errno::EINVAL,
        ServiceError::Disk(DiskError::Io(m)) if m.contains("No space") => errno::ENOSPC,
        ServiceError::Closed { .. } => errno::ESHUTDOWN,
        _ => errno::EIO,
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
    fn new(t: &NbdTls, kms: Arc<KeyService>) -> Result<Self, String> {
        let (certs, key) = crate::tls::load(&crate::TlsFiles {
            cert: t.cert.clone(),
            key: t.key.clone(),
        })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &t.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("reading client CA {}: {e}", ca.display()))?
                {
                    let c = c.map_err(|e| format!("parsing client CA {}: {e}", ca.display()))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("client CA {}: {e}", ca.display()))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| format!("client CA {}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("NBD certificate and key do not match: {e}"))?;
        let psk = atrest_tlspsk::PskAcceptor::new(Arc::new(AccessKeyPsk(kms)))
            .map_err(|e| format!("TLS-PSK: {e}"))?;
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

    #[test]
    fn the_psk_depends_on_the_secret() {
        let a = psk_for_secret(b"secret-a");
        assert_eq!(a.len(), 32);
        assert_ne!(*a, *psk_for_secret(b"secret-b"));
        assert_eq!(*a, *psk_for_secret(b"secret-a"));
    }
}
