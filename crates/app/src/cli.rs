//! Command-line and environment configuration. Every setting has a flag; the old server's
//! environment variables (`API_KEYS`, `API_HOST`, `API_PORT`, `DATABASE_PATH`, `MODELS_DIR`,
//! `DATASETS_DIR`, `MAX_CONCURRENT_SESSIONS`) are honoured. The client commands (`train`,
//! `sessions`, `models`, ...) talk to a server over HTTP (`crate::client`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use trainyard_domain::auth::Scope;

/// A remotely managed training server.
#[derive(Debug, Parser)]
#[command(name = "trainyard", version, about, args_conflicts_with_subcommands = true, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `trainyard` alone is `trainyard serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(Box<ServeArgs>),
    /// Manage API keys stored (hashed) in the database.
    Keys {
        #[command(flatten)]
        storage: StorageArgs,
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Print the OpenAPI document.
    Openapi,
    #[command(flatten)]
    Client(ClientCommand),
    /// Internal: train one session handed over on standard input, reporting on standard
    /// output. The server starts one such process per running session.
    #[command(hide = true)]
    RunSession,
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Create a key and print it once.
    Create {
        /// A label saying who uses the key.
        #[arg(long, default_value = "default")]
        label: String,
        /// Lifetime such as 30d, 12h, 2w; never expires when absent.
        #[arg(long)]
        expires_in: Option<String>,
        /// What the key may do: read (every GET outside /api/v1/admin), train (read, plus
        /// training, dataset uploads, prediction and generation) or admin (everything).
        #[arg(long, default_value = "admin")]
        scope: Scope,
    },
    /// List managed keys (fingerprints, never keys).
    List,
    /// Revoke a key by id (`key_...`) or fingerprint (`fp_...`).
    Revoke { id_or_fingerprint: String },
}

/// How a client command reaches its server, and how it answers. Given after the command
/// (`trainyard sessions --json`); the options of `models` and `datasets` also go after their
/// action.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The server's URL (http:// or https://).
    #[arg(long, env = "TRAINYARD_URL", default_value = "http://127.0.0.1:8000", value_parser = server_url, global = true)]
    pub server: String,
    /// The API key, sent as `Authorization: Bearer KEY`.
    #[arg(long, env = "TRAINYARD_KEY", hide_env_values = true, global = true)]
    pub key: Option<String>,
    /// For an https server: trust only the certificates in this PEM file instead of the public
    /// roots, such as a self-signed server's DATA_DIR/tls/cert.pem.
    #[arg(long, env = "TRAINYARD_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Machine-readable output: the server's JSON (event streams as JSON lines), no progress
    /// bars.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `--server`: an http or https URL, without a trailing slash.
fn server_url(raw: &str) -> Result<String, String> {
    let url = raw.trim().trim_end_matches('/');
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(['?', '#']) => Ok(url.to_owned()),
        _ => Err(format!("'{raw}' is not an http:// or https:// server URL (such as http://127.0.0.1:8000)")),
    }
}

/// Commands that talk to a running server over HTTP.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Start a training session on the server (and follow it with --watch).
    Train(TrainArgs),
    /// List the server's training sessions, oldest first.
    Sessions {
        #[command(flatten)]
        conn: Connection,
    },
    /// Show a session's state and progress.
    Status {
        /// The session id (`sess_...`).
        id: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Follow a session live until it ends: a progress bar over its epochs with the latest
    /// loss and accuracy, and its log lines. Exits 1 when it fails or is stopped.
    Watch {
        /// The session id (`sess_...`).
        id: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Print a session's log lines.
    Logs {
        /// The session id (`sess_...`).
        id: String,
        /// How many of the newest lines to print (1 to 10000); ignored with --follow.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        /// Print every line from the session's start, then new lines as they come, until the
        /// session ends.
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Stop a running session (its weights are saved) or cancel a queued one.
    Stop {
        /// The session id (`sess_...`).
        id: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Take a queued session out of the queue.
    Cancel {
        /// The session id (`sess_...`).
        id: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// List, upload, download or remove models (`trainyard models` alone lists them).
    Models {
        #[command(subcommand)]
        action: Option<ModelsAction>,
        #[command(flatten)]
        conn: Connection,
    },
    /// List, upload, inspect or remove datasets (`trainyard datasets` alone lists them).
    Datasets {
        #[command(subcommand)]
        action: Option<DatasetsAction>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Generate text with a text model (the char-LSTM).
    Generate {
        /// The model's name in the registry.
        model: String,
        /// The text to continue.
        #[arg(default_value = "")]
        prompt: String,
        /// Characters to generate (1 to 10000) [server default: 200].
        #[arg(long)]
        max_length: Option<u32>,
        /// Sampling temperature, above 0 and at most 10 [server default: 0.8].
        #[arg(long)]
        temperature: Option<f64>,
        /// Makes the output reproducible [default: random].
        #[arg(long)]
        seed: Option<u64>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Save a session's loss and accuracy chart as a PNG file.
    Chart {
        /// The session id (`sess_...`).
        id: String,
        /// The PNG file to write (`-` for standard output).
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        conn: Connection,
    },
}

impl ClientCommand {
    /// The connection options of any client command.
    #[must_use]
    pub fn connection(&self) -> &Connection {
        match self {
            Self::Train(args) => &args.conn,
            Self::Sessions { conn }
            | Self::Status { conn, .. }
            | Self::Watch { conn, .. }
            | Self::Logs { conn, .. }
            | Self::Stop { conn, .. }
            | Self::Cancel { conn, .. }
            | Self::Models { conn, .. }
            | Self::Datasets { conn, .. }
            | Self::Generate { conn, .. }
            | Self::Chart { conn, .. } => conn,
        }
    }
}

/// `trainyard train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The architecture (`model_architecture`): mlp, cnn, resnet18, custom_ai_model, ...
    /// (`GET /api/v1/architectures` lists them).
    #[arg(long)]
    pub arch: String,
    /// The dataset's name (`dataset_name`); repeat it to train a text model on several.
    #[arg(long, required = true)]
    pub dataset: Vec<String>,
    /// Epochs (1 to 1000) [server default: 10].
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Learning rate (`learning_rate`, 0.0001 to 1) [server default: 0.001].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Batch size (1 to 1024) [server default: 32].
    #[arg(long)]
    pub batch_size: Option<u32>,
    /// Any other field of the start request, as field=value: the value is read as JSON when
    /// it is JSON (`hidden_sizes=[64,32]`, `dropout=0.2`, `seed=7`), else as a string
    /// (`optimizer=sgd`); repeatable, the last of a field wins, and it overrides the flags
    /// above.
    #[arg(long = "set", value_name = "FIELD=VALUE", value_parser = crate::client::body::parse_set)]
    pub set: Vec<(String, serde_json::Value)>,
    /// Follow the session until it ends, as `trainyard watch` does; exits 1 when it fails or
    /// is stopped.
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Debug, Subcommand)]
pub enum ModelsAction {
    /// List models, newest first.
    List,
    /// Upload a model file (safetensors, a PyTorch .pth/.pt zip checkpoint or ONNX).
    Upload {
        /// The file to upload.
        file: PathBuf,
        /// Its name in the registry [default: the file name without its extension].
        #[arg(long)]
        name: Option<String>,
        /// Replace a model of the same name.
        #[arg(long)]
        overwrite: bool,
    },
    /// Download a model file; its content is checked against the server's SHA-256.
    Download {
        /// The model's name.
        name: String,
        /// Where to write it (`-` for standard output) [default: the server's file name,
        /// NAME.EXT, in the current directory].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Remove a model.
    Rm {
        /// The model's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DatasetsAction {
    /// List datasets, oldest first.
    List,
    /// Upload a dataset file (CSV, TSV, text, NumPy, image archives, IDX, CIFAR-10).
    Upload {
        /// The file to upload.
        file: PathBuf,
        /// Its name in the registry [default: the file name without its extension].
        #[arg(long)]
        name: Option<String>,
        /// Replace a dataset of the same name.
        #[arg(long)]
        overwrite: bool,
    },
    /// Show one dataset with its statistics.
    Info {
        /// The dataset's name.
        name: String,
    },
    /// Remove a dataset.
    Rm {
        /// The dataset's name.
        name: String,
    },
}

/// Where state lives.
#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// The data directory; the database, models, datasets and scratch files default to it.
    #[arg(long, env = "TRAINYARD_DATA_DIR", default_value = "trainyard-data")]
    pub data_dir: PathBuf,
    /// SQLite database file [default: DATA_DIR/trainyard.db].
    #[arg(long, env = "DATABASE_PATH")]
    pub database_path: Option<PathBuf>,
}

impl StorageArgs {
    /// The database file.
    #[must_use]
    pub fn database(&self) -> PathBuf {
        self.database_path.clone().unwrap_or_else(|| self.data_dir.join("trainyard.db"))
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Model files [default: DATA_DIR/models].
    #[arg(long, env = "MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Dataset files [default: DATA_DIR/datasets].
    #[arg(long, env = "DATASETS_DIR")]
    pub datasets_dir: Option<PathBuf>,
    /// Bind address.
    #[arg(long, env = "API_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port; 0 picks a free one (printed at start).
    #[arg(long, env = "API_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Comma-separated API keys accepted besides managed keys. Held in memory as hashes only.
    #[arg(long, env = "API_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub api_keys: Vec<String>,
    /// Sessions that may train at once; the rest wait in the queue (by priority, then first
    /// in, first out).
    #[arg(long, env = "MAX_CONCURRENT_SESSIONS", default_value_t = 1)]
    pub max_concurrent_sessions: usize,
    /// Memory (MB) kept free beyond the sessions' estimates: a queued session waits while
    /// starting it would leave less available; 0 disables the floor.
    #[arg(long, env = "TRAINYARD_MEMORY_RESERVE_MB", default_value_t = 256)]
    pub memory_reserve_mb: u64,
    /// The most memory (MB) one training run may use; a run past it is killed and fails "out of
    /// memory", and a session estimated above it is refused [default: the machine's memory less
    /// 1 GB for the server and a margin].
    #[arg(long, env = "TRAINYARD_RUN_MEMORY_LIMIT_MB")]
    pub run_memory_limit_mb: Option<u64>,
    /// A run that finishes no training batch for this many seconds is killed and fails.
    #[arg(long, env = "TRAINYARD_RUN_STALL_TIMEOUT_SECS", default_value_t = 1800)]
    pub run_stall_timeout_secs: u64,
    /// Days after which finished sessions' checkpoints and scratch files are removed.
    #[arg(long, env = "TRAINYARD_RETENTION_DAYS", default_value_t = 7)]
    pub retention_days: u32,
    /// Largest accepted model upload, in MB.
    #[arg(long, env = "TRAINYARD_MAX_MODEL_UPLOAD_MB", default_value_t = 20_480)]
    pub max_model_upload_mb: u64,
    /// Largest accepted dataset upload, in MB.
    #[arg(long, env = "TRAINYARD_MAX_DATASET_UPLOAD_MB", default_value_t = 5_120)]
    pub max_dataset_upload_mb: u64,
    /// Register the bundled example datasets (tempest, iris, wine, breast_cancer, digits, digits_png) if absent.
    #[arg(long, env = "TRAINYARD_EXAMPLES")]
    pub examples: bool,
    /// HTTP worker threads [default: the number of CPUs, at most 4].
    #[arg(long, env = "TRAINYARD_WORKERS")]
    pub workers: Option<usize>,
    /// Seconds running sessions get to save their weights at shutdown.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
    /// Log level: error, warn, info, debug or trace (RUST_LOG overrides).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, env = "TRAINYARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key); reloaded when the file
    /// changes or on SIGHUP.
    #[arg(long, env = "TRAINYARD_TLS_CERT", requires = "tls_key", conflicts_with = "tls_self_signed")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "TRAINYARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS with a self-signed certificate made once in DATA_DIR/tls and reused; its
    /// SHA-256 fingerprint is printed at start for clients to pin.
    #[arg(long, env = "TRAINYARD_TLS_SELF_SIGNED")]
    pub tls_self_signed: bool,
    /// Comma-separated host names and addresses of the self-signed certificate [default:
    /// localhost, 127.0.0.1, ::1 and the bind host].
    #[arg(long, env = "TRAINYARD_TLS_SELF_SIGNED_NAMES", value_delimiter = ',', requires = "tls_self_signed")]
    pub tls_self_signed_names: Vec<String>,
    /// Seconds a client has to send a request's headers (and to finish the TLS handshake); 0
    /// turns the limit off.
    #[arg(long, env = "TRAINYARD_REQUEST_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub request_header_timeout_secs: u64,
    /// Seconds an idle keep-alive connection stays open; 0 closes each after one response.
    #[arg(long, env = "TRAINYARD_KEEP_ALIVE_SECS", default_value_t = 5)]
    pub keep_alive_secs: u64,
    /// Seconds a client has to close a connection the server ends before it is dropped; 0
    /// turns the limit off.
    #[arg(long, env = "TRAINYARD_CLIENT_DISCONNECT_TIMEOUT_SECS", default_value_t = 1)]
    pub client_disconnect_timeout_secs: u64,
    /// An upload that sends no byte for this many seconds gets a 408 and is discarded.
    #[arg(long, env = "TRAINYARD_BODY_IDLE_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_idle_timeout_secs: u64,
    /// Comma-separated host names or addresses accepted in the Host header besides the loopback
    /// ones; bound to loopback, any other Host gets 421; bound elsewhere, the check is on only
    /// when this is given.
    #[arg(long, env = "TRAINYARD_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Seconds between two looks at the TLS certificate files (reloaded when they changed); 0:
    /// reload only on SIGHUP.
    #[arg(long, env = "TRAINYARD_TLS_RELOAD_SECS", default_value_t = 2)]
    pub tls_reload_secs: u64,
    /// Comma-separated exact origins (https://app.example.com) browsers may call the API from;
    /// no CORS headers are sent when empty.
    #[arg(long, env = "TRAINYARD_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Failed authentications allowed per minute from one client address, and with one key;
    /// past it, 429 with Retry-After (a valid key is still served). 0 turns throttling off.
    #[arg(long, env = "TRAINYARD_AUTH_FAILURES_PER_MINUTE", default_value_t = 10)]
    pub auth_failures_per_minute: u32,
    /// Requests per minute allowed to each API key; past it, 429 with Retry-After. 0 (the
    /// default) sets no limit.
    #[arg(long, env = "TRAINYARD_RATE_LIMIT_PER_KEY", default_value_t = 0)]
    pub rate_limit_per_key: u32,
    /// Comma-separated reverse proxies (IP addresses or CIDR networks) whose X-Forwarded-For
    /// names the client: its rightmost hop that is not a trusted proxy. From anyone else the
    /// header is ignored.
    #[arg(long, env = "TRAINYARD_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// Seconds between the comment lines that keep idle event streams open through proxies.
    #[arg(long, env = "TRAINYARD_EVENTS_HEARTBEAT_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub events_heartbeat_secs: u64,
    /// Let webhooks target loopback, private, link-local and metadata addresses (refused with
    /// 400 otherwise, at creation and at each delivery). For tests and closed networks only.
    #[arg(long, env = "TRAINYARD_WEBHOOKS_ALLOW_PRIVATE")]
    pub webhooks_allow_private: bool,
    /// Seconds one webhook delivery attempt may take (connecting and the answer's head); past
    /// it the attempt failed and is retried.
    #[arg(long, env = "TRAINYARD_WEBHOOK_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub webhook_timeout_secs: u64,
    /// The unit of the retry schedule of webhooks and Telegram messages, in milliseconds:
    /// retries come 10, 20, 60, 150 and 360 units after each failure (0 s, 10 s, 30 s, 1.5 min,
    /// 4 min, 10 min with the default; Telegram's retry_after is honoured on top). Lower it
    /// only in tests.
    #[arg(long, env = "TRAINYARD_WEBHOOK_RETRY_BASE_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub webhook_retry_base_ms: u64,
    /// The Telegram bot's token (from @BotFather). With --telegram-chat-ids, every session that
    /// completes, fails or stops is reported to those chats with a summary and its chart. The
    /// token is never logged nor shown in --help.
    #[arg(long = "telegram-bot-token", env = "TELEGRAM_BOT_TOKEN", hide_env_values = true)]
    pub telegram_bot_token: Option<String>,
    /// Comma-separated chats to notify: numeric chat ids (negative for groups and channels) or
    /// @channelname.
    #[arg(long = "telegram-chat-ids", env = "TELEGRAM_CHAT_IDS", value_delimiter = ',')]
    pub telegram_chat_ids: Vec<String>,
    /// The Bot API's base URL: the public one, or a self-hosted Bot API server or proxy.
    #[arg(long = "telegram-api-url", env = "TELEGRAM_API_URL", default_value = trainyard_domain::telegram::DEFAULT_API_URL)]
    pub telegram_api_url: String,
    /// Also send a progress message after every N epochs (0: only when a session ends).
    #[arg(long = "telegram-every-epochs", env = "TELEGRAM_EVERY_EPOCHS", default_value_t = 0)]
    pub telegram_every_epochs: u32,
    /// Serve GET /metrics (Prometheus) without an API key, for scrapers that cannot send one;
    /// every other route still needs a key.
    #[arg(long, env = "TRAINYARD_METRICS_PUBLIC")]
    pub metrics_public: bool,
}

impl ServeArgs {
    #[must_use]
    pub fn models_dir(&self) -> PathBuf {
        self.models_dir.clone().unwrap_or_else(|| self.storage.data_dir.join("models"))
    }

    #[must_use]
    pub fn datasets_dir(&self) -> PathBuf {
        self.datasets_dir.clone().unwrap_or_else(|| self.storage.data_dir.join("datasets"))
    }

    /// Where the self-signed certificate lives.
    #[must_use]
    pub fn tls_dir(&self) -> PathBuf {
        self.storage.data_dir.join("tls")
    }

    #[must_use]
    pub fn scratch_dir(&self) -> PathBuf {
        self.storage.data_dir.join("scratch")
    }

    /// The configured keys, blanks dropped.
    #[must_use]
    pub fn keys(&self) -> Vec<String> {
        self.api_keys.iter().map(|k| k.trim().to_owned()).filter(|k| !k.is_empty()).collect()
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_stays_the_default_and_client_options_follow_their_command() {
        let cli = Cli::try_parse_from(["trainyard", "--port", "0"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.port, 0);
        assert!(matches!(Cli::try_parse_from(["trainyard", "serve", "--port", "0"]).unwrap().command, Some(Command::Serve(_))));

        let argv = ["trainyard", "models", "upload", "m.pth", "--name", "m", "--json", "--server", "https://h:1/", "--key", "k"];
        match Cli::try_parse_from(argv).unwrap().command {
            Some(Command::Client(ClientCommand::Models { action: Some(ModelsAction::Upload { file, name, overwrite }), conn })) => {
                assert_eq!((file, name.as_deref(), overwrite), (PathBuf::from("m.pth"), Some("m"), false));
                assert!(conn.json);
                assert_eq!((conn.server.as_str(), conn.key.as_deref()), ("https://h:1", Some("k")));
            }
            other => panic!("{other:?}"),
        }
        match Cli::try_parse_from(["trainyard", "datasets", "--json"]).unwrap().command {
            Some(Command::Client(ClientCommand::Datasets { action: None, conn })) => assert!(conn.json),
            other => panic!("{other:?}"),
        }
        for wrong in [
            &["trainyard", "sessions", "--server", "ftp://h"][..],
            &["trainyard", "sessions", "--server", "http://"],
            &["trainyard", "status"],
            &["trainyard", "train", "--arch", "mlp"],
            &["trainyard", "train", "--arch", "mlp", "--dataset", "d", "--set", "novalue"],
            &["trainyard", "logs", "sess_x", "--limit", "0"],
            &["trainyard", "chart", "sess_x"],
            &["trainyard", "frobnicate"],
        ] {
            let err = Cli::try_parse_from(wrong).expect_err(&format!("{wrong:?}"));
            assert_eq!(err.exit_code(), 2, "{wrong:?}");
        }
    }
}
