//! Training commands: `train`, `sessions`, `status`, `logs`, `stop`, `cancel` and `chart`.

use std::path::Path;

use serde_json::Value;

use super::{body, http::segment, output, progress::Progress, watch, Client, Failure, EXIT_OK};
use crate::cli::TrainArgs;

/// `trainyard train`: starts a session and, with `--watch`, follows it.
///
/// # Errors
/// See [`Failure`].
pub fn train(client: &Client, args: TrainArgs) -> Result<i32, Failure> {
    let json = args.conn.json;
    let started = client.call_json("POST", "/api/v1/training/start", Some(&body::training_body(&args)))?;
    let id = started["session_id"].as_str().ok_or_else(|| Failure::Local(format!("the server's answer has no session_id: {started}")))?;
    if args.watch {
        // The stream's first events say that the session was queued or started.
        return watch::watch(client, id, json);
    }
    if json {
        output::json(&started);
        return Ok(EXIT_OK);
    }
    let state = started["status"].as_str().unwrap_or("started");
    let mut details = Vec::new();
    if let Some(pos) = started["queue_position"].as_u64() {
        details.push(format!("position {pos}"));
    }
    if let Some(reason) = started["queue_reason"].as_str() {
        details.push(reason.to_owned());
    }
    if let Some(device) = started["device"].as_str() {
        details.push(format!("on {device}"));
    }
    if let Some(mb) = started["estimated_memory_mb"].as_u64() {
        details.push(format!("estimated {mb} MB"));
    }
    let details = if details.is_empty() { String::new() } else { format!(" ({})", details.join(", ")) };
    println!("session {id} {state}{details}");
    Ok(EXIT_OK)
}

/// `trainyard sessions`: id, state, architecture, dataset, epochs and creation time.
///
/// # Errors
/// See [`Failure`].
pub fn sessions(client: &Client, json: bool) -> Result<i32, Failure> {
    let list = client.get_json("/api/v1/training/sessions")?;
    if json {
        output::json(&list);
        return Ok(EXIT_OK);
    }
    let rows: Vec<Vec<String>> = list
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let st = &s["status"];
            vec![
                output::text(&s["session_id"]),
                output::text(&st["state"]),
                output::text(&s["config"]["model_architecture"]),
                datasets_of(&s["config"]),
                format!("{}/{}", st["current_epoch"].as_u64().unwrap_or_default(), st["total_epochs"].as_u64().unwrap_or_default()),
                output::time(&s["created_at"]),
            ]
        })
        .collect();
    output::table(&["ID", "STATE", "ARCH", "DATASET", "EPOCH", "CREATED"], &rows);
    Ok(EXIT_OK)
}

/// A config's datasets, comma-separated.
fn datasets_of(config: &Value) -> String {
    match config["dataset_names"].as_array() {
        Some(names) if names.len() > 1 => names.iter().map(output::text).collect::<Vec<_>>().join(","),
        _ => output::text(&config["dataset_name"]),
    }
}

/// `trainyard status ID`.
///
/// # Errors
/// See [`Failure`].
pub fn status(client: &Client, id: &str, json: bool) -> Result<i32, Failure> {
    let s = client.get_json(&format!("/api/v1/training/{}/status", segment(id)))?;
    if json {
        output::json(&s);
        return Ok(EXIT_OK);
    }
    let config = &s["config"];
    let mut rows = vec![
        ("session", output::text(&s["session_id"])),
        ("state", output::text(&s["state"])),
        ("epoch", format!("{}/{}", s["current_epoch"].as_u64().unwrap_or_default(), s["total_epochs"].as_u64().unwrap_or_default())),
        ("architecture", output::text(&config["model_architecture"])),
        ("dataset", datasets_of(config)),
        (
            "training",
            format!(
                "learning rate {}, batch size {}, optimizer {}, loss {}",
                output::text(&config["learning_rate"]),
                output::text(&config["batch_size"]),
                output::text(&config["optimizer"]),
                output::text(&config["loss_function"])
            ),
        ),
        ("device", output::text(&s["device"])),
        ("created", output::time(&s["created_at"])),
        ("started", output::time(&s["start_time"])),
        ("ended", output::time(&s["end_time"])),
    ];
    let optional = [
        ("queue position", &s["queue_position"]),
        ("waiting for", &s["queue_reason"]),
        ("memory (MB)", &s["memory_mb"]),
        ("peak memory (MB)", &s["peak_memory_mb"]),
        ("estimated (MB)", &s["estimated_memory_mb"]),
        ("model", &s["model_name"]),
        ("error", &s["error_message"]),
    ];
    rows.extend(optional.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, output::text(v))));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or_default();
    for (k, v) in rows {
        println!("{k:<width$}  {v}");
    }
    Ok(EXIT_OK)
}

/// `trainyard logs ID [--limit N] [--follow]`.
///
/// # Errors
/// See [`Failure`].
pub fn logs(client: &Client, id: &str, limit: u32, follow: bool, json: bool) -> Result<i32, Failure> {
    if follow {
        return watch::follow_logs(client, id, json);
    }
    let lines = client.get_json(&format!("/api/v1/training/{}/logs?limit={limit}", segment(id)))?;
    if json {
        output::json(&lines);
        return Ok(EXIT_OK);
    }
    for line in lines.as_array().map(Vec::as_slice).unwrap_or_default() {
        println!("{}", output::log_line(line));
    }
    Ok(EXIT_OK)
}

/// `trainyard stop ID`.
///
/// # Errors
/// See [`Failure`].
pub fn stop(client: &Client, id: &str, json: bool) -> Result<i32, Failure> {
    let answer = client.call_json("POST", &format!("/api/v1/training/{}/stop", segment(id)), None)?;
    message(&answer, json)
}

/// `trainyard cancel ID`.
///
/// # Errors
/// See [`Failure`].
pub fn cancel(client: &Client, id: &str, json: bool) -> Result<i32, Failure> {
    let answer = client.call_json("DELETE", &format!("/api/v1/training/queue/{}", segment(id)), None)?;
    message(&answer, json)
}

/// Prints an answer's `message` (the whole answer with `--json`).
pub(super) fn message(answer: &Value, json: bool) -> Result<i32, Failure> {
    if json {
        output::json(answer);
    } else {
        println!("{}", output::text(&answer["message"]));
    }
    Ok(EXIT_OK)
}

/// `trainyard chart ID -o FILE.png`: the session's loss and accuracy chart.
///
/// # Errors
/// See [`Failure`].
pub fn chart(client: &Client, id: &str, file: &Path, json: bool) -> Result<i32, Failure> {
    let to_stdout = file.as_os_str() == "-";
    let bar = Progress::new(json || to_stdout).bytes("chart".to_owned());
    let got = client.download(&format!("/api/v1/training/{}/chart.png", segment(id)), Some(file), "chart.png", &bar)?;
    if json && !to_stdout {
        output::json(&serde_json::json!({"session_id": id, "file": got.path.display().to_string(), "size_bytes": got.size_bytes}));
    }
    Ok(EXIT_OK)
}
