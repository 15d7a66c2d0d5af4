//! The transport: HTTPS with a real TLS client (a renewed certificate is served without a
//! restart or a dropped connection; the self-signed certificate's printed fingerprint is the
//! one served), the header and upload idle timeouts, the Host check against DNS rebinding, and
//! CORS only for listed origins. Requests are written by hand over TCP where a header must be
//! chosen freely (`Host`, `Origin`) or a body must stall.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme, StreamOwned,
};
use sha2::{Digest, Sha256};

use crate::harness::{authority, envelope_code, multipart, Opts, Reply, Server, KEY};

/// The pause between two looks at something awaited with a deadline.
const POLL: Duration = Duration::from_millis(20);

/// The `host:port` a server listens on, from its base URL.
fn port(s: &Server) -> u16 {
    authority(s).rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("port")
}

fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Reads one response with a `Content-Length` body (every answer of this server has one).
fn read_reply(stream: &mut impl Read) -> std::io::Result<Reply> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("closed after {head:?}")));
        }
        head.push(byte[0]);
    }
    let mut reply = Reply::of_head(&head[..head.len() - 4], Vec::new());
    let len = reply.header("content-length").map_or(0, |v| v.parse().expect("content-length"));
    reply.body = vec![0; len];
    stream.read_exact(&mut reply.body)?;
    Ok(reply)
}

/// Sends `request` (a head ending in a blank line) on a new plain connection and reads the
/// answer.
fn raw(s: &Server, request: &str) -> Reply {
    let mut stream = TcpStream::connect(authority(s)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    read_reply(&mut stream).expect("reply")
}

fn get_with_host(s: &Server, path: &str, host: &str) -> Reply {
    raw(s, &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n"))
}

// ---------------------------------------------------------------------------------------- TLS

fn ring() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test CA that issues server certificates for `localhost` and `127.0.0.1`.
struct Ca {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

impl Ca {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        params.distinguished_name.push(rcgen::DnType::CommonName, "Trainyard test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self { params, key, cert }
    }

    /// A new server certificate and key, as PEM, and the certificate's fingerprint.
    fn issue(&self, serial: u64) -> (String, String, String) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("trainyard test server {serial}"));
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem(), fingerprint(cert.der()))
    }

    fn client(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let config = ClientConfig::builder_with_provider(ring()).with_safe_default_protocol_versions().unwrap();
        Arc::new(config.with_root_certificates(roots).with_no_client_auth())
    }
}

/// Writes a file whole (a temporary file renamed over it), as certificate renewal tools do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A client that accepts exactly the certificate with this fingerprint: how a client pins a
/// self-signed server.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!("certificate {} is not the pinned one", fingerprint(end_entity))))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn pinned_client(fingerprint: &str) -> Arc<ClientConfig> {
    let verifier = Arc::new(Pinned { fingerprint: fingerprint.to_owned(), provider: ring() });
    let config = ClientConfig::builder_with_provider(ring()).with_safe_default_protocol_versions().unwrap();
    Arc::new(config.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection to the server, handshake done, verified by `config` for `127.0.0.1`.
fn tls_connect(s: &Server, config: &Arc<ClientConfig>) -> Result<Tls, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port(s))).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).map_err(|e| e.to_string())?;
    }
    Ok(tls)
}

fn served_fingerprint(tls: &Tls) -> String {
    fingerprint(tls.conn.peer_certificates().and_then(|c| c.first()).expect("a server certificate"))
}

/// `GET /health` on an open TLS connection, kept alive.
fn tls_health(tls: &mut Tls) -> Reply {
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    tls.flush().unwrap();
    read_reply(tls).expect("a reply over TLS")
}

fn banner_fingerprint(s: &Server) -> String {
    s.banner
        .iter()
        .find_map(|l| l.strip_prefix("TLS certificate SHA-256 fingerprint: "))
        .unwrap_or_else(|| panic!("no fingerprint printed: {:?}", s.banner))
        .to_owned()
}

/// A server on HTTPS with `ca`'s certificate number 1 in files of a fresh directory (kept alive
/// by the returned handle), started with `extra` flags too; and the certificate and key files
/// and that certificate's fingerprint.
fn tls_server(ca: &Ca, extra: &[&str]) -> (Server, tempfile::TempDir, (PathBuf, PathBuf), String) {
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (cert, key, fp) = ca.issue(1);
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    let mut extra_args = vec!["--tls-cert".into(), cert_file.display().to_string(), "--tls-key".into(), key_file.display().to_string()];
    extra_args.extend(extra.iter().map(|a| (*a).to_owned()));
    let s = Server::start_with(Opts { extra_args, ..Opts::default() });
    (s, dir, (cert_file, key_file), fp)
}

/// Connects until a new connection is served the certificate `fingerprint` (30 s at most, else
/// `what` failed), checking on the way that each is served one of `allowed`; returns that
/// connection and how long it took.
fn until_served(s: &Server, client: &Arc<ClientConfig>, fingerprint: &str, allowed: &[&str], what: &str) -> (Tls, Duration) {
    let started = Instant::now();
    loop {
        let fresh = tls_connect(s, client).expect("handshakes keep succeeding during the renewal");
        let served = served_fingerprint(&fresh);
        if served == fingerprint {
            return (fresh, started.elapsed());
        }
        assert!(allowed.contains(&served.as_str()), "{what}: served {served}");
        assert!(started.elapsed() < Duration::from_secs(30), "{what}: the new certificate was not served");
        std::thread::sleep(POLL);
    }
}

#[test]
fn https_serves_a_renewed_certificate_without_a_restart_or_a_dropped_connection() {
    let ca = Ca::new();
    let (s, _dir, (cert_file, key_file), fp1) = tls_server(&ca, &["--keep-alive-secs", "300"]);
    assert!(s.base.starts_with("https://127.0.0.1:"), "{}", s.base);
    assert_eq!(banner_fingerprint(&s), fp1);
    let client = ca.client();
    let mut kept = tls_connect(&s, &client).expect("TLS handshake with the CA's certificate");
    assert_eq!(served_fingerprint(&kept), fp1);
    let reply = tls_health(&mut kept);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["status"], "healthy");

    // Plain HTTP on the HTTPS port gets no answer as HTTP.
    let mut plain = TcpStream::connect(authority(&s)).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    plain.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    assert!(read_reply(&mut plain).is_err(), "plain HTTP must not be answered");

    // The renewal: both files replaced. A new connection soon gets the new certificate.
    let (cert2, key2, fp2) = ca.issue(2);
    replace(&key_file, &key2);
    replace(&cert_file, &cert2);
    let (_, took) = until_served(&s, &client, &fp2, &[&fp1], "the renewal");
    eprintln!("renewed certificate served after {took:?}");

    // The connection opened before the renewal still works.
    let reply = tls_health(&mut kept);
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[test]
fn sighup_reloads_the_certificate_when_the_files_are_not_watched() {
    let ca = Ca::new();
    let (s, _dir, (cert_file, key_file), fp1) = tls_server(&ca, &["--tls-reload-secs", "0"]);
    let client = ca.client();
    let (cert2, key2, fp2) = ca.issue(2);
    replace(&key_file, &key2);
    replace(&cert_file, &cert2);
    // Without polling, only SIGHUP brings the new pair in.
    assert_eq!(served_fingerprint(&tls_connect(&s, &client).unwrap()), fp1);
    let ok = std::process::Command::new("kill").args(["-HUP", &s.child.id().to_string()]).status().unwrap().success();
    assert!(ok);
    let (mut fresh, took) = until_served(&s, &client, &fp2, &[&fp1], "SIGHUP");
    assert_eq!(tls_health(&mut fresh).status, 200);
    eprintln!("SIGHUP reload served after {took:?}");
}

#[test]
fn tls_flags_go_together() {
    let out = std::process::Command::new(crate::harness::bin())
        .args(["serve", "--port", "0", "--tls-cert", "/nonexistent/cert.pem"])
        .env_remove("TRAINYARD_TLS_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-key"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::harness::bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--port", "0", "--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loading the TLS certificate") && err.contains("/nonexistent/cert.pem"), "{err}");
}

#[test]
fn the_self_signed_certificate_is_the_one_whose_fingerprint_is_printed_and_survives_restarts() {
    let opts = || Opts { extra_args: vec!["--tls-self-signed".into()], ..Opts::default() };
    let mut s = Server::start_with(opts());
    assert!(s.base.starts_with("https://"), "{}", s.base);
    let printed = banner_fingerprint(&s);
    let mut tls = tls_connect(&s, &pinned_client(&printed)).expect("the pinned fingerprint is the served certificate");
    assert_eq!(tls_health(&mut tls).status, 200);
    assert!(tls_connect(&s, &pinned_client(&"00:".repeat(32))).is_err());
    assert!(s.data_dir.join("tls/cert.pem").is_file() && s.data_dir.join("tls/key.pem").is_file());

    let tmp = s.take_tmp();
    let data_dir = s.kill9();
    let again = Server::start_with(Opts { data_dir: Some(data_dir), ..opts() });
    assert_eq!(banner_fingerprint(&again), printed, "the certificate is reused");
    let mut tls = tls_connect(&again, &pinned_client(&printed)).unwrap();
    assert_eq!(tls_health(&mut tls).status, 200);
    drop(tmp);
}

// ----------------------------------------------------------------------------------- timeouts

fn staged_files(s: &Server) -> Vec<String> {
    match std::fs::read_dir(s.data_dir.join("datasets/.staging")) {
        Ok(dir) => dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn an_upload_that_stalls_gets_408_and_leaves_no_staged_file() {
    let s = Server::start_with(Opts { extra_args: vec!["--body-idle-timeout-secs".into(), "2".into()], ..Opts::default() });
    let (content_type, body) = multipart("stall.csv", &vec![b'1'; 200_000]);
    let mut stream = TcpStream::connect(authority(&s)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "POST /api/v1/datasets?dataset_name=stalled HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body[..100_000]).unwrap();
    let sent = Instant::now();
    // The part sent is staged while the rest is awaited.
    while staged_files(&s).is_empty() {
        assert!(sent.elapsed() < Duration::from_secs(30), "the upload was never staged");
        std::thread::sleep(POLL);
    }
    // The connection can still carry an answer, so the 408 comes in the envelope.
    let reply = read_reply(&mut stream).expect("an answer to the stalled upload");
    assert_eq!(reply.status, 408, "{reply:?}");
    assert_eq!(envelope_code(&reply.json()), "REQUEST_TIMEOUT");
    let waited = sent.elapsed();
    eprintln!("stalled upload answered after {waited:?}");
    assert!(waited >= Duration::from_millis(1900) && waited < Duration::from_secs(20), "{waited:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !staged_files(&s).is_empty() {
        assert!(Instant::now() < deadline, "staged file left behind: {:?}", staged_files(&s));
        std::thread::sleep(POLL);
    }
    assert_eq!(s.get("/health").0, 200);
    let (_, list) = s.get("/api/v1/datasets");
    assert_eq!(list, serde_json::json!([]));
}

#[test]
fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let s = Server::start_with(Opts { extra_args: vec!["--request-header-timeout-secs".into(), "1".into()], ..Opts::default() });
    let mut stream = TcpStream::connect(authority(&s)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ").unwrap();
    let sent = Instant::now();
    let mut rest = Vec::new();
    // A bare 408 (from actix, before any route) and the close.
    let _ = stream.read_to_end(&mut rest);
    let waited = sent.elapsed();
    eprintln!("unfinished headers cut off after {waited:?}");
    // Well under the default of 10 s: the flag took effect.
    assert!(waited >= Duration::from_millis(500) && waited < Duration::from_secs(5), "{waited:?}");
    assert!(rest.starts_with(b"HTTP/1.1 408"), "{:?}", String::from_utf8_lossy(&rest));
    assert_eq!(s.get("/health").0, 200);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_keep_alive_limit() {
    let s = Server::start_with(Opts { extra_args: vec!["--keep-alive-secs".into(), "1".into()], ..Opts::default() });
    let mut stream = TcpStream::connect(authority(&s)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    assert_eq!(read_reply(&mut stream).unwrap().status, 200);
    let answered = Instant::now();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    let waited = answered.elapsed();
    eprintln!("idle keep-alive connection closed after {waited:?}");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    // Well under the default of 5 s: the flag took effect.
    assert!(waited >= Duration::from_millis(500) && waited < Duration::from_secs(4), "{waited:?}");
}

// ----------------------------------------------------------------------- Host check and CORS

#[test]
fn a_rebound_host_gets_421_and_loopback_or_allowed_hosts_pass() {
    let s = Server::start();
    let port = port(&s);
    for path in ["/health", "/api/v1/models"] {
        for host in ["evil.example", &format!("evil.example:{port}"), "127.0.0.1.evil.example", "EVIL.example."] {
            let reply = get_with_host(&s, path, host);
            assert_eq!(reply.status, 421, "{host} {path}: {reply:?}");
            assert_eq!(envelope_code(&reply.json()), "HOST_NOT_ALLOWED");
        }
    }
    let reply = raw(&s, "GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(reply.status, 421, "no Host at all: {reply:?}");
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}"), "LocalHost".to_owned()] {
        let reply = get_with_host(&s, "/api/v1/models", &host);
        assert_eq!(reply.status, 200, "{host}: {reply:?}");
    }
    assert_eq!(get_with_host(&s, "/health", "trainyard.lan").status, 421);

    let listed =
        Server::start_with(Opts { extra_args: vec!["--allowed-hosts".into(), "trainyard.lan,10.1.2.3".into()], ..Opts::default() });
    let port = self::port(&listed);
    for host in [format!("trainyard.lan:{port}"), "TRAINYARD.LAN".to_owned(), "10.1.2.3".to_owned(), format!("localhost:{port}")] {
        assert_eq!(get_with_host(&listed, "/health", &host).status, 200, "{host}");
    }
    assert_eq!(get_with_host(&listed, "/health", "evil.example").status, 421);

    // Bound to every address, the check is off unless hosts are listed.
    let open = Server::start_with(Opts { extra_args: vec!["--host".into(), "0.0.0.0".into()], ..Opts::default() });
    let reply = raw(&open, "GET /health HTTP/1.1\r\nHost: anything.example\r\nConnection: close\r\n\r\n");
    assert_eq!(reply.status, 200, "{reply:?}");
}

fn preflight(s: &Server, origin: &str) -> Reply {
    raw(
        s,
        &format!(
            "OPTIONS /api/v1/models HTTP/1.1\r\nHost: localhost\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, x-api-key\r\nConnection: close\r\n\r\n"
        ),
    )
}

fn get_from(s: &Server, origin: &str) -> Reply {
    raw(s, &format!("GET /api/v1/models HTTP/1.1\r\nHost: localhost\r\nOrigin: {origin}\r\nX-API-Key: {KEY}\r\nConnection: close\r\n\r\n"))
}

#[test]
fn cors_headers_go_only_to_listed_origins() {
    let none = Server::start();
    for reply in [preflight(&none, "https://app.example"), get_from(&none, "https://app.example")] {
        assert!(reply.headers.iter().all(|(n, _)| !n.starts_with("access-control-")), "{reply:?}");
    }
    assert_eq!(get_from(&none, "https://app.example").status, 200);

    let s = Server::start_with(Opts {
        extra_args: vec!["--cors-origins".into(), "https://app.example,http://localhost:3000".into()],
        ..Opts::default()
    });
    let ok = preflight(&s, "https://app.example");
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.header("access-control-allow-origin"), Some("https://app.example"));
    let allowed = ok.header("access-control-allow-headers").unwrap_or_default().to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("x-api-key"), "{allowed}");
    let methods = ok.header("access-control-allow-methods").unwrap_or_default();
    // PATCH too: the queue's reordering and live changes of a running session use it.
    assert!(methods.contains("POST") && methods.contains("PATCH"), "{ok:?}");
    let reply = get_from(&s, "http://localhost:3000");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), Some("http://localhost:3000"));

    for reply in [preflight(&s, "https://evil.example"), get_from(&s, "https://evil.example"), get_from(&s, "https://app.example.evil")] {
        assert!(reply.header("access-control-allow-origin").is_none(), "{reply:?}");
    }
    let refused = preflight(&s, "https://evil.example");
    assert!(refused.status >= 400 && refused.status < 500, "{refused:?}");
    envelope_code(&refused.json());
    assert_eq!(get_from(&s, "https://evil.example").status, 200, "clients that are not browsers are unaffected");
}
