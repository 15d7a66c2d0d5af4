//! Command-line and environment configuration. Every setting has a flag; the old server's
//! environment variables (`API_KEYS`, `API_HOST`, `API_PORT`, `DATABASE_PATH`, `MODELS_DIR`,
//! `DATASETS_DIR`, `MAX_CONCURRENT_SESSIONS`) are honoured.

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
    /// Sessions that may train at once; the rest wait in a FIFO queue.
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
