//! `cargo xtask bench registry`: the model registry's upload and download throughput over
//! loopback against a plain file copy of the same file in the same run, and the server's
//! memory while it streams.
//!
//! It builds the release binary, starts it on a free port with a temporary data directory,
//! writes a safetensors file of `TRAINYARD_BENCH_MB` MiB (default 1024) of pseudo-random bytes,
//! and then measures, each the fastest of three runs:
//! - copy: read the file and write a copy, flushed to disk (`fsync`);
//! - upload: stream the file from disk as a multipart `POST /api/v1/models` over a raw TCP
//!   connection (the server hashes it, writes it, flushes it and checks the header);
//! - download: `GET /api/v1/models/{name}` written to a file, flushed to disk, and once more with
//!   the bytes discarded (the server's own pace, without the client's disk).
//!
//! The server's resident memory comes from `/proc/<pid>/status`: `VmRSS` before the upload and the
//! high-water mark `VmHWM` after each transfer.

use std::{
    fs::{self, File},
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

pub(crate) const KEY: &str = "bench-key-0123456789";
const BLOCK: usize = 1 << 20;
/// Each transfer runs this many times and the fastest counts: the disk is shared and noisy.
const RUNS: usize = 3;

/// Kills the server when the benchmark ends, however it ends.
pub(crate) struct Server(pub(crate) Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(root: &Path) -> anyhow::Result<()> {
    let bin = crate::build_release(root, &["-p", "trainyard"], "trainyard")?;
    let mib: u64 = std::env::var("TRAINYARD_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let work = root.join("target/bench-registry");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = measure(&bin, &work, mib);
    let _ = fs::remove_dir_all(&work);
    result
}

fn measure(bin: &Path, work: &Path, mib: u64) -> anyhow::Result<()> {
    let source = work.join("model.safetensors");
    eprintln!("writing a {mib} MiB model file");
    let size = write_model(&source, mib * 1024 * 1024)?;

    let copy = work.join("copy.safetensors");
    let copy_secs = fastest(|| {
        let started = Instant::now();
        copy_file(&source, &copy)?;
        let secs = started.elapsed().as_secs_f64();
        fs::remove_file(&copy)?;
        Ok(secs)
    })?;

    let (server, addr) = start(bin, &work.join("data"), &[])?;
    let pid = server.0.id();
    let rss_before = status_kib(pid, "VmRSS")?;
    let hwm_before = status_kib(pid, "VmHWM")?;

    let mut run = 0;
    let upload_secs = fastest(|| {
        run += 1;
        let started = Instant::now();
        upload(&addr, &format!("bench{run}"), &source, size)?;
        Ok(started.elapsed().as_secs_f64())
    })?;
    let hwm_upload = status_kib(pid, "VmHWM")?;

    let discard_secs = fastest(|| {
        let started = Instant::now();
        let got = download(&addr, None)?;
        if got != size {
            bail!("downloaded {got} bytes of {size}");
        }
        Ok(started.elapsed().as_secs_f64())
    })?;
    let download_to = work.join("download.safetensors");
    let download_secs = fastest(|| {
        let started = Instant::now();
        let got = download(&addr, Some(&download_to))?;
        let secs = started.elapsed().as_secs_f64();
        fs::remove_file(&download_to)?;
        if got != size {
            bail!("downloaded {got} bytes of {size}");
        }
        Ok(secs)
    })?;
    let hwm_download = status_kib(pid, "VmHWM")?;
    drop(server);

    let mb = size as f64 / 1e6;
    let rate = |secs: f64| mb / secs;
    println!("model registry over loopback, {mib} MiB safetensors file, release build, fastest of {RUNS} runs each:");
    println!("{:<34} {:>9} {:>10} {:>9}", "operation", "seconds", "MB/s", "vs copy");
    for (name, secs) in [
        ("file copy (read, write, fsync)", copy_secs),
        ("upload (multipart POST)", upload_secs),
        ("download (GET, write, fsync)", download_secs),
        ("download (GET, bytes discarded)", discard_secs),
    ] {
        println!("{name:<34} {secs:>9.2} {:>10.0} {:>8.2}x", rate(secs), rate(secs) / rate(copy_secs));
    }
    println!("server memory: RSS {} MiB before the upload (peak {} MiB since start),", rss_before / 1024, hwm_before / 1024);
    println!("  peak {} MiB after the upload, peak {} MiB after the downloads", hwm_upload / 1024, hwm_download / 1024);
    println!("(vs copy: throughput relative to the plain copy; 1.00x is as fast as copying the file)");
    Ok(())
}

/// The fastest of [`RUNS`] runs of `once`, in seconds.
fn fastest(mut once: impl FnMut() -> anyhow::Result<f64>) -> anyhow::Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..RUNS {
        best = best.min(once()?);
    }
    Ok(best)
}

/// A safetensors file of `total` bytes: one `U8` tensor of pseudo-random bytes (xorshift), so the
/// upload passes inspection and nothing along the way can compress it.
fn write_model(path: &Path, total: u64) -> anyhow::Result<u64> {
    let mut header = String::new();
    let mut data_len = total;
    // The header's length depends on the digits of the data length; settle both.
    for _ in 0..3 {
        header = format!(r#"{{"w":{{"dtype":"U8","shape":[{data_len}],"data_offsets":[0,{data_len}]}}}}"#);
        data_len = total.saturating_sub(8 + header.len() as u64).max(1);
    }
    let mut out = std::io::BufWriter::with_capacity(BLOCK, File::create(path)?);
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; BLOCK];
    let mut left = data_len;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = usize::try_from(left.min(BLOCK as u64))?;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(8 + header.len() as u64 + data_len)
}

fn copy_file(from: &Path, to: &Path) -> anyhow::Result<()> {
    let mut input = File::open(from)?;
    let mut output = File::create(to)?;
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        output.write_all(&buf[..n])?;
    }
    output.sync_all()?;
    Ok(())
}

/// Starts the server; returns it and its `host:port`.
pub(crate) fn start(bin: &Path, data_dir: &Path, extra: &[&str]) -> anyhow::Result<(Server, String)> {
    let mut child = Command::new(bin)
        .args(["serve", "--port", "0", "--host", "127.0.0.1", "--log-level", "warn", "--memory-reserve-mb", "0"])
        .args(extra)
        .arg("--data-dir")
        .arg(data_dir)
        .env("API_KEYS", KEY)
        .env_remove("DATABASE_PATH")
        .env_remove("MODELS_DIR")
        .env_remove("DATASETS_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("the server's standard output")?;
    let server = Server(child);
    for line in BufReader::new(stdout).lines() {
        if let Some(url) = line?.strip_prefix("listening on http://") {
            return Ok((server, url.to_owned()));
        }
    }
    bail!("the server exited before it listened")
}

pub(crate) fn connect(addr: &str) -> anyhow::Result<TcpStream> {
    let conn = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(600)))?;
    Ok(conn)
}

/// Reads a response's head; returns the status and the `Content-Length`.
pub(crate) fn response_head(reader: &mut impl BufRead) -> anyhow::Result<(u16, Option<u64>)> {
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no HTTP status line")?;
    let mut length = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            return Ok((status, length));
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok();
            }
        }
    }
}

/// Streams `path` as a multipart upload of the model `name`.
fn upload(addr: &str, name: &str, path: &Path, size: u64) -> anyhow::Result<()> {
    let boundary = "----trainyard-bench";
    let preamble = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"model.safetensors\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let epilogue = format!("\r\n--{boundary}--\r\n");
    let length = preamble.len() as u64 + size + epilogue.len() as u64;
    let mut conn = connect(addr)?;
    write!(
        conn,
        "POST /api/v1/models?model_name={name} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n{preamble}"
    )?;
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        conn.write_all(&buf[..n])?;
    }
    conn.write_all(epilogue.as_bytes())?;
    let mut reader = BufReader::new(conn);
    let (status, _) = response_head(&mut reader)?;
    let mut body = String::new();
    reader.read_to_string(&mut body)?;
    if status != 200 {
        bail!("upload answered {status}: {body}");
    }
    Ok(())
}

/// Downloads the model `bench1` into `to`, flushed to disk, or nowhere; returns the bytes received.
fn download(addr: &str, to: Option<&Path>) -> anyhow::Result<u64> {
    let mut conn = connect(addr)?;
    write!(conn, "GET /api/v1/models/bench1 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n")?;
    let mut reader = BufReader::with_capacity(BLOCK, conn);
    let (status, length) = response_head(&mut reader)?;
    if status != 200 {
        bail!("download answered {status}");
    }
    let length = length.context("no Content-Length")?;
    let mut out = match to {
        Some(path) => Some(File::create(path)?),
        None => None,
    };
    let mut buf = vec![0u8; BLOCK];
    let mut got = 0u64;
    while got < length {
        // Fill a whole block before writing, as the copy does.
        let want = usize::try_from((length - got).min(BLOCK as u64))?;
        reader.read_exact(&mut buf[..want])?;
        if let Some(out) = &mut out {
            out.write_all(&buf[..want])?;
        }
        got += want as u64;
    }
    if let Some(out) = out {
        out.sync_all()?;
    }
    Ok(got)
}

/// A `kB` field of `/proc/<pid>/status`, in KiB.
pub(crate) fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc (Linux only)")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}
