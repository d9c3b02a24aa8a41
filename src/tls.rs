//! TLS on the gRPC port: the rustls configuration built from the PEM files, reloaded when they
//! change on disk, and the stream of handshaken connections tonic serves.
//!
//! Reload without dropping connections: each new connection takes the configuration current
//! when it was accepted (an [`ArcSwap`]), so a rotated certificate or CA applies to new
//! connections while open ones keep the session they negotiated. The files are checked every
//! [`RELOAD_INTERVAL`] (read and hashed; a Kubernetes secret volume swaps a symlink, which a
//! content check sees and an inotify watch on the file would miss). A change that does not
//! load (half-written, key not matching) is logged and the previous configuration stays.
//!
//! With a client CA, a client certificate is verified when presented (an unknown CA or an
//! expired certificate fails the handshake) but not required: health and reflection must stay
//! reachable without one, and a caller may identify itself with a bearer token instead.
//! `crate::callers` decides what a call without an identity may do.

use std::{
    io,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tonic::transport::server::Connected;

/// How often the files are checked for a change.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// How long a client may take to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The PEM files of TLS on the gRPC port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates client certificates must chain to; `None`: no client certificates.
    pub client_ca: Option<PathBuf>,
}

/// Which of the files a problem is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFile {
    /// [`TlsFiles::cert`].
    Cert,
    /// [`TlsFiles::key`].
    Key,
    /// [`TlsFiles::client_ca`].
    ClientCa,
}

/// Why the files do not make a TLS configuration. Never quotes a key.
#[derive(Debug)]
pub struct TlsProblem {
    /// The file at fault.
    pub file: TlsFile,
    /// What is wrong, lowercase.
    pub problem: String,
}

impl std::fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let file = match self.file {
            TlsFile::Cert => "NOTIFY_TLS_CERT",
            TlsFile::Key => "NOTIFY_TLS_KEY",
            TlsFile::ClientCa => "NOTIFY_TLS_CLIENT_CA",
        };
        write!(f, "{file}: {}", self.problem)
    }
}

/// The files' contents, read together.
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
    /// SHA-256 over all three: what the reloader compares (the key itself is not kept).
    digest: [u8; 32],
}

fn read(files: &TlsFiles) -> Result<Contents, TlsProblem> {
    let read_one = |path: &PathBuf, file| {
        std::fs::read(path).map_err(|error| TlsProblem {
            file,
            problem: format!("cannot read {}: {error}", path.display()),
        })
    };
    let cert = read_one(&files.cert, TlsFile::Cert)?;
    let key = read_one(&files.key, TlsFile::Key)?;
    let client_ca = files
        .client_ca
        .as_ref()
        .map(|path| read_one(path, TlsFile::ClientCa))
        .transpose()?;
    let mut hasher = Sha256::new();
    for part in [Some(&cert), Some(&key), client_ca.as_ref()] {
        let part = part.map_or(&[][..], Vec::as_slice);
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    Ok(Contents {
        cert,
        key,
        client_ca,
        digest: hasher.finalize().into(),
    })
}

/// Reads the files and builds the server configuration (ALPN `h2`, as gRPC clients expect).
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsProblem> {
    build(&read(files)?)
}

fn build(contents: &Contents) -> Result<Arc<ServerConfig>, TlsProblem> {
    let cert_problem = |problem: String| TlsProblem {
        file: TlsFile::Cert,
        problem,
    };
    let certs = CertificateDer::pem_slice_iter(&contents.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| cert_problem(format!("not PEM certificates: {error}")))?;
    if certs.is_empty() {
        return Err(cert_problem("holds no CERTIFICATE block".to_owned()));
    }
    // The error never includes the key: rustls's PEM errors describe the structure only.
    let key = PrivateKeyDer::from_pem_slice(&contents.key).map_err(|error| TlsProblem {
        file: TlsFile::Key,
        problem: format!("not a PEM private key: {error}"),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| cert_problem(error.to_string()))?;
    let builder = match &contents.client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let ca_problem = |problem: String| TlsProblem {
                file: TlsFile::ClientCa,
                problem,
            };
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert =
                    cert.map_err(|error| ca_problem(format!("not PEM certificates: {error}")))?;
                roots
                    .add(cert)
                    .map_err(|error| ca_problem(format!("not a usable CA certificate: {error}")))?;
            }
            if roots.is_empty() {
                return Err(ca_problem("holds no CERTIFICATE block".to_owned()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|error| ca_problem(error.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|error| TlsProblem {
            file: TlsFile::Key,
            problem: format!("does not go with the certificate: {error}"),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The current configuration, swapped when the files change.
pub struct ReloadingTls {
    files: TlsFiles,
    current: ArcSwap<ServerConfig>,
    /// Digest of the contents last tried (loaded or refused), so a bad file is logged once.
    last_seen: Mutex<[u8; 32]>,
}

impl ReloadingTls {
    /// Loads the files.
    pub fn new(files: TlsFiles) -> Result<Arc<Self>, TlsProblem> {
        let contents = read(&files)?;
        let config = build(&contents)?;
        Ok(Arc::new(Self {
            files,
            current: ArcSwap::new(config),
            last_seen: Mutex::new(contents.digest),
        }))
    }

    /// Loads the files again if they changed; true when a new configuration is in place.
    pub fn reload_if_changed(&self) -> bool {
        let contents = match read(&self.files) {
            Ok(contents) => contents,
            Err(problem) => {
                // Mid-rotation a file can be missing for a moment; the next check sees it.
                tracing::debug!(%problem, "tls files not readable; keeping the current ones");
                return false;
            }
        };
        {
            let mut last_seen = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
            if *last_seen == contents.digest {
                return false;
            }
            *last_seen = contents.digest;
        }
        match build(&contents) {
            Ok(config) => {
                self.current.store(config);
                tracing::info!("tls files changed; new connections use them");
                true
            }
            Err(problem) => {
                tracing::warn!(%problem, "tls files changed but do not load; keeping the current ones");
                false
            }
        }
    }

    /// Checks the files every [`RELOAD_INTERVAL`] until aborted.
    pub fn spawn_reloader(self: &Arc<Self>) -> JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let checked = tls.clone();
                // File reads block: off the runtime's workers.
                let _ = tokio::task::spawn_blocking(move || checked.reload_if_changed()).await;
            }
        })
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }
}

/// The names of a verified client certificate, read once per connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerCertificate {
    /// Subject common names.
    pub common_names: Vec<String>,
    /// DNS and URI subject alternative names.
    pub sans: Vec<String>,
}

impl PeerCertificate {
    /// The names of the DER certificate `der`; `None` when it does not parse (rustls verified
    /// it already, so that does not happen for a connection).
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let common_names = cert
            .subject()
            .iter_common_name()
            .filter_map(|name| name.as_str().ok().map(str::to_owned))
            .collect();
        let sans = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|extension| {
                extension
                    .value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        x509_parser::extensions::GeneralName::DNSName(dns) => {
                            Some((*dns).to_owned())
                        }
                        x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Self { common_names, sans })
    }
}

/// What a handler learns about its TLS connection (tonic puts it in the request extensions).
#[derive(Clone, Debug)]
pub struct TlsConnectInfo {
    /// The client's address.
    pub remote_addr: Option<SocketAddr>,
    /// The verified client certificate, if the client presented one.
    pub peer: Option<Arc<PeerCertificate>>,
}

/// A connection whose handshake completed.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    info: TlsConnectInfo,
}

impl Connected for TlsConnection {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts on `listener` and hands tonic each connection whose handshake completed, using the
/// configuration current at accept time. Handshakes run on their own tasks, so a slow client
/// holds up nobody; a failed one is logged at debug (an unknown CA, an expired certificate, a
/// plaintext client) and never reaches tonic. Ends when tonic drops the stream.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
) -> impl futures::Stream<Item = Result<TlsConnection, io::Error>> + Send + 'static {
    let (sender, receiver) = mpsc::channel::<TlsConnection>(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            let (stream, remote_addr) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // As the plaintext listener does: a small answer must not wait for a delayed ACK.
            let _ = stream.set_nodelay(true);
            let acceptor = tls.acceptor();
            let sender = sender.clone();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                let stream = match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%remote_addr, %error, "tls handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote_addr, "tls handshake timed out");
                        return;
                    }
                };
                let peer = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| PeerCertificate::from_der(leaf))
                    .map(Arc::new);
                let info = TlsConnectInfo {
                    remote_addr: Some(remote_addr),
                    peer,
                };
                let _ = sender.send(TlsConnection { stream, info }).await;
            });
        }
    });
    futures::stream::unfold(receiver, |mut receiver| async move {
        let connection = receiver.recv().await?;
        Some((Ok(connection), receiver))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed() -> (String, String) {
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (issued.cert.pem(), issued.signing_key.serialize_pem())
    }

    #[test]
    fn a_change_is_loaded_once_and_a_broken_one_keeps_the_current_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: None,
        };
        let write = |(cert, key): &(String, String)| {
            std::fs::write(&files.cert, cert).unwrap();
            std::fs::write(&files.key, key).unwrap();
        };
        let first = self_signed();
        write(&first);
        let tls = ReloadingTls::new(files.clone()).unwrap();
        let loaded = tls.current.load_full();
        assert!(!tls.reload_if_changed(), "nothing changed");

        // Half-written, then a key that does not go with the certificate: both refused.
        std::fs::write(&files.key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        assert!(!tls.reload_if_changed());
        std::fs::write(&files.key, self_signed().1).unwrap();
        assert!(!tls.reload_if_changed());
        assert!(Arc::ptr_eq(&loaded, &tls.current.load_full()));

        let second = self_signed();
        write(&second);
        assert!(tls.reload_if_changed());
        assert!(!Arc::ptr_eq(&loaded, &tls.current.load_full()));
        assert!(!tls.reload_if_changed(), "loaded once");
    }

    #[test]
    fn problems_name_the_file_and_never_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: Some(dir.path().join("ca.crt")),
        };
        std::fs::write(&files.cert, &cert).unwrap();
        std::fs::write(&files.key, "secret-key-material-not-pem").unwrap();
        std::fs::write(dir.path().join("ca.crt"), &cert).unwrap();
        let problem = load(&files).unwrap_err();
        assert_eq!(problem.file, TlsFile::Key);
        assert!(
            !problem.to_string().contains("secret-key-material"),
            "{problem}"
        );
        std::fs::remove_file(dir.path().join("ca.crt")).unwrap();
        std::fs::write(&files.key, self_signed().1).unwrap();
        assert_eq!(load(&files).unwrap_err().file, TlsFile::ClientCa);
    }

    #[test]
    fn a_certificates_names_are_read() {
        let mut params = rcgen::CertificateParams::new(vec!["shop.example".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "shop");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://cluster.local/ns/shop/sa/orders"
                .try_into()
                .unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let peer = PeerCertificate::from_der(cert.der()).unwrap();
        assert_eq!(peer.common_names, vec!["shop"]);
        assert_eq!(
            peer.sans,
            vec!["shop.example", "spiffe://cluster.local/ns/shop/sa/orders"]
        );
        assert_eq!(PeerCertificate::from_der(b"not a certificate"), None);
    }
}
