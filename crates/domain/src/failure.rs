//! What a client is told about a failure: text without server paths or internal error text
//! (operating-system error numbers, driver and panic markers); the detail stays in the log.
//!
//! Two seams use it: the session manager, for every session failure message and session log
//! line, and the HTTP layer, for messages that adapters (inspectors, the predictor) wrote.

use crate::ports::{StoreError, TrainError};

/// Shown in place of a server path.
pub const PATH_PLACEHOLDER: &str = "<server path>";

/// Shown in place of an internal error's text.
pub const INTERNAL_PLACEHOLDER: &str = "an internal error (the server log has the details)";

/// Substrings that only an internal error's own text holds (Rust's `Debug` of an I/O error,
/// the SQLite driver, a panic's `unwrap` message): a message holding one is cut there.
const INTERNAL_MARKERS: [&str; 5] = ["Os {", "rusqlite", "called `", "panicked at", "SqliteFailure"];

/// A short description of an operating-system error from its text as `std::io::Error` writes
/// it (`"No space left on device (os error 28)"`): what a person can act on, without the rest.
#[must_use]
pub fn io_summary(detail: &str) -> &'static str {
    let d = detail.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| d.contains(n));
    if any(&["no space left", "os error 28", "quota exceeded", "os error 122", "storage full", "disk full"]) {
        "the disk is full"
    } else if any(&["read-only file system", "os error 30"]) {
        "the file system is read-only"
    } else if any(&["permission denied", "os error 13", "operation not permitted", "os error 1)"]) {
        "permission denied"
    } else if any(&["not a directory", "os error 20", "is a directory", "os error 21"]) {
        "a directory it needs is not usable"
    } else if any(&["no such file", "os error 2)", "not found"]) {
        "a file it needs is missing"
    } else if any(&["too many open files", "os error 24"]) {
        "too many open files"
    } else if any(&["cannot allocate memory", "out of memory", "os error 12"]) {
        "out of memory"
    } else {
        "an input/output error"
    }
}

/// `text` with every server path replaced by [`PATH_PLACEHOLDER`], every `(os error N)`
/// removed, and everything from an internal error marker on replaced by
/// [`INTERNAL_PLACEHOLDER`]. A path is a word that starts with `/` (after quotes or brackets)
/// and holds a second `/`, except API routes (`/api/...`), which messages name on purpose.
#[must_use]
pub fn scrub(text: &str) -> String {
    let mut text = text.to_owned();
    if let Some(at) = INTERNAL_MARKERS.iter().filter_map(|m| text.find(m)).min() {
        let head = text[..at].trim_end().trim_end_matches([':', '(', '{', '=', ',']).trim_end();
        text = if head.is_empty() { INTERNAL_PLACEHOLDER.to_owned() } else { format!("{head}: {INTERNAL_PLACEHOLDER}") };
    }
    while let Some(start) = text.find("(os error ") {
        let Some(len) = text[start..].find(')') else { break };
        let before = text[..start].trim_end().len();
        text.replace_range(before..start + len + 1, "");
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let word_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (word, tail) = rest.split_at(word_end);
        out.push_str(&scrub_word(word));
        let space_end = tail.find(|c: char| !c.is_whitespace()).unwrap_or(tail.len());
        out.push_str(&tail[..space_end]);
        rest = &tail[space_end..];
    }
    out
}

/// One whitespace-free word with a path in it replaced; the punctuation around it is kept.
fn scrub_word(word: &str) -> String {
    let Some(start) = word.find('/') else { return word.to_owned() };
    let (lead, path) = word.split_at(start);
    let is_path = lead.chars().all(|c| matches!(c, '\'' | '"' | '`' | '(' | '[' | '<' | '{' | '='))
        && path[1..].contains('/')
        && !path.starts_with("/api/");
    if !is_path {
        return word.to_owned();
    }
    let trail_len =
        path.chars().rev().take_while(|c| matches!(c, '\'' | '"' | '`' | ')' | ']' | '>' | '}' | ',' | ';' | ':' | '.')).count();
    let trail = &path[path.len() - path.chars().rev().take(trail_len).map(char::len_utf8).sum::<usize>()..];
    format!("{lead}{PATH_PLACEHOLDER}{trail}")
}

impl StoreError {
    /// What a client may read about this error: its kind and, for the disk, a short reason.
    #[must_use]
    pub fn public_message(&self) -> String {
        match self {
            Self::Busy => "storage is busy, try again".to_owned(),
            Self::Conflict(m) => scrub(m),
            Self::NotFound(m) => format!("{} not found", scrub(m)),
            Self::Corrupt(_) => "stored data could not be read back".to_owned(),
            Self::Io(detail) => format!("disk error: {}", io_summary(detail)),
        }
    }
}

/// A client's text as an error message shows it: escaped, at most 64 characters.
#[must_use]
pub fn shown(raw: &str) -> String {
    raw.chars().take(64).flat_map(char::escape_default).collect()
}

impl TrainError {
    /// What a client may read about this failure: the trainer's own message with paths and
    /// internal error text taken out, or a short reason for an I/O failure.
    #[must_use]
    pub fn public_message(&self) -> String {
        match self {
            Self::Data(m) | Self::Failed(m) | Self::Crashed(m) => scrub(m),
            Self::Io(detail) => format!("i/o error: {}", io_summary(detail)),
        }
    }
}

#[cfg(test)]
mod tests {
    use quickcheck::{quickcheck, TestResult};

    use super::*;

    #[test]
    fn paths_os_errors_and_internal_text_are_taken_out() {
        assert_eq!(
            scrub(
                "cannot move /home/x/trainyard-data/models/.staging/a into /home/x/trainyard-data/models: Permission denied (os error 13)"
            ),
            "cannot move <server path> into <server path>: Permission denied"
        );
        assert_eq!(scrub("cannot read '/tmp/t/x.csv': gone"), "cannot read '<server path>': gone");
        assert_eq!(
            scrub("the training process crashed: called `Result::unwrap()` on an `Err` value: Os { code: 2 }"),
            format!("the training process crashed: {INTERNAL_PLACEHOLDER}")
        );
        assert_eq!(scrub("database error: rusqlite says no"), format!("database error: {INTERNAL_PLACEHOLDER}"));
        for kept in [
            "sample 3 has 2 values; the model expects 4",
            "use POST /api/v1/models/{name}/generate",
            "loss is NaN at epoch 3/10",
            "the training process crashed: failpoint: injected panic",
            "killed:  out of memory (limit 1/2 of RAM)",
        ] {
            assert_eq!(scrub(kept), kept);
        }
    }

    #[test]
    fn io_errors_are_summarised_by_kind() {
        assert_eq!(io_summary("cannot write /a/b: No space left on device (os error 28)"), "the disk is full");
        assert_eq!(io_summary("cannot move /a into /b: Permission denied (os error 13)"), "permission denied");
        assert_eq!(io_summary("Read-only file system (os error 30)"), "the file system is read-only");
        assert_eq!(io_summary("cannot look into /a: Not a directory (os error 20)"), "a directory it needs is not usable");
        assert_eq!(io_summary("weird"), "an input/output error");
        let e =
            StoreError::Io("cannot move /srv/data/models/.staging/x into /srv/data/models: No space left on device (os error 28)".into());
        assert_eq!(e.public_message(), "disk error: the disk is full");
        assert_eq!(TrainError::Io("/srv/x: Permission denied (os error 13)".into()).public_message(), "i/o error: permission denied");
    }

    /// A message with server paths and OS error text spliced into it.
    fn spliced(words: &[String], dirs: &[String]) -> String {
        let mut out = String::new();
        for (i, w) in words.iter().enumerate() {
            out.push_str(w);
            out.push(' ');
            if let Some(d) = dirs.get(i) {
                let dir: String = d.chars().filter(|c| !c.is_whitespace()).collect();
                out.push_str(&format!("'/srv/trainyard-data/{dir}/file': (os error {i}) Os {{ code: {i} }} "));
            }
        }
        out
    }

    quickcheck! {
        // Property 59: whatever text an adapter or the OS writes into a failure, what a client
        // reads of it holds no server path and no internal error text (`os error`, `Os {`,
        // `rusqlite`, an `unwrap` panic), and text without any of them is kept as it is.
        fn prop59_public_text_holds_no_server_path(words: Vec<String>, dirs: Vec<String>) -> TestResult {
            let odd = |w: &String| w.contains('/') || w.contains("os error") || INTERNAL_MARKERS.iter().any(|m| w.contains(m));
            if dirs.is_empty() || words.len() < dirs.len() || words.iter().any(odd) {
                return TestResult::discard();
            }
            let public = scrub(&spliced(&words, &dirs));
            let leaks = ["/srv/", "os error", "Os {", "rusqlite", "called `"].iter().any(|m| public.contains(m));
            TestResult::from_bool(!leaks)
        }

        fn prop59_plain_text_is_kept(words: Vec<String>) -> TestResult {
            let text = words.join(" ");
            if text.contains('/') || text.contains("(os error ") || INTERNAL_MARKERS.iter().any(|m| text.contains(m)) {
                return TestResult::discard();
            }
            TestResult::from_bool(scrub(&text) == text)
        }
    }
}
