//! Certificates made in the test: a CA, server and client certificates it signs, and the files
//! the server reads them from.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, date_time_ymd,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// The name the server certificate is issued for (clients connect to 127.0.0.1 with it as SNI).
pub const SERVER_NAME: &str = "localhost";

/// A certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for [`SERVER_NAME`] and 127.0.0.1.
    pub fn server(&self) -> Leaf {
        let names = vec![SERVER_NAME.to_owned(), "127.0.0.1".to_owned()];
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, SERVER_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate with subject CN `common_name` and `sans` (a `spiffe://` or other
    /// URI becomes a URI SAN, anything else a DNS SAN).
    pub fn client(&self, common_name: &str, sans: &[&str]) -> Leaf {
        self.sign(client_params(common_name, sans))
    }

    /// A client certificate that expired in 2021.
    pub fn expired_client(&self, common_name: &str) -> Leaf {
        let mut params = client_params(common_name, &[]);
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2021, 1, 1);
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn client_params(common_name: &str, sans: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.subject_alt_names = sans
        .iter()
        .map(|san| {
            if san.contains("://") {
                SanType::URI((*san).try_into().unwrap())
            } else {
                SanType::DnsName((*san).try_into().unwrap())
            }
        })
        .collect();
    params
}

/// The server's TLS files in a temporary directory.
pub struct TlsDir {
    _dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

impl TlsDir {
    /// `server` as the server certificate and `client_ca` (when given) as the client CA.
    pub fn new(server: &Leaf, client_ca: Option<&Ca>) -> TlsDir {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsDir {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: dir.path().join("ca.crt"),
            _dir: dir,
        };
        tls.write(server, client_ca);
        tls
    }

    /// Replaces the files, as a secret rotation does: each written beside and renamed over.
    pub fn write(&self, server: &Leaf, client_ca: Option<&Ca>) {
        replace(&self.cert, &server.cert);
        replace(&self.key, &server.key);
        if let Some(ca) = client_ca {
            replace(&self.client_ca, &ca.pem());
        }
    }

    /// The server's TLS settings for these files.
    pub fn files(&self, mutual: bool) -> wechat_notify::tls::TlsFiles {
        wechat_notify::tls::TlsFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
            client_ca: mutual.then(|| self.client_ca.clone()),
        }
    }
}

fn replace(path: &Path, contents: &str) {
    let staged = path.with_extension("new");
    std::fs::write(&staged, contents).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// A TLS channel to `addr` trusting `ca`, presenting `identity` when given.
pub async fn tls_channel(
    addr: std::net::SocketAddr,
    ca: &Ca,
    identity: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name(SERVER_NAME);
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert, &leaf.key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}
