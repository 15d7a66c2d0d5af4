//! The client's HTTP side: ureq agents (rustls on ring; the public roots, or `--ca-cert`),
//! the key as a Bearer header, streaming multipart uploads and downloads, and the mapping of
//! every answer to a [`Failure`].

use std::{
    fs::File,
    io::{self, Cursor, Read, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use indicatif::ProgressBar;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Failure;
use crate::cli::Connection;

/// How long connecting to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an answer may keep the client waiting for its next bytes (text generation and
/// large uploads are slow, a dead server is not).
const READ_TIMEOUT: Duration = Duration::from_secs(600);
/// How long an event stream may stay silent; the server sends a comment line every 15 s by
/// default, so this is a broken connection (the stream is then opened again).
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(75);

/// A server and the key to show it.
pub struct Client {
    base: String,
    key: Option<String>,
    agent: ureq::Agent,
    stream_agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).field("key", &self.key.as_ref().map(|_| "<hidden>")).finish_non_exhaustive()
    }
}

/// What a download wrote.
#[derive(Debug)]
pub struct Downloaded {
    /// The file written, `-` for standard output.
    pub path: PathBuf,
    pub size_bytes: u64,
    /// SHA-256 of what was received, in hex.
    pub sha256: String,
}

impl Client {
    /// A client of `conn.server`, trusting the public roots, or only the certificates of
    /// `conn.ca_cert` when given (as curl's `--cacert` does).
    ///
    /// # Errors
    /// When the `--ca-cert` file cannot be read or holds no certificate.
    pub fn new(conn: &Connection) -> Result<Self, Failure> {
        let tls = tls_config(conn.ca_cert.as_deref())?;
        let agent = |read: Duration| {
            let builder = ureq::AgentBuilder::new()
                .timeout_connect(CONNECT_TIMEOUT)
                .timeout_read(read)
                .timeout_write(READ_TIMEOUT)
                .user_agent(&format!("trainyard/{}", env!("CARGO_PKG_VERSION")));
            let builder = match &tls {
                Some(config) => builder.tls_config(Arc::clone(config)),
                None => builder,
            };
            builder.build()
        };
        Ok(Self {
            base: conn.server.clone(),
            key: conn.key.clone().filter(|k| !k.trim().is_empty()),
            agent: agent(READ_TIMEOUT),
            stream_agent: agent(STREAM_READ_TIMEOUT),
        })
    }

    fn request(&self, agent: &ureq::Agent, method: &str, path: &str) -> ureq::Request {
        let req = agent.request(method, &format!("{}{path}", self.base));
        match &self.key {
            Some(key) => req.set("Authorization", &format!("Bearer {}", key.trim())),
            None => req,
        }
    }

    /// A request to `path` (which starts with `/`), with the key.
    pub fn req(&self, method: &str, path: &str) -> ureq::Request {
        self.request(&self.agent, method, path)
    }

    /// Sends `req` (with `body` as JSON when given) and maps an error answer to a [`Failure`].
    ///
    /// # Errors
    /// See [`Failure`].
    pub fn send(&self, req: ureq::Request, body: Option<&Value>) -> Result<ureq::Response, Failure> {
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        res.map_err(|e| self.failure(e))
    }

    /// `GET path` answering JSON.
    ///
    /// # Errors
    /// See [`Failure`].
    pub fn get_json(&self, path: &str) -> Result<Value, Failure> {
        json_of(self.send(self.req("GET", path), None)?)
    }

    /// `method path` with an optional JSON body, answering JSON.
    ///
    /// # Errors
    /// See [`Failure`].
    pub fn call_json(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Failure> {
        json_of(self.send(self.req(method, path), body)?)
    }

    /// Opens a session's event stream, after `last_event_id` when given.
    ///
    /// # Errors
    /// See [`Failure`].
    pub fn events(&self, session: &str, last_event_id: Option<&str>) -> Result<ureq::Response, Failure> {
        let mut req = self.request(&self.stream_agent, "GET", &format!("/api/v1/training/{}/events", segment(session)));
        if let Some(id) = last_event_id {
            req = req.set("Last-Event-ID", id);
        }
        self.send(req.set("Accept", "text/event-stream"), None)
    }

    /// Uploads `file` as the multipart field `file` to `path` with `query`, streaming it from
    /// disk through `bar`.
    ///
    /// # Errors
    /// See [`Failure`]; a file that cannot be read is [`Failure::Local`].
    pub fn upload(&self, path: &str, query: &[(&str, &str)], file: &Path, bar: &ProgressBar) -> Result<Value, Failure> {
        let local = |e: io::Error| Failure::Local(format!("cannot read {}: {e}", file.display()));
        let f = File::open(file).map_err(local)?;
        let meta = f.metadata().map_err(local)?;
        if !meta.is_file() {
            return Err(Failure::Local(format!("{} is not a file", file.display())));
        }
        let len = meta.len();
        let name: String = file
            .file_name()
            .map(|n| n.to_string_lossy().chars().map(|c| if c == '"' || c.is_control() { '_' } else { c }).collect())
            .unwrap_or_else(|| "upload".to_owned());
        let boundary = boundary();
        let preamble = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        );
        let epilogue = format!("\r\n--{boundary}--\r\n");
        let total = preamble.len() as u64 + len + epilogue.len() as u64;
        bar.set_length(len);
        let body = Cursor::new(preamble).chain(bar.wrap_read(f.take(len))).chain(Cursor::new(epilogue));
        let mut req = self
            .req("POST", path)
            .set("Content-Type", &format!("multipart/form-data; boundary={boundary}"))
            .set("Content-Length", &total.to_string());
        for (k, v) in query {
            req = req.query(k, v);
        }
        let res = req.send(body);
        bar.finish_and_clear();
        json_of(res.map_err(|e| self.failure(e))?)
    }

    /// Downloads `path` into `output` (`-`: standard output; a directory: the server's file
    /// name in it), or into the server's file name (else `fallback_name`) in the current
    /// directory. A file is written under a temporary name beside it and renamed when
    /// complete; when the server sends a `"sha256-<hex>"` ETag, what was received must have
    /// that hash.
    ///
    /// # Errors
    /// See [`Failure`]; a file that cannot be written or a damaged download is
    /// [`Failure::Local`], a download that breaks off [`Failure::Unreachable`].
    pub fn download(&self, path: &str, output: Option<&Path>, fallback_name: &str, bar: &ProgressBar) -> Result<Downloaded, Failure> {
        let res = self.send(self.req("GET", path), None)?;
        let length = res.header("content-length").and_then(|l| l.parse::<u64>().ok());
        let etag_hash = res.header("etag").and_then(|e| e.trim_matches('"').strip_prefix("sha256-")).map(str::to_ascii_lowercase);
        let served_name = res.header("content-disposition").and_then(disposition_file_name).unwrap_or_else(|| fallback_name.to_owned());
        let to_stdout = output.is_some_and(|o| o.as_os_str() == "-");
        let target = match output {
            Some(o) if o.is_dir() => o.join(&served_name),
            Some(o) => o.to_path_buf(),
            None => PathBuf::from(&served_name),
        };
        if let Some(len) = length {
            bar.set_length(len);
        }
        let mut reader = bar.wrap_read(res.into_reader());
        let result = if to_stdout {
            let mut out = HashingWriter::new(io::stdout().lock());
            self.copy(&mut reader, &mut out, "standard output")
                .and_then(|()| out.inner.flush().map_err(|e| Failure::Local(format!("cannot write standard output: {e}"))))
                .map(|()| out.digest())
                .and_then(|(size, sha256)| check(length, etag_hash.as_deref(), size, &sha256).map(|()| (size, sha256)))
        } else {
            self.save(&mut reader, &target, length, etag_hash.as_deref())
        };
        bar.finish_and_clear();
        let (size_bytes, sha256) = result?;
        Ok(Downloaded { path: if to_stdout { PathBuf::from("-") } else { target }, size_bytes, sha256 })
    }

    /// Writes `reader` to a temporary file beside `target`, checks it, and renames it to
    /// `target`.
    fn save(&self, reader: &mut impl Read, target: &Path, length: Option<u64>, etag_hash: Option<&str>) -> Result<(u64, String), Failure> {
        let local = |e: io::Error| Failure::Local(format!("cannot write {}: {e}", target.display()));
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new().prefix(".trainyard-download-").tempfile_in(&dir).map_err(local)?;
        let mut out = HashingWriter::new(tmp);
        self.copy(reader, &mut out, &target.display().to_string())?;
        let (size, sha256) = out.digest();
        check(length, etag_hash, size, &sha256)?;
        let tmp = out.inner;
        tmp.as_file().sync_all().map_err(local)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(local)?;
        }
        tmp.persist(target).map_err(|e| local(e.error))?;
        Ok((size, sha256))
    }

    /// Copies a download to `to`, telling a broken connection from a failing write.
    fn copy(&self, from: &mut impl Read, to: &mut impl Write, what: &str) -> Result<(), Failure> {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::Unreachable(format!("the download from {} broke off: {e}", self.base))),
            };
            to.write_all(&buf[..n]).map_err(|e| Failure::Local(format!("cannot write {what}: {e}")))?;
        }
    }

    /// The failure an error of ureq stands for.
    fn failure(&self, err: ureq::Error) -> Failure {
        match err {
            ureq::Error::Status(status, res) => {
                let body = res.into_string().unwrap_or_default();
                let (message, fields) = envelope(status, &body);
                match status {
                    401 if self.key.is_none() => {
                        Failure::KeyRefused(format!("{} needs an API key: pass --key or set TRAINYARD_KEY ({message})", self.base))
                    }
                    401 => Failure::KeyRefused(format!(
                        "the key was refused by {}: {message} (pass the right key with --key or TRAINYARD_KEY)",
                        self.base
                    )),
                    403 => Failure::KeyRefused(format!("the key was refused for this request: {message}")),
                    _ => Failure::Api { status, message, fields },
                }
            }
            ureq::Error::Transport(t) => {
                // ureq's own text starts with the whole URL; the base is enough.
                let mut text = t.kind().to_string();
                for part in t.message().map(str::to_owned).into_iter().chain(std::error::Error::source(&t).map(ToString::to_string)) {
                    text.push_str(": ");
                    text.push_str(&part);
                }
                let mut message =
                    format!("cannot reach the server at {}: {text}; is the server running? (set --server or TRAINYARD_URL)", self.base);
                if self.base.starts_with("https://") && text.to_ascii_lowercase().contains("certificate") {
                    message.push_str("; for a server with a self-signed certificate, pass it with --ca-cert");
                }
                Failure::Unreachable(message)
            }
        }
    }
}

/// With `--ca-cert`, a rustls configuration (ring) trusting only its certificates; without,
/// none: ureq's own, on the public (webpki) roots.
fn tls_config(ca: Option<&Path>) -> Result<Option<Arc<rustls::ClientConfig>>, Failure> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let Some(path) = ca else { return Ok(None) };
    let bad = |e: &dyn std::fmt::Display| Failure::Local(format!("--ca-cert {}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))?.collect::<Result<Vec<_>, _>>().map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no PEM certificate in the file"));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| bad(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::Local(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

/// A received download against its declared length and its ETag's hash.
fn check(length: Option<u64>, etag_hash: Option<&str>, size: u64, sha256: &str) -> Result<(), Failure> {
    if let Some(len) = length.filter(|l| *l != size) {
        return Err(Failure::Unreachable(format!("the download broke off after {size} of {len} bytes")));
    }
    if let Some(expected) = etag_hash.filter(|h| *h != sha256) {
        return Err(Failure::Local(format!("the download is damaged: its SHA-256 is {sha256}, the server's is {expected}")));
    }
    Ok(())
}

/// A successful answer's JSON body.
fn json_of(res: ureq::Response) -> Result<Value, Failure> {
    let url = res.get_url().to_owned();
    res.into_json::<Value>().map_err(|e| Failure::Local(format!("the answer of {url} is not JSON: {e}")))
}

/// The message and field errors of an error answer: the envelope's `error.message` (else its
/// `detail`) and `error.details.fields`; a body that is no envelope is shown as it is.
fn envelope(status: u16, body: &str) -> (String, Vec<String>) {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        let text: String = body.trim().chars().take(300).collect();
        return (if text.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {text}") }, Vec::new());
    };
    let message =
        v["error"]["message"].as_str().or_else(|| v["detail"].as_str()).map_or_else(|| format!("HTTP {status}: {v}"), str::to_owned);
    let fields = v["error"]["details"]["fields"]
        .as_array()
        .map(|fields| {
            fields
                .iter()
                .map(|f| format!("{}: {}", f["field"].as_str().unwrap_or("?"), f["message"].as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    (message, fields)
}

/// A path segment with everything but unreserved characters percent-encoded.
#[must_use]
pub fn segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The file name of a `Content-Disposition: attachment; filename="..."` header, only when it
/// is a plain name (no directory part).
fn disposition_file_name(header: &str) -> Option<String> {
    let (_, rest) = header.split_once("filename=")?;
    let name = match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next()?,
        None => rest.split(';').next()?.trim(),
    };
    let plain = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\']) && !name.chars().any(char::is_control);
    plain.then(|| name.to_owned())
}

/// A multipart boundary no file is likely to hold: random bits from the standard library's
/// randomly keyed hasher.
fn boundary() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut bits = String::new();
    for i in 0..2u8 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(i);
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        bits.push_str(&format!("{:016x}", h.finish()));
    }
    format!("trainyard-{bits}")
}

/// Counts and hashes what passes through.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), size: 0 }
    }

    /// The bytes written and their SHA-256 in hex.
    fn digest(&self) -> (u64, String) {
        (self.size, hex(&self.hasher.clone().finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_give_the_envelope_message_and_field_errors() {
        let body = r#"{"error":{"code":"INVALID_CONFIG","message":"invalid training configuration","details":{"fields":[{"field":"epochs","message":"must be 1 to 1000"}]}},"detail":"invalid training configuration"}"#;
        assert_eq!(envelope(400, body), ("invalid training configuration".to_owned(), vec!["epochs: must be 1 to 1000".to_owned()]));
        assert_eq!(envelope(404, r#"{"detail":"Not Found"}"#).0, "Not Found");
        assert_eq!(envelope(502, "Bad Gateway\n").0, "HTTP 502: Bad Gateway");
        assert_eq!(envelope(500, "").0, "HTTP 500");
    }

    #[test]
    fn path_segments_are_encoded_and_only_plain_file_names_are_taken() {
        assert_eq!(segment("sess_ab-1.x"), "sess_ab-1.x");
        assert_eq!(segment("a/../b c"), "a%2F..%2Fb%20c");
        assert_eq!(disposition_file_name(r#"attachment; filename="tiny.safetensors""#).as_deref(), Some("tiny.safetensors"));
        assert_eq!(disposition_file_name("attachment; filename=m.onnx").as_deref(), Some("m.onnx"));
        assert_eq!(disposition_file_name(r#"attachment; filename="../../etc/passwd""#), None);
        assert_eq!(disposition_file_name(r#"attachment; filename="..""#), None);
        assert_eq!(disposition_file_name("attachment"), None);
    }

    #[test]
    fn boundaries_differ() {
        assert_ne!(boundary(), boundary());
    }
}
