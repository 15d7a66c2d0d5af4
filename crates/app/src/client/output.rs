//! What client commands print: JSON for `--json`, aligned tables and plain lines for people.

use serde_json::Value;

/// Prints a JSON value as it came, indented.
pub fn json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()));
}

/// Prints rows under a header, each column as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let text: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| if i == last { (*c).to_owned() } else { format!("{c:<w$}", w = widths[i]) }).collect();
        println!("{}", text.join("  "));
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// A string field, `-` when absent or null.
#[must_use]
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An ISO 8601 timestamp as `2024-01-15 10:30:00`, `-` when absent.
#[must_use]
pub fn time(v: &Value) -> String {
    v.as_str().map_or_else(|| "-".to_owned(), |t| t.replacen('T', " ", 1).trim_end_matches('Z').to_owned())
}

/// A size in MB with one decimal.
#[must_use]
pub fn megabytes(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".to_owned(), |mb| format!("{mb:.1} MB"))
}

/// An epoch's metrics on one line: loss and accuracy, and the validation ones when there.
#[must_use]
pub fn metrics(m: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(loss) = m["loss"].as_f64() {
        parts.push(format!("loss {loss:.4}"));
    }
    if let Some(acc) = m["accuracy"].as_f64() {
        parts.push(format!("accuracy {:.1}%", acc * 100.0));
    }
    if let Some(loss) = m["val_loss"].as_f64() {
        parts.push(format!("val_loss {loss:.4}"));
    }
    if let Some(acc) = m["val_accuracy"].as_f64() {
        parts.push(format!("val_accuracy {:.1}%", acc * 100.0));
    }
    parts.join("  ")
}

/// A log line as `2024-01-15 10:30:00 INFO    message`.
#[must_use]
pub fn log_line(l: &Value) -> String {
    format!("{} {:<7} {}", time(&l["timestamp"]), l["level"].as_str().unwrap_or("INFO"), l["message"].as_str().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn metrics_show_loss_and_accuracy_as_a_percentage() {
        let m = json!({"epoch": 2, "loss": 0.123_456, "accuracy": 0.875, "val_loss": null, "val_accuracy": 0.9});
        assert_eq!(metrics(&m), "loss 0.1235  accuracy 87.5%  val_accuracy 90.0%");
        assert_eq!(metrics(&json!({"epoch": 0, "loss": null})), "");
    }

    #[test]
    fn times_and_absent_fields_read_plainly() {
        assert_eq!(time(&json!("2024-01-15T10:30:00Z")), "2024-01-15 10:30:00");
        assert_eq!(time(&Value::Null), "-");
        assert_eq!(text(&Value::Null), "-");
        assert_eq!(text(&json!(3)), "3");
        assert_eq!(
            log_line(&json!({"timestamp": "2024-01-15T10:30:00Z", "level": "INFO", "message": "hi"})),
            "2024-01-15 10:30:00 INFO    hi"
        );
    }
}
