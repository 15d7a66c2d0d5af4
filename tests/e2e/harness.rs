//! Starts the real `trainyard` binary on a free port with its own data directory, and talks
//! HTTP to it.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;

/// The key every test server accepts unless a test configures otherwise.
pub const KEY: &str = "test-key-0123456789";

/// How long a server gets to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running server. Killed on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    /// Standard output lines printed before "listening on".
    pub banner: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

/// Options for starting a server.
pub struct Opts {
    pub keys: Option<String>,
    pub extra_args: Vec<String>,
    pub data_dir: Option<PathBuf>,
    /// Environment variables for the server (and so its training processes).
    pub env: Vec<(String, String)>,
    /// Where the server's standard error (its log) goes; the test's own when `None`.
    pub stderr_file: Option<PathBuf>,
}

impl Default for Opts {
    fn default() -> Self {
        Self { keys: Some(KEY.to_owned()), extra_args: Vec::new(), data_dir: None, env: Vec::new(), stderr_file: None }
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_trainyard")
}

impl Server {
    pub fn start() -> Self {
        Self::start_with(Opts::default())
    }

    pub fn start_with(opts: Opts) -> Self {
        let (tmp, data_dir) = match opts.data_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir().expect("temp dir");
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--port", "0", "--host", "127.0.0.1", "--memory-reserve-mb", "0", "--log-level", "warn"])
            .args(&opts.extra_args)
            .env_remove("API_KEYS")
            .env_remove("DATABASE_PATH")
            .env_remove("MODELS_DIR")
            .env_remove("DATASETS_DIR")
            .env_remove("MAX_CONCURRENT_SESSIONS")
            .env_remove("API_PORT")
            .env_remove("API_HOST")
            // A developer's own bot must not be sent the tests' sessions.
            .env_remove("TELEGRAM_BOT_TOKEN")
            .env_remove("TELEGRAM_CHAT_IDS")
            .env_remove("TELEGRAM_API_URL")
            .env_remove("TELEGRAM_EVERY_EPOCHS")
            .stdout(Stdio::piped())
            .stderr(match &opts.stderr_file {
                Some(path) => Stdio::from(std::fs::File::create(path).expect("create the log file")),
                None => Stdio::inherit(),
            });
        if let Some(keys) = &opts.keys {
            cmd.env("API_KEYS", keys);
        }
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().expect("spawn trainyard");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut banner = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(Some((url.to_owned(), std::mem::take(&mut banner))));
                } else {
                    banner.push(line);
                }
            }
            let _ = tx.send(None);
        });
        let (base, banner) = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(found)) => found,
            other => {
                let _ = child.kill();
                panic!("trainyard did not start: {other:?}");
            }
        };
        Self { child, base, data_dir, banner, _tmp: tmp }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn agent() -> ureq::Agent {
        ureq::AgentBuilder::new().timeout(Duration::from_secs(120)).build()
    }

    /// A request with the test key.
    pub fn req(&self, method: &str, path: &str) -> ureq::Request {
        Self::agent().request(method, &self.url(path)).set("Authorization", &format!("Bearer {KEY}"))
    }

    /// A request without a key.
    pub fn anon(&self, method: &str, path: &str) -> ureq::Request {
        Self::agent().request(method, &self.url(path))
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        call(self.req("GET", path), None)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        call(self.req("POST", path), Some(body))
    }

    pub fn patch_json(&self, path: &str, body: &Value) -> (u16, Value) {
        call(self.req("PATCH", path), Some(body))
    }

    pub fn post(&self, path: &str) -> (u16, Value) {
        call(self.req("POST", path), None)
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        call(self.req("DELETE", path), None)
    }

    /// Uploads `bytes` as multipart field `file` named `file_name`.
    pub fn upload(&self, path: &str, file_name: &str, bytes: &[u8]) -> (u16, Value) {
        let (content_type, body) = multipart(file_name, bytes);
        status_json(self.req("POST", path).set("Content-Type", &content_type).send_bytes(&body))
    }

    pub fn upload_file(&self, path: &str, file: &Path) -> (u16, Value) {
        let bytes = std::fs::read(file).expect("read upload");
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        self.upload(path, name, &bytes)
    }

    /// Raw bytes of a GET.
    pub fn get_bytes(&self, path: &str) -> (u16, Vec<u8>, Option<String>) {
        let resp = match self.req("GET", path).call() {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("GET {path}: {e}"),
        };
        let status = resp.status();
        let disposition = resp.header("content-disposition").map(str::to_owned);
        let mut bytes = Vec::new();
        resp.into_reader().read_to_end(&mut bytes).expect("body");
        (status, bytes, disposition)
    }

    /// Waits (server-side long polls of a minute) until the session ends, for at most 15
    /// minutes; returns its status.
    pub fn wait_ended(&self, session: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(900);
        loop {
            let (code, status) = self.get(&format!("/api/v1/training/{session}/status?wait_seconds=60"));
            assert_eq!(code, 200, "{status}");
            let state = status["state"].as_str().unwrap_or_default();
            if ["completed", "failed", "stopped"].contains(&state) {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "session did not end: {status}");
        }
    }

    /// Polls the session's status until `done` holds for it, for at most `limit`; returns the
    /// last status.
    pub fn status_until(&self, session: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + limit;
        loop {
            // A short long-poll: the server answers at once when the session ends or an epoch
            // finishes, else after a second, so this loop never spins.
            let (code, status) = self.get(&format!("/api/v1/training/{session}/status?wait_seconds=1"));
            assert_eq!(code, 200, "{status}");
            if done(&status) || std::time::Instant::now() >= deadline {
                return status;
            }
        }
    }

    /// Sends SIGKILL.
    pub fn kill9(mut self) -> PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.data_dir.clone()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success();
        assert!(ok, "kill -TERM failed");
        self.child.wait().expect("wait")
    }

    /// Keeps the data directory alive past this server (for restarts).
    pub fn take_tmp(&mut self) -> Option<tempfile::TempDir> {
        self._tmp.take()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn call(req: ureq::Request, body: Option<&Value>) -> (u16, Value) {
    let res = match body {
        Some(b) => req.send_json(b.clone()),
        None => req.call(),
    };
    status_json(res)
}

pub fn status_json(res: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let resp = match res {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    let status = resp.status();
    let ct = resp.header("content-type").unwrap_or_default().to_owned();
    let text = resp.into_string().unwrap_or_default();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("status {status}: non-JSON body ({ct}): {text:.200}"));
    (status, value)
}

pub fn multipart(file_name: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----trainyard-test-boundary-7f3a9c";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Asserts the error envelope and returns its code.
pub fn envelope_code(v: &Value) -> String {
    let message = v["error"]["message"].as_str().unwrap_or_else(|| panic!("no error.message in {v}"));
    assert_eq!(v["detail"].as_str(), Some(message), "detail must equal error.message: {v}");
    assert!(v["error"].get("details").is_some(), "no error.details in {v}");
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("no error.code in {v}")).to_owned()
}

/// Uploads the bundled iris (once per server) and starts an mlp on it for `epochs`; returns
/// the session id.
pub fn start_iris(s: &Server, epochs: u32) -> String {
    let (code, v) = s.upload_file("/api/v1/datasets?dataset_name=iris", &example("iris.csv"));
    assert!(code == 200 || code == 409, "{v}");
    let (code, v) = s.post_json(
        "/api/v1/training/start",
        &serde_json::json!({"model_architecture": "mlp", "dataset_name": "iris", "epochs": epochs, "batch_size": 16, "learning_rate": 0.01}),
    );
    assert_eq!(code, 200, "{v}");
    v["session_id"].as_str().unwrap().to_owned()
}

pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/datasets").join(name)
}

thread_local! {
    static THREAD_SERVER: std::cell::OnceCell<Server> = const { std::cell::OnceCell::new() };
}

/// Runs `f` with this test thread's own server, started on first use and killed when the
/// thread ends. quickcheck properties are plain `fn`s, so they reach their server this way.
/// Its failure throttle is off: properties send wrong keys on purpose, many a minute.
pub fn with_thread_server<R>(f: impl FnOnce(&Server) -> R) -> R {
    let start = || Server::start_with(Opts { extra_args: vec!["--auth-failures-per-minute".into(), "0".into()], ..Opts::default() });
    THREAD_SERVER.with(|cell| f(cell.get_or_init(start)))
}

/// A name no other case of this run has used.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!("{prefix}{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// A zip of stored entries, in order.
pub fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes) in entries {
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zip.start_file(*name, options).unwrap();
        std::io::Write::write_all(&mut zip, bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// `bytes` gzipped at the best compression.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, bytes).unwrap();
    gz.finish().unwrap()
}

/// A PNG of `h x w` pixels with `c` channels (1 grey, 3 RGB, else RGBA), from HWC bytes.
pub fn png(px: &[u8], h: usize, w: usize, c: usize) -> Vec<u8> {
    let color = match c {
        1 => image::ExtendedColorType::L8,
        3 => image::ExtendedColorType::Rgb8,
        _ => image::ExtendedColorType::Rgba8,
    };
    let mut out = Vec::new();
    let (w, h) = (u32::try_from(w).unwrap(), u32::try_from(h).unwrap());
    image::ImageEncoder::write_image(image::codecs::png::PngEncoder::new(&mut out), px, w, h, color).unwrap();
    out
}

/// An HTTP answer read off a raw connection: status, header lines (lower-case names), body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The answer whose head (status line and header lines, without the blank line) is `head`.
    pub fn of_head(head: &[u8], body: Vec<u8>) -> Self {
        let text = String::from_utf8_lossy(head).into_owned();
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status line {status_line:?}"));
        let headers = lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned())).collect();
        Self { status, headers, body }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("status {}: non-JSON body {:?}", self.status, String::from_utf8_lossy(&self.body)))
    }
}

/// `host:port` of the server, without the scheme.
pub fn authority(s: &Server) -> String {
    s.base.split_once("://").map(|(_, a)| a.trim_end_matches('/').to_owned()).expect("base URL")
}

/// A request as the receiver read it.
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map_or_else(|| panic!("no {name} header"), |(_, v)| v.as_str())
    }
}

/// Reads one HTTP/1.1 request with a `Content-Length` body.
fn read_request(stream: &TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split(' ').nth(1)?.to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':')?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let length: usize = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-length"))?.1.parse().ok()?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received { path, headers, body })
}

/// A webhook receiver (or Bot API stand-in) on 127.0.0.1 that answers the i-th request with
/// `statuses[i]` (the last one from then on; 0: no answer, the connection is held open) and
/// hands each request to the test.
pub fn receiver(statuses: Vec<u16>) -> (SocketAddr, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let Some(request) = read_request(&stream) else { continue };
            let status = statuses.get(i).or(statuses.last()).copied().unwrap_or(200);
            if status == 0 {
                held.push(stream);
            } else {
                // The body of a Bot API answer; webhook deliveries ignore it.
                let body = if (200..300).contains(&status) {
                    "{\"ok\":true,\"result\":{}}".to_owned()
                } else {
                    format!("{{\"ok\":false,\"error_code\":{status},\"description\":\"stand-in refusal {status}\"}}")
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
            if tx.send(request).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}
