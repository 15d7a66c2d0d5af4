//! The command-line client: `trainyard train|sessions|status|watch|logs|stop|cancel|models|
//! datasets|generate|chart` talk to a server over HTTP and print what it answers, as tables and
//! progress bars for people or as JSON with `--json`.
//!
//! Exit codes: 0 success; 1 the server refused the request (its message is printed), a local
//! file could not be read or written, or the watched session failed or was stopped; 2 a usage
//! error (clap's own); 3 the server is unreachable or refused the key.

pub mod body;
mod catalog;
mod http;
mod output;
mod progress;
mod sse;
mod training;
mod watch;

use std::fmt;

use crate::cli::ClientCommand;

use self::http::Client;

/// The command succeeded.
pub const EXIT_OK: i32 = 0;
/// The server refused the request, a local file failed, or the session failed or was stopped.
pub const EXIT_FAILED: i32 = 1;
/// The server is unreachable or refused the key.
pub const EXIT_UNREACHABLE: i32 = 3;

/// Why a client command could not do what it was asked.
#[derive(Debug)]
pub enum Failure {
    /// No connection to the server, or the connection broke: exit 3.
    Unreachable(String),
    /// The server refused the key (401) or its scope (403): exit 3.
    KeyRefused(String),
    /// The server answered an error: its message and, for invalid values, each field's.
    Api { status: u16, message: String, fields: Vec<String> },
    /// Something on this side: a file that cannot be read or written, an answer that is not
    /// what the API promises.
    Local(String),
}

impl Failure {
    /// The exit code this failure ends the command with.
    #[must_use]
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Unreachable(_) | Self::KeyRefused(_) => EXIT_UNREACHABLE,
            Self::Api { .. } | Self::Local(_) => EXIT_FAILED,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable(m) | Self::KeyRefused(m) | Self::Local(m) => f.write_str(m),
            Self::Api { status, message, fields } => {
                f.write_str(message)?;
                if *status >= 500 {
                    write!(f, " (HTTP {status})")?;
                }
                for field in fields {
                    write!(f, "\n  {field}")?;
                }
                Ok(())
            }
        }
    }
}

/// Runs one client command and returns the process's exit code; failures are printed to
/// standard error as `error: <message>`.
#[must_use]
pub fn run(command: ClientCommand) -> i32 {
    let client = match Client::new(command.connection()) {
        Ok(c) => c,
        Err(e) => return report(&e),
    };
    let json = command.connection().json;
    let result = match command {
        ClientCommand::Train(args) => training::train(&client, args),
        ClientCommand::Sessions { .. } => training::sessions(&client, json),
        ClientCommand::Status { id, .. } => training::status(&client, &id, json),
        ClientCommand::Watch { id, .. } => watch::watch(&client, &id, json),
        ClientCommand::Logs { id, limit, follow, .. } => training::logs(&client, &id, limit, follow, json),
        ClientCommand::Stop { id, .. } => training::stop(&client, &id, json),
        ClientCommand::Cancel { id, .. } => training::cancel(&client, &id, json),
        ClientCommand::Chart { id, output, .. } => training::chart(&client, &id, &output, json),
        ClientCommand::Models { action, .. } => catalog::models(&client, action, json),
        ClientCommand::Datasets { action, .. } => catalog::datasets(&client, action, json),
        ClientCommand::Generate { model, prompt, max_length, temperature, seed, .. } => {
            catalog::generate(&client, &model, &prompt, max_length, temperature, seed, json)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => report(&e),
    }
}

fn report(failure: &Failure) -> i32 {
    eprintln!("error: {failure}");
    failure.exit_code()
}
