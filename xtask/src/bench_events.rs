//! `cargo xtask bench events`: what event-stream subscribers cost the server, and that they never
//! slow training.
//!
//! It builds the release binary, starts it on a free port with the example datasets, and then:
//! - memory: the server's resident memory (`VmRSS`) before and after `TRAINYARD_BENCH_SUBSCRIBERS`
//!   (default 1000) clients open `GET /api/v1/events` and sit idle, per subscriber and in all,
//!   against the 50 MB the design allows for a thousand;
//! - training: the same iris run (mlp, `TRAINYARD_BENCH_EPOCHS` epochs, default 300) before and
//!   while those subscribers are open (none of them reads a byte), in seconds, and whether every
//!   stream was still open at the end.

use std::{
    io::{BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    time::Instant,
};

use anyhow::{bail, Context};

use crate::bench_registry::{connect, response_head, start, status_kib, KEY};

/// The design's bound on a thousand idle subscribers.
const BUDGET_MB_PER_THOUSAND: f64 = 50.0;

pub(crate) fn run(root: &Path) -> anyhow::Result<()> {
    let bin = crate::build_release(root, &["-p", "trainyard"], "trainyard")?;
    let subscribers = crate::env_number("TRAINYARD_BENCH_SUBSCRIBERS", 1000)?;
    let epochs = crate::env_number("TRAINYARD_BENCH_EPOCHS", 300)?;
    let work = work_dir(root)?;
    let result = measure(&bin, &work, subscribers, epochs);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn work_dir(root: &Path) -> anyhow::Result<std::path::PathBuf> {
    let dir = root.join("target/bench-events");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn measure(bin: &Path, work: &Path, subscribers: usize, epochs: usize) -> anyhow::Result<()> {
    let (server, addr) = start(bin, &work.join("data"), &["--examples"])?;
    let pid = server.0.id();
    // One run first, so that what the first training allocates is not counted as the streams'.
    let warm = train(&addr, 2)?;
    let rss_before = status_kib(pid, "VmRSS")?;
    let mut streams = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        streams.push(subscribe(&addr)?);
    }
    let rss_after = status_kib(pid, "VmRSS")?;
    // The reference run, with the streams closed.
    streams.clear();
    let quiet = train(&addr, epochs)?;
    for _ in 0..subscribers {
        streams.push(subscribe(&addr)?);
    }
    let busy = train(&addr, epochs)?;
    // Every idle stream is still open: it answers no end of stream (the server closes streams
    // only when a client falls behind by more than its buffer, which these few events are not).
    let open = streams.iter_mut().map(still_open).filter(|&open| open).count();
    drop(server);

    let grown = rss_after.saturating_sub(rss_before) as f64 * 1024.0;
    let per_subscriber_kb = grown / subscribers.max(1) as f64 / 1e3;
    // kB per subscriber is MB per thousand.
    let per_thousand_mb = per_subscriber_kb;
    println!("event streams (GET /api/v1/events), release build, this run:");
    println!(
        "server RSS {:.1} MB before, {:.1} MB with {subscribers} idle subscribers",
        rss_before as f64 * 1.024e-3,
        rss_after as f64 * 1.024e-3
    );
    println!(
        "  {per_subscriber_kb:.1} kB per subscriber, {:.1} MB in all: {per_thousand_mb:.1} MB per thousand against the {BUDGET_MB_PER_THOUSAND} MB allowed ({})",
        grown / 1e6,
        if per_thousand_mb <= BUDGET_MB_PER_THOUSAND { "within" } else { "OVER" }
    );
    println!("iris mlp, {epochs} epochs (the first run, {warm:.2} s for 2 epochs, warms the server up):");
    println!("{:<48} {:>9}", "run", "seconds");
    println!("{:<48} {quiet:>9.2}", "no subscriber");
    println!("{:<48} {busy:>9.2}", format!("{subscribers} subscribers that never read"));
    println!("  ratio {:.2}x; idle streams still open at the end: {open} of {subscribers}", busy / quiet.max(f64::MIN_POSITIVE));
    Ok(())
}

/// Opens `GET /api/v1/events` and reads the response head; the stream stays open.
fn subscribe(addr: &str) -> anyhow::Result<BufReader<TcpStream>> {
    let mut conn = connect(addr)?;
    write!(conn, "GET /api/v1/events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\nAccept: text/event-stream\r\n\r\n")?;
    let mut reader = BufReader::new(conn);
    let (status, _) = response_head(&mut reader)?;
    if status != 200 {
        bail!("GET /api/v1/events answered {status}");
    }
    Ok(reader)
}

/// Whether the server has not closed the stream: nothing to read yet, or more events.
fn still_open(stream: &mut BufReader<TcpStream>) -> bool {
    let conn = stream.get_ref();
    if conn.set_nonblocking(true).is_err() {
        return false;
    }
    let mut buf = [0u8; 64 * 1024];
    let open = loop {
        match stream.read(&mut buf) {
            Ok(0) => break false,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
            Err(_) => break false,
        }
    };
    let _ = stream.get_ref().set_nonblocking(false);
    open
}

/// Trains iris for `epochs` and returns the seconds from the start request to the end.
fn train(addr: &str, epochs: usize) -> anyhow::Result<f64> {
    let body = serde_json::json!({"model_architecture": "mlp", "dataset_name": "iris", "epochs": epochs, "batch_size": 16}).to_string();
    let started = Instant::now();
    let (status, reply) = request(addr, "POST", "/api/v1/training/start", Some(&body))?;
    if status != 200 {
        bail!("starting training answered {status}: {reply}");
    }
    let reply: serde_json::Value = serde_json::from_str(&reply)?;
    let id = reply["session_id"].as_str().context("no session_id")?.to_owned();
    loop {
        let (status, reply) = request(addr, "GET", &format!("/api/v1/training/{id}/status?wait_seconds=60"), None)?;
        let reply: serde_json::Value = serde_json::from_str(&reply).with_context(|| format!("status {status}"))?;
        match reply["state"].as_str() {
            Some("completed") => return Ok(started.elapsed().as_secs_f64()),
            Some("failed" | "stopped") => bail!("the benchmark run ended {}: {}", reply["state"], reply["error_message"]),
            _ => {}
        }
    }
}

/// One request on its own connection; returns the status and the body.
fn request(addr: &str, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<(u16, String)> {
    let mut conn = connect(addr)?;
    let body = body.unwrap_or("");
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reader = BufReader::new(conn);
    let (status, _) = response_head(&mut reader)?;
    let mut text = String::new();
    reader.read_to_string(&mut text)?;
    Ok((status, text))
}
