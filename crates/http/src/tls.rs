//! HTTPS on rustls (ring, no OpenSSL): a certificate and key read from PEM files and swapped
//! in place when the files change or on SIGHUP, so renewals need no restart and drop no
//! connection, and a self-signed certificate made once in the data directory for servers
//! without one. Fingerprints (SHA-256 of the certificate) are logged; keys never are.

use std::{
    fmt, fs,
    io::Write,
    path::{Path, PathBuf},
    sync::{mpsc, Arc, RwLock},
    thread,
    time::Duration,
};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};
use sha2::{Digest, Sha256};

/// The certificate file and key file of `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a certificate could not be loaded or made. Messages name files, never key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{0}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file")]
    NoCertificate(PathBuf),
    #[error("{path}: invalid PEM certificate: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{path}: no usable PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC): {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("the key in {key} does not belong to the certificate in {cert}: {reason}")]
    Mismatch { cert: PathBuf, key: PathBuf, reason: String },
    #[error("cannot make a self-signed certificate for {names:?}: {reason}")]
    Generate { names: Vec<String>, reason: String },
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

/// The SHA-256 of a DER certificate as colon-separated upper-case hex, the form
/// `openssl x509 -fingerprint -sha256` prints and clients pin.
#[must_use]
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// The ring provider every config and key load uses, so no process-wide default is needed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses the chain and key, and checks that the key belongs to the first certificate.
fn parse(files: &TlsFiles, cert_pem: &[u8], key_pem: &[u8], provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate { path: files.cert.clone(), reason: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(files.cert.clone()));
    }
    // The key's own parse error could quote its bytes; only its kind is shown.
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::BadKey { path: files.key.clone(), reason: pem_error_kind(&e) })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) | rustls::Error::InvalidCertificate(_) => {
            TlsError::Mismatch { cert: files.cert.clone(), key: files.key.clone(), reason: e.to_string() }
        }
        other => TlsError::BadKey { path: files.key.clone(), reason: other.to_string() },
    })
}

fn pem_error_kind(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::NoItemsFound => "no private key found".to_owned(),
        E::MissingSectionEnd { .. } | E::IllegalSectionStart { .. } => "a PEM section is not closed".to_owned(),
        E::Base64Decode(_) => "bad base64 in the PEM text".to_owned(),
        _ => "unreadable PEM text".to_owned(),
    }
}

/// The certificate being served, swapped whole by [`ReloadingCert::reload`]; handshakes in
/// progress and open connections keep the one they started with.
pub struct ReloadingCert {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The file contents last looked at, loaded or not, so that a bad file warns once.
    seen: RwLock<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert").field("files", &self.files).field("fingerprint", &self.fingerprint()).finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Loads the certificate and key.
    ///
    /// # Errors
    /// The files cannot be read, hold no certificate or key, or the key is not the
    /// certificate's.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let cert_pem = fs::read(&files.cert).map_err(|source| TlsError::Read { path: files.cert.clone(), source })?;
        let key_pem = fs::read(&files.key).map_err(|source| TlsError::Read { path: files.key.clone(), source })?;
        let key = parse(&files, &cert_pem, &key_pem, &provider)?;
        Ok(Arc::new(Self { files, provider, current: RwLock::new(Arc::new(key)), seen: RwLock::new((cert_pem, key_pem)) }))
    }

    /// The SHA-256 fingerprint of the certificate served now.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        let current = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        current.cert.first().map(|c| fingerprint(c)).unwrap_or_default()
    }

    /// Loads the files again and serves them from the next handshake on. A failure keeps the
    /// certificate served now and is logged as a warning. With `only_if_changed`, files whose
    /// bytes are those last looked at are left alone.
    ///
    /// Returns whether a new certificate is served.
    pub fn reload(&self, only_if_changed: bool) -> bool {
        let read = fs::read(&self.files.cert).and_then(|c| Ok((c, fs::read(&self.files.key)?)));
        let (cert_pem, key_pem) = match read {
            Ok(bytes) => bytes,
            Err(e) => {
                if !only_if_changed {
                    tracing::warn!(error = %e, "TLS certificate not reloaded; still serving the previous one");
                }
                return false;
            }
        };
        {
            let mut seen = self.seen.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            if only_if_changed && seen.0 == cert_pem && seen.1 == key_pem {
                return false;
            }
            *seen = (cert_pem.clone(), key_pem.clone());
        }
        match parse(&self.files, &cert_pem, &key_pem, &self.provider) {
            Ok(key) => {
                let new = key.cert.first().map(|c| fingerprint(c)).unwrap_or_default();
                *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(key);
                tracing::info!(fingerprint = %new, cert = %self.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, fingerprint = %self.fingerprint(), "TLS certificate not reloaded; still serving the previous one");
                false
            }
        }
    }

    /// Watches the files: a thread compares them every `every` and reloads when they change
    /// (never when `every` is zero), and SIGHUP reloads at once. Call from within the actix
    /// system (the SIGHUP listener is a task on it).
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn watch(self: &Arc<Self>, every: Duration) -> std::io::Result<()> {
        let (tx, rx) = mpsc::channel::<()>();
        let me = Arc::clone(self);
        let keep = tx.clone();
        thread::Builder::new().name("tls-reload".into()).spawn(move || {
            // Held so that the loop keeps polling when SIGHUP cannot be listened to.
            let _keep = keep;
            loop {
                let hup =
                    if every.is_zero() { rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected) } else { rx.recv_timeout(every) };
                match hup {
                    Ok(()) => {
                        tracing::info!("SIGHUP: reloading the TLS certificate");
                        me.reload(false);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        me.reload(true);
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        })?;
        actix_web::rt::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::hangup()) {
                Ok(mut hup) => {
                    while hup.recv().await.is_some() {
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP; the TLS certificate reloads when its files change"),
            }
        });
        Ok(())
    }

    /// A rustls server configuration (TLS 1.2 and 1.3, ring's safe defaults, no client
    /// certificates) that asks this certificate for every handshake.
    ///
    /// # Errors
    /// The provider refuses its own default protocol versions (it does not).
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        let resolver: Arc<dyn ResolvesServerCert> = self.clone();
        Ok(ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver))
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }
}

/// The names a self-signed certificate is made for by default: `localhost`, `127.0.0.1`,
/// `::1` and the bind host (unless it is a wildcard address such as `0.0.0.0`).
#[must_use]
pub fn default_self_signed_names(bind_host: &str) -> Vec<String> {
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(str::to_owned).into();
    let host = bind_host.trim_start_matches('[').trim_end_matches(']');
    let wildcard = host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified());
    if !host.is_empty() && !wildcard && !names.iter().any(|n| n.eq_ignore_ascii_case(host)) {
        names.push(host.to_owned());
    }
    names
}

/// The self-signed certificate in `dir` (`cert.pem`, `key.pem`, and `names.txt` with the names
/// it was made for): reused when it exists for the same names, else made (ECDSA P-256, valid
/// until 4096 so that a pinned fingerprint never has to change) and written, the key readable
/// by its owner only.
///
/// Returns the files and whether they were made now.
///
/// # Errors
/// A name that is neither a DNS name nor an IP address, or the directory cannot be written.
pub fn self_signed(dir: &Path, names: &[String]) -> Result<(TlsFiles, bool), TlsError> {
    let files = TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
    let names_file = dir.join("names.txt");
    let wanted = names.join("\n");
    let same_names = fs::read_to_string(&names_file).is_ok_and(|n| n.trim_end() == wanted);
    if same_names && files.cert.is_file() && files.key.is_file() {
        return Ok((files, false));
    }
    let generate = |reason: String| TlsError::Generate { names: names.to_vec(), reason };
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| generate(e.to_string()))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "Trainyard self-signed");
    let key = rcgen::KeyPair::generate().map_err(|e| generate(e.to_string()))?;
    let cert = params.self_signed(&key).map_err(|e| generate(e.to_string()))?;
    create_private_dir(dir).map_err(|source| TlsError::Write { path: dir.to_owned(), source })?;
    write_atomically(&files.key, key.serialize_pem().as_bytes(), true)?;
    write_atomically(&files.cert, cert.pem().as_bytes(), false)?;
    write_atomically(&names_file, format!("{wanted}\n").as_bytes(), false)?;
    Ok((files, true))
}

/// Creates `dir` readable by its owner only; its parents are made as usual.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`, so that a
/// reader never sees half a file; `private` files get mode 0600.
fn write_atomically(path: &Path, bytes: &[u8], private: bool) -> Result<(), TlsError> {
    let err = |source| TlsError::Write { path: path.to_owned(), source };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tls-").tempfile_in(dir).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = if private { 0o600 } else { 0o644 };
        tmp.as_file().set_permissions(fs::Permissions::from_mode(mode)).map_err(err)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    tmp.write_all(bytes).and_then(|()| tmp.as_file().sync_all()).map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use quickcheck::quickcheck;

    use super::*;

    /// Two certificate and key pairs (PEM), made once for the property.
    fn pairs() -> &'static [(String, String); 2] {
        static PAIRS: OnceLock<[(String, String); 2]> = OnceLock::new();
        PAIRS.get_or_init(|| {
            [0, 1].map(|_| {
                let key = rcgen::KeyPair::generate().unwrap();
                let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
                (cert.pem(), key.serialize_pem())
            })
        })
    }

    quickcheck! {
        // Property 51: whatever the certificate or key file is overwritten with (random bytes,
        // a cut PEM, the other pair's certificate or key), a reload never serves anything but
        // the last valid matching pair.
        fn prop51_a_failed_reload_keeps_the_served_certificate(which: u8, cut: usize, noise: Vec<u8>) -> bool {
            let [(cert_a, key_a), (cert_b, key_b)] = pairs();
            let dir = tempfile::tempdir().unwrap();
            let files = TlsFiles { cert: dir.path().join("c.pem"), key: dir.path().join("k.pem") };
            fs::write(&files.cert, cert_a).unwrap();
            fs::write(&files.key, key_a).unwrap();
            let served = ReloadingCert::load(files.clone()).unwrap();
            let first = served.fingerprint();
            let (target, bytes): (&Path, Vec<u8>) = match which % 6 {
                0 => (&files.cert, noise),
                1 => (&files.key, noise),
                2 => (&files.cert, cert_a.as_bytes()[..cut % cert_a.len()].to_vec()),
                3 => (&files.key, key_a.as_bytes()[..cut % key_a.len()].to_vec()),
                4 => (&files.cert, cert_b.clone().into_bytes()),
                _ => (&files.key, key_b.clone().into_bytes()),
            };
            fs::write(target, bytes).unwrap();
            served.reload(true);
            served.reload(false);
            let current = served.current.read().unwrap().clone();
            served.fingerprint() == first && current.keys_match().is_ok()
        }
    }

    fn make(dir: &Path, names: &[&str]) -> TlsFiles {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names).unwrap().self_signed(&key).unwrap();
        let files = TlsFiles { cert: dir.join("c.pem"), key: dir.join("k.pem") };
        fs::write(&files.cert, cert.pem()).unwrap();
        fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn a_bad_reload_keeps_the_served_certificate_and_a_good_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = make(dir.path(), &["localhost"]);
        let served = ReloadingCert::load(files.clone()).unwrap();
        let first = served.fingerprint();
        assert!(!served.reload(true), "unchanged files are left alone");

        fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
        assert!(!served.reload(true));
        assert_eq!(served.fingerprint(), first);

        // A new certificate with the old key: the pair does not match, the old one stays.
        let other = tempfile::tempdir().unwrap();
        let new = make(other.path(), &["localhost"]);
        fs::copy(&new.cert, &files.cert).unwrap();
        assert!(!served.reload(true));
        assert_eq!(served.fingerprint(), first);

        fs::copy(&new.key, &files.key).unwrap();
        assert!(served.reload(true));
        let second = served.fingerprint();
        assert_ne!(second, first);
        let der = CertificateDer::from_pem_file(&new.cert).unwrap();
        assert_eq!(second, fingerprint(&der));
    }

    #[test]
    fn load_errors_say_what_is_wrong_without_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let files = make(dir.path(), &["localhost"]);
        let key_text = fs::read_to_string(&files.key).unwrap();
        fs::write(&files.key, "-----BEGIN PRIVATE KEY-----\nQUJD\n-----END PRIVATE KEY-----\n").unwrap();
        let e = ReloadingCert::load(files.clone()).unwrap_err().to_string();
        assert!(e.contains("k.pem"), "{e}");
        fs::write(&files.key, &key_text).unwrap();
        fs::write(&files.cert, "hello").unwrap();
        let e = ReloadingCert::load(files.clone()).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate") && !e.contains(&key_text[30..60]), "{e}");
        let missing = TlsFiles { cert: dir.path().join("none.pem"), key: files.key };
        assert!(ReloadingCert::load(missing).unwrap_err().to_string().contains("none.pem"));
    }

    #[test]
    fn the_self_signed_certificate_is_made_once_and_remade_for_other_names() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let names = default_self_signed_names("0.0.0.0");
        assert_eq!(names, ["localhost", "127.0.0.1", "::1"]);
        let (files, made) = self_signed(&tls, &names).unwrap();
        assert!(made);
        let first = ReloadingCert::load(files.clone()).unwrap().fingerprint();
        let (again, made) = self_signed(&tls, &names).unwrap();
        assert!(!made);
        assert_eq!(ReloadingCert::load(again).unwrap().fingerprint(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&files.key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let more = default_self_signed_names("gpu.lan");
        let (files, made) = self_signed(&tls, &more).unwrap();
        assert!(made);
        assert_ne!(ReloadingCert::load(files).unwrap().fingerprint(), first);
        assert!(self_signed(&tls, &["caf\u{e9}.lan".to_owned()]).is_err());
    }
}
