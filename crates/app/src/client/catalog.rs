//! Registry commands: `models` and `datasets` (list, upload, download, info, rm) and
//! `generate`.

use std::path::Path;

use serde_json::{json, Value};

use super::{http::segment, output, progress::Progress, training::message, Client, Failure, EXIT_OK};
use crate::cli::{DatasetsAction, ModelsAction};

/// `trainyard models [list | upload | download | rm]`.
///
/// # Errors
/// See [`Failure`].
pub fn models(client: &Client, action: Option<ModelsAction>, json: bool) -> Result<i32, Failure> {
    match action.unwrap_or(ModelsAction::List) {
        ModelsAction::List => {
            let list = client.get_json("/api/v1/models")?;
            if json {
                output::json(&list);
                return Ok(EXIT_OK);
            }
            let rows: Vec<Vec<String>> = items(&list)
                .map(|m| {
                    vec![
                        output::text(&m["name"]),
                        output::text(&m["format"]),
                        output::megabytes(&m["size_mb"]),
                        output::text(&m["parameter_count"]),
                        output::text(&m["architecture"]),
                        output::text(&m["session_id"]),
                        output::time(&m["created_at"]),
                    ]
                })
                .collect();
            output::table(&["NAME", "FORMAT", "SIZE", "PARAMETERS", "ARCH", "SESSION", "CREATED"], &rows);
            Ok(EXIT_OK)
        }
        ModelsAction::Upload { file, name, overwrite } => upload(client, "/api/v1/models", "model_name", &file, name, overwrite, json),
        ModelsAction::Download { name, output: file } => {
            let to_stdout = file.as_deref().is_some_and(|f| f.as_os_str() == "-");
            let bar = Progress::new(json || to_stdout).bytes(format!("downloading {name}"));
            let got = client.download(&format!("/api/v1/models/{}", segment(&name)), file.as_deref(), &name, &bar)?;
            if to_stdout {
                return Ok(EXIT_OK);
            }
            let path = got.path.display().to_string();
            if json {
                output::json(&json!({"name": name, "file": path, "size_bytes": got.size_bytes, "content_hash": got.sha256}));
            } else {
                println!("model {name} saved to {path} ({} bytes, sha256 {})", got.size_bytes, got.sha256);
            }
            Ok(EXIT_OK)
        }
        ModelsAction::Rm { name } => message(&client.call_json("DELETE", &format!("/api/v1/models/{}", segment(&name)), None)?, json),
    }
}

/// `trainyard datasets [list | upload | info | rm]`.
///
/// # Errors
/// See [`Failure`].
pub fn datasets(client: &Client, action: Option<DatasetsAction>, json: bool) -> Result<i32, Failure> {
    match action.unwrap_or(DatasetsAction::List) {
        DatasetsAction::List => {
            let list = client.get_json("/api/v1/datasets")?;
            if json {
                output::json(&list);
                return Ok(EXIT_OK);
            }
            let rows: Vec<Vec<String>> = items(&list)
                .map(|d| {
                    vec![
                        output::text(&d["name"]),
                        output::text(&d["format"]),
                        output::text(&d["sample_count"]),
                        output::text(&d["dimensions"]),
                        output::megabytes(&d["size_mb"]),
                        output::time(&d["created_at"]),
                    ]
                })
                .collect();
            output::table(&["NAME", "FORMAT", "SAMPLES", "DIMENSIONS", "SIZE", "CREATED"], &rows);
            Ok(EXIT_OK)
        }
        DatasetsAction::Upload { file, name, overwrite } => {
            upload(client, "/api/v1/datasets", "dataset_name", &file, name, overwrite, json)
        }
        DatasetsAction::Info { name } => {
            let d = client.get_json(&format!("/api/v1/datasets/{}", segment(&name)))?;
            if json {
                output::json(&d);
                return Ok(EXIT_OK);
            }
            let rows = [
                ("name", output::text(&d["name"])),
                ("format", output::text(&d["format"])),
                ("samples", output::text(&d["sample_count"])),
                ("dimensions", output::text(&d["dimensions"])),
                ("size", format!("{} ({} bytes)", output::megabytes(&d["size_mb"]), output::text(&d["size_bytes"]))),
                ("sha256", output::text(&d["content_hash"])),
                ("created", output::time(&d["created_at"])),
            ];
            for (k, v) in rows {
                println!("{k:<10}  {v}");
            }
            if let Some(stats) = d.get("statistics").filter(|s| !s.is_null()) {
                println!("statistics:");
                output::json(stats);
            }
            Ok(EXIT_OK)
        }
        DatasetsAction::Rm { name } => message(&client.call_json("DELETE", &format!("/api/v1/datasets/{}", segment(&name)), None)?, json),
    }
}

/// The elements of a JSON array answer.
fn items(list: &Value) -> impl Iterator<Item = &Value> {
    list.as_array().map(Vec::as_slice).unwrap_or_default().iter()
}

/// Uploads `file` to `route` under `name` (default: the file name without its extension).
fn upload(
    client: &Client,
    route: &str,
    name_param: &str,
    file: &Path,
    name: Option<String>,
    overwrite: bool,
    json: bool,
) -> Result<i32, Failure> {
    let name = match name {
        Some(n) => n,
        None => file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Failure::Local(format!("{} has no file name to take the name from: pass --name", file.display())))?,
    };
    let bar = Progress::new(json).bytes(format!("uploading {name}"));
    let overwrite = if overwrite { "true" } else { "false" };
    let answer = client.upload(route, &[(name_param, name.as_str()), ("overwrite", overwrite)], file, &bar)?;
    if json {
        output::json(&answer);
    } else {
        let extra = [
            answer["format"].as_str().map(str::to_owned),
            answer["sample_count"].as_u64().map(|n| format!("{n} samples")),
            answer["dimensions"].as_str().map(|d| format!("dimensions {d}")),
            answer["size_bytes"].as_u64().map(|b| format!("{b} bytes")),
        ];
        let extra: Vec<String> = extra.into_iter().flatten().collect();
        println!("{} ({})", output::text(&answer["message"]), extra.join(", "));
    }
    Ok(EXIT_OK)
}

/// `trainyard generate MODEL PROMPT`: prints the prompt followed by the generated text.
///
/// # Errors
/// See [`Failure`].
pub fn generate(
    client: &Client,
    model: &str,
    prompt: &str,
    max_length: Option<u32>,
    temperature: Option<f64>,
    seed: Option<u64>,
    json: bool,
) -> Result<i32, Failure> {
    let mut body = json!({ "prompt": prompt });
    if let Some(n) = max_length {
        body["max_length"] = json!(n);
    }
    if let Some(t) = temperature {
        body["temperature"] = json!(t);
    }
    if let Some(s) = seed {
        body["seed"] = json!(s);
    }
    let answer = client.call_json("POST", &format!("/api/v1/models/{}/generate", segment(model)), Some(&body))?;
    if json {
        output::json(&answer);
        return Ok(EXIT_OK);
    }
    println!("{}", answer["text"].as_str().unwrap_or_default());
    if let Some(unknown) = answer["unknown_characters"].as_array().filter(|u| !u.is_empty()) {
        let chars: Vec<String> = unknown.iter().map(output::text).collect();
        eprintln!("note: the model does not know these prompt characters, which were skipped: {}", chars.join(" "));
    }
    Ok(EXIT_OK)
}
