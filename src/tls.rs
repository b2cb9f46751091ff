//! TLS set-up: the server's identity (PEM files, or a certificate made at start-up), the
//! client's trust (a CA bundle, a pinned SHA-256 fingerprint, both, or neither), the
//! fingerprints users compare, and the files `tcp-forward cert` writes. The connections
//! themselves are driven in `net::tls`.
//!
//! TLS 1.3 only, with rustls on its aws-lc-rs provider. Without a CA or a pin the client
//! accepts any certificate whose key signs the handshake: the server is then authenticated
//! by the token's proof, which is bound to the TLS session (see `protocol::handshake`).

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// RFC 9266's exporter label; both handshake proofs cover this many bytes exported with it.
pub const BINDING_LABEL: &[u8] = b"EXPORTER-Channel-Binding";
pub use crate::protocol::handshake::BINDING_LEN;
/// The name in the certificate a server makes for itself at start-up.
pub const SELF_SIGNED_NAME: &str = "tcp-forward";
/// What `tcp-forward cert` names its files.
pub const CERT_FILE: &str = "tcp-forward.crt";
pub const KEY_FILE: &str = "tcp-forward.key";

/// A SHA-256 fingerprint of a certificate's DER bytes.
pub type Fingerprint = [u8; 32];

/// A TLS set-up error: the file at fault (if any) and what is wrong.
#[derive(Debug)]
pub struct TlsError {
    pub file: Option<PathBuf>,
    pub msg: String,
}

impl TlsError {
    fn new(msg: String) -> TlsError {
        TlsError { file: None, msg }
    }

    fn in_file(file: &Path, msg: String) -> TlsError {
        TlsError {
            file: Some(file.to_path_buf()),
            msg,
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}: {}", file.display(), self.msg),
            None => f.write_str(&self.msg),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The server's TLS identity and the rustls configuration built from it.
#[derive(Clone)]
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    /// Of the end-entity certificate, the one clients pin.
    pub fingerprint: Fingerprint,
    /// The certificate file; `None` when the certificate was made at start-up.
    pub cert_file: Option<PathBuf>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("fingerprint", &format_fingerprint(&self.fingerprint))
            .field("cert_file", &self.cert_file)
            .finish()
    }
}

impl ServerTls {
    /// Load a certificate chain (end-entity first) and its private key from PEM files.
    pub fn from_files(cert_file: &Path, key_file: &Path) -> Result<ServerTls, TlsError> {
        let pem = read_file(cert_file)?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::in_file(cert_file, format!("not a PEM certificate: {e}")))?;
        if chain.is_empty() {
            return Err(TlsError::in_file(
                cert_file,
                "no CERTIFICATE block in the file".to_string(),
            ));
        }
        let pem = read_file(key_file)?;
        let key = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| TlsError::in_file(key_file, format!("not a PEM private key: {e}")))?;
        let mut tls = ServerTls::build(chain, key).map_err(|e| {
            TlsError::in_file(
                key_file,
                format!("does not fit {}: {e}", cert_file.display()),
            )
        })?;
        tls.cert_file = Some(cert_file.to_path_buf());
        Ok(tls)
    }

    /// Make a new key and a self-signed certificate, in memory only.
    pub fn self_signed() -> Result<ServerTls, TlsError> {
        let made = generate(&[SELF_SIGNED_NAME.to_string()])?;
        let key = made.key();
        ServerTls::build(vec![CertificateDer::from(made.cert_der)], key).map_err(TlsError::new)
    }

    fn build(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<ServerTls, String> {
        let fingerprint = fingerprint(&chain[0]);
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| e.to_string())?;
        Ok(ServerTls {
            config: Arc::new(config),
            fingerprint,
            cert_file: None,
        })
    }
}

/// How the client checks the server's certificate.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// Verify the chain against this CA bundle (PEM), and the name against `server_name`.
    pub ca_file: Option<PathBuf>,
    /// Accept only a certificate with this fingerprint.
    pub pin: Option<Fingerprint>,
}

/// The client's TLS configuration.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    /// Sent as SNI when it is a host name; checked against the certificate under a CA.
    pub server_name: ServerName<'static>,
    /// A CA or a pin authenticates the server, with or without a token.
    pub authenticates_server: bool,
    /// SHA-256 of what decides which server is accepted (the CA bundle's bytes, the pin,
    /// the name): a reload compares it to tell a changed trust from an unchanged one.
    pub trust_digest: Fingerprint,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field("authenticates_server", &self.authenticates_server)
            .finish()
    }
}

impl ClientTls {
    pub fn new(trust: &Trust, server_name: ServerName<'static>) -> Result<ClientTls, TlsError> {
        let provider = provider();
        let mut digest = Sha256::new();
        digest.update(format!("{server_name:?}").as_bytes());
        if let Some(pin) = &trust.pin {
            digest.update(b"\0pin\0");
            digest.update(pin);
        }
        let ca = match &trust.ca_file {
            Some(file) => {
                let pem = read_file(file)?;
                digest.update(b"\0ca\0");
                digest.update(&pem);
                let mut roots = RootCertStore::empty();
                let mut found = 0;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| {
                        TlsError::in_file(file, format!("not a PEM certificate: {e}"))
                    })?;
                    roots.add(cert).map_err(|e| {
                        TlsError::in_file(file, format!("not a usable CA certificate: {e}"))
                    })?;
                    found += 1;
                }
                if found == 0 {
                    return Err(TlsError::in_file(
                        file,
                        "no CERTIFICATE block in the file".to_string(),
                    ));
                }
                let verifier =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| TlsError::in_file(file, e.to_string()))?;
                Some(verifier)
            }
            None => None,
        };
        let verifier = Arc::new(Verifier {
            ca,
            pin: trust.pin,
            algorithms: provider.signature_verification_algorithms,
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::new(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
            authenticates_server: trust.ca_file.is_some() || trust.pin.is_some(),
            trust_digest: digest.finalize().into(),
        })
    }
}

/// The client's certificate check: the CA's verdict when there is a CA, the pin when there
/// is one, and always a handshake signature made by the certificate's key.
#[derive(Debug)]
struct Verifier {
    ca: Option<Arc<WebPkiServerVerifier>>,
    pin: Option<Fingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(ca) = &self.ca {
            ca.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        }
        if let Some(pin) = &self.pin
            && !constant_time_eq(&fingerprint(end_entity), pin)
        {
            return Err(rustls::Error::General(format!(
                "the server's certificate has fingerprint {}, not the pinned one",
                format_fingerprint(&fingerprint(end_entity))
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Equal bytes, compared in time that depends only on the lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn read_file(file: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(file).map_err(|e| TlsError::in_file(file, format!("cannot read: {e}")))
}

pub fn fingerprint(der: &[u8]) -> Fingerprint {
    Sha256::digest(der).into()
}

/// `AB:CD:…`, as `openssl x509 -fingerprint -sha256` prints it.
pub fn format_fingerprint(fp: &Fingerprint) -> String {
    let hex: Vec<String> = fp.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// 64 hex digits, colons (and spaces) allowed anywhere, any case.
pub fn parse_fingerprint(s: &str) -> Result<Fingerprint, String> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| *b != b':' && !b.is_ascii_whitespace())
        .collect();
    if digits.len() != 64 {
        return Err(format!(
            "{s:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed); found {} digits",
            digits.len()
        ));
    }
    let mut fp = [0u8; 32];
    for (i, pair) in digits.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok();
        fp[i] = text
            .and_then(|t| u8::from_str_radix(t, 16).ok())
            .ok_or_else(|| format!("{s:?} is not a SHA-256 fingerprint: not hex"))?;
    }
    Ok(fp)
}

/// A new key pair and a self-signed certificate for `names` (host names or IP addresses).
pub struct NewCert {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub key_pem: String,
    /// The key in PKCS#8 DER, as `key` hands it to rustls.
    pub key_der: Vec<u8>,
    pub fingerprint: Fingerprint,
}

pub fn generate(names: &[String]) -> Result<NewCert, TlsError> {
    let made = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::new(format!("cannot make a certificate: {e}")))?;
    let cert_der = made.cert.der().to_vec();
    Ok(NewCert {
        cert_pem: made.cert.pem(),
        fingerprint: fingerprint(&cert_der),
        cert_der,
        key_pem: made.signing_key.serialize_pem(),
        key_der: made.signing_key.serialize_der(),
    })
}

impl NewCert {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key_der.clone()).into()
    }
}

/// `tcp-forward cert DIR`: write `tcp-forward.key` (mode 0600, never over an existing file)
/// and `tcp-forward.crt`; returns both paths and the fingerprint.
pub fn write_cert_files(
    dir: &Path,
    names: &[String],
) -> Result<(PathBuf, PathBuf, Fingerprint), TlsError> {
    let made = generate(names)?;
    fs::create_dir_all(dir)
        .map_err(|e| TlsError::in_file(dir, format!("cannot create the folder: {e}")))?;
    let key_file = dir.join(KEY_FILE);
    let cert_file = dir.join(CERT_FILE);
    write_new(&key_file, made.key_pem.as_bytes(), 0o600)?;
    write_new(&cert_file, made.cert_pem.as_bytes(), 0o644)?;
    Ok((cert_file, key_file, made.fingerprint))
}

fn write_new(file: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = options.open(file).map_err(|e| {
        let why = if e.kind() == io::ErrorKind::AlreadyExists {
            "already exists: not overwritten".to_string()
        } else {
            format!("cannot create: {e}")
        };
        TlsError::in_file(file, why)
    })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| TlsError::in_file(file, format!("cannot write: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_any_case_with_or_without_colons() {
        let fp: Fingerprint = std::array::from_fn(|i| (i * 7) as u8);
        let text = format_fingerprint(&fp);
        assert_eq!(text.len(), 32 * 3 - 1);
        assert_eq!(parse_fingerprint(&text), Ok(fp));
        assert_eq!(parse_fingerprint(&text.to_lowercase()), Ok(fp));
        assert_eq!(parse_fingerprint(&text.replace(':', "")), Ok(fp));
        assert!(parse_fingerprint(&text[..text.len() - 3]).is_err());
        assert!(parse_fingerprint(&text.replace('0', "g")).is_err());
        assert!(parse_fingerprint("").is_err());
    }

    #[test]
    fn a_new_certificate_loads_and_keeps_its_fingerprint() {
        let dir = std::env::temp_dir().join(format!("tcpfwd-tls-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (cert, key, fp) = write_cert_files(&dir, &["localhost".into()]).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let tls = ServerTls::from_files(&cert, &key).unwrap();
        assert_eq!(tls.fingerprint, fp);
        let again = write_cert_files(&dir, &["localhost".into()]).unwrap_err();
        assert!(again.msg.contains("already exists"), "{again}");
        let err = ServerTls::from_files(&cert, &dir.join("missing.key")).unwrap_err();
        assert!(err.to_string().contains("missing.key"), "{err}");
        let err = ServerTls::from_files(&key, &key).unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_key_that_does_not_fit_the_certificate_is_refused() {
        let dir = std::env::temp_dir().join(format!("tcpfwd-tls-mix-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (cert, _, _) = write_cert_files(&dir.join("a"), &["a".into()]).unwrap();
        let (_, key, _) = write_cert_files(&dir.join("b"), &["b".into()]).unwrap();
        let err = ServerTls::from_files(&cert, &key).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
