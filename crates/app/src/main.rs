//! The `trainyard` binary: reads configuration, builds the adapters, wires them into the
//! domain's services and the HTTP server, and runs until SIGINT or SIGTERM; or, as a client,
//! runs one command against a server.

mod cli;
mod client;
mod examples;
mod keys;

use std::{
    sync::{mpsc, Arc},
    thread,
    time::Duration as StdDuration,
};

use anyhow::Context;
use clap::Parser;
use trainyard_charts::PlottersRenderer;
use trainyard_domain::{
    auth::Authenticator,
    catalog::Catalog,
    charts::Charts,
    events::Event,
    inference::Inference,
    manager::{Ports, SchedulerPolicy, SessionManager},
    ports::{AuthStore, SystemClock, SystemMonitor},
    sweeps::{SweepPorts, Sweeps},
    system::human_mb,
    telegram::{Part, TelegramComposer, TelegramSettings, TelegramStatus},
    webhooks::{HostResolver, RetrySchedule, WebhookStore, Webhooks},
};
use trainyard_http::{
    cors,
    events::{EventEnvelope, EventHub},
    host_check::HostPolicy,
    tls, AppState, GovernorLimiter, Limits, Metrics, Timeouts, Transport, TrustedProxies, UploadLimits,
};
use trainyard_monitor::CachedMonitor;
use trainyard_notify::{Compose, Notifier, NotifierConfig, SystemResolver, TelegramConfig, TelegramNotifier};
use trainyard_storage_sqlite::{Database, FileDatasetRegistry, FileModelRegistry, LocalScratch, SqliteStore};
use trainyard_supervisor::{ProcessTrainer, RunCommand, SupervisionLimits};
use trainyard_trainer_candle::{gpu, CandleGenerator, CandlePredictor, CandleTrainer, FileInspector, FileModelInspector};

use crate::cli::{Cli, Command, LogFormat, ServeArgs};

/// How often queued sessions are reconsidered and retention runs.
const TICK: StdDuration = StdDuration::from_secs(2);
/// How often a training run's memory is measured.
const RUN_SAMPLE_INTERVAL: StdDuration = StdDuration::from_millis(250);
/// How often the monitor refreshes its snapshot.
const MONITOR_INTERVAL: StdDuration = StdDuration::from_secs(2);

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Serve(args)) => serve(*args),
        None => serve(cli.serve),
        Some(Command::Keys { storage, action }) => {
            let db = Database::open(&storage.database()).context("opening the database")?;
            keys::run(&SqliteStore::new(db), action)
        }
        Some(Command::Openapi) => {
            println!("{}", trainyard_http::openapi_json());
            Ok(())
        }
        Some(Command::Client(command)) => std::process::exit(client::run(command)),
        Some(Command::RunSession) => {
            trainyard_trainer_candle::configure_cpu_threads();
            // Standard error reaches the server's log; warnings and worse are enough there.
            let filter =
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
            std::process::exit(i32::from(trainyard_supervisor::worker::serve(Arc::new(CandleTrainer::new()))));
        }
    }
}

/// The default run memory limit: the machine's memory less 1 GB for the server and a margin,
/// and never under 256 MB.
fn default_run_memory_limit_mb(total_mb: u64) -> u64 {
    total_mb.saturating_sub(1024).max(256)
}

fn init_logging(args: &ServeArgs) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{},actix_server=warn", args.log_level)));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(&args);
    let transport = transport(&args)?;
    let scheme = if transport.tls.is_some() { "https" } else { "http" };
    let db = Database::open(&args.storage.database()).context("opening the database")?;
    let store = Arc::new(SqliteStore::new(db.clone()));
    let models = Arc::new(FileModelRegistry::open(db.clone(), args.models_dir()).context("opening the model registry")?);
    let datasets = Arc::new(FileDatasetRegistry::open(db, args.datasets_dir()).context("opening the dataset registry")?);
    let monitor = Arc::new(CachedMonitor::start(args.storage.data_dir.clone(), MONITOR_INTERVAL));
    let clock = Arc::new(SystemClock);
    let run_memory_limit_mb = args.run_memory_limit_mb.unwrap_or_else(|| default_run_memory_limit_mb(monitor.snapshot().memory_total_mb));
    let model_inspector = Arc::new(FileModelInspector::new());
    tracing::info!(cuda = %gpu::cuda(), "devices");
    let ports = Ports {
        sessions: store.clone(),
        metrics: store.clone(),
        logs: store.clone(),
        datasets: datasets.clone(),
        models: models.clone(),
        model_inspector: model_inspector.clone(),
        scratch: Arc::new(LocalScratch::new(args.scratch_dir())),
        trainer: Arc::new(ProcessTrainer::new(
            RunCommand {
                program: std::env::current_exe().context("finding the trainyard binary")?,
                args: vec!["run-session".to_owned()],
                env: trainyard_trainer_candle::run_process_env(),
            },
            SupervisionLimits {
                memory_limit_mb: run_memory_limit_mb,
                stall_timeout: StdDuration::from_secs(args.run_stall_timeout_secs.max(1)),
                sample_every: RUN_SAMPLE_INTERVAL,
                gpu_usable: !gpu::cuda().gpus().is_empty(),
            },
            Arc::new(CandleTrainer::new()),
        )),
        monitor: monitor.clone(),
        clock: clock.clone(),
        events: store.clone(),
    };
    let policy = SchedulerPolicy {
        max_concurrent: args.max_concurrent_sessions,
        memory_reserve_mb: args.memory_reserve_mb,
        run_memory_limit_mb,
        retention: time::Duration::days(i64::from(args.retention_days)),
    };
    let manager = SessionManager::new(ports, policy);
    let metrics = Metrics::attach(&manager, args.metrics_public);
    let inference = Inference::new(models.clone(), Arc::new(CandleGenerator::new()), Arc::new(CandlePredictor::new()));
    // Before recovery, so that the sweeps see the events of the sessions it resumes.
    let sweeps = Sweeps::start(
        manager.clone(),
        SweepPorts { store: store.clone(), sessions: store.clone(), metrics: store.clone(), models: models.clone(), clock: clock.clone() },
    )
    .context("starting sweeps")?;
    let catalog = Catalog::new(models, datasets, Arc::new(FileInspector::new()), model_inspector, store.clone());
    let webhook_store: Arc<dyn WebhookStore> = store.clone();
    let resolver: Arc<dyn HostResolver> = Arc::new(SystemResolver);
    let webhooks = Webhooks::new(webhook_store.clone(), resolver.clone(), clock.clone(), args.webhooks_allow_private);
    let auth_store: Arc<dyn AuthStore> = store.clone();
    let proxies = TrustedProxies::parse(&args.trusted_proxies).map_err(anyhow::Error::msg).context("--trusted-proxies")?;
    let limiter = GovernorLimiter::new(Limits {
        failures_per_minute: args.auth_failures_per_minute,
        requests_per_key_per_minute: args.rate_limit_per_key,
    });
    let schedule = RetrySchedule::new(time::Duration::milliseconds(i64::try_from(args.webhook_retry_base_ms).unwrap_or(1000)));
    let notifier = Notifier::start(
        webhook_store,
        manager.events(),
        clock.clone(),
        resolver,
        Arc::new(|event: &Event| serde_json::to_vec(&EventEnvelope::from(event)).unwrap_or_default()),
        NotifierConfig { allow_private: args.webhooks_allow_private, timeout: StdDuration::from_secs(args.webhook_timeout_secs), schedule },
    )
    .context("starting webhook delivery")?;
    // A photo upload may take longer than a webhook's POST: at least 30 s.
    let telegram_config = TelegramConfig { timeout: StdDuration::from_secs(args.webhook_timeout_secs.max(30)), schedule };
    let (telegram, telegram_status) = start_telegram(&args, store.clone(), &manager, clock.clone(), telegram_config)?;
    let authenticator = Arc::new(Authenticator::new(&args.keys(), auth_store.clone(), clock).with_limiter(Arc::new(limiter)));

    if args.examples {
        let added = examples::register(&catalog).context("registering the example datasets")?;
        if !added.is_empty() {
            tracing::info!(datasets = ?added, "registered example datasets");
        }
    }
    let resumed = manager.recover().context("recovering sessions")?;
    if !resumed.is_empty() {
        tracing::warn!(count = resumed.len(), "resuming sessions interrupted by the last shutdown");
    }

    let state = AppState {
        manager: manager.clone(),
        catalog,
        inference,
        authenticator: authenticator.clone(),
        auth_store: auth_store.clone(),
        monitor,
        limits: UploadLimits {
            model_max_bytes: args.max_model_upload_mb.saturating_mul(1024 * 1024),
            dataset_max_bytes: args.max_dataset_upload_mb.saturating_mul(1024 * 1024),
            body_idle_timeout: StdDuration::from_secs(args.body_idle_timeout_secs),
        },
        proxies,
        events: EventHub::attach(&manager, StdDuration::from_secs(args.events_heartbeat_secs.max(1))),
        charts: Charts::new(manager.clone(), Arc::new(PlottersRenderer::new())),
        webhooks,
        telegram: telegram_status,
        sweeps,
        metrics,
    };
    let workers = args.workers.unwrap_or_else(|| thread::available_parallelism().map_or(2, |n| n.get().min(4)));
    actix_web::rt::System::new().block_on(async move {
        let (server, addrs) = trainyard_http::server(state, (args.host.as_str(), args.port), workers, transport)
            .with_context(|| format!("binding {}:{}", args.host, args.port))?;
        let base_url = addrs.first().map(|a| format!("{scheme}://{a}")).unwrap_or_default();
        keys::ensure_initial_key(&auth_store, authenticator.has_usable_key()?, &base_url)?;
        let (stop_ticker, ticker) = start_ticker(manager.clone())?;
        tracing::info!(
            data_dir = %args.storage.data_dir.display(),
            run_memory_limit = %human_mb(run_memory_limit_mb),
            "trainyard {} ready; each session trains in a process of its own",
            trainyard_http::VERSION
        );
        println!("listening on {base_url}");
        server.await.context("running the HTTP server")?;
        tracing::info!("HTTP server stopped; stopping running sessions and saving their weights");
        drop(stop_ticker);
        let _ = ticker.join();
        if !manager.shutdown(StdDuration::from_secs(args.shutdown_timeout_secs)) {
            tracing::warn!("some sessions did not stop in time");
        }
        // Deliveries not yet made (the sessions' last events among them) go out at the next start.
        notifier.stop();
        if let Some(telegram) = telegram {
            telegram.stop();
        }
        tracing::info!("shutdown complete");
        anyhow::Ok(())
    })
}

/// Starts Telegram notifications when a bot token and chats are configured; and the status the
/// API shows either way.
fn start_telegram(
    args: &ServeArgs,
    store: Arc<SqliteStore>,
    manager: &SessionManager,
    clock: Arc<SystemClock>,
    config: TelegramConfig,
) -> anyhow::Result<(Option<TelegramNotifier>, TelegramStatus)> {
    let every = Some(args.telegram_every_epochs);
    let settings =
        TelegramSettings::from_config(args.telegram_bot_token.as_deref(), &args.telegram_chat_ids, &args.telegram_api_url, every)?;
    let status = TelegramStatus::new(settings.clone(), store.clone());
    let Some(settings) = settings else { return Ok((None, status)) };
    tracing::info!(
        chats = settings.chats.len(),
        api = %settings.api_url,
        every_epochs = settings.every_epochs.map_or(0, std::num::NonZeroU32::get),
        "Telegram notifications on"
    );
    let composer = TelegramComposer::new(manager.clone(), Charts::new(manager.clone(), Arc::new(PlottersRenderer::new())));
    let compose: Compose = Arc::new(move |event: &Event, part: Part| composer.compose(event, part));
    let notifier =
        TelegramNotifier::start(store, manager.events(), clock, settings, compose, config).context("starting Telegram notifications")?;
    Ok((Some(notifier), status))
}

/// HTTPS (the given certificate, or the self-signed one made in the data directory, its
/// fingerprint printed for pinning), timeouts, the Host check and CORS origins from the flags.
fn transport(args: &ServeArgs) -> anyhow::Result<Transport> {
    let files = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::TlsFiles { cert: cert.clone(), key: key.clone() }),
        (None, None) if args.tls_self_signed => {
            let names = if args.tls_self_signed_names.is_empty() {
                tls::default_self_signed_names(&args.host)
            } else {
                args.tls_self_signed_names.iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect()
            };
            let (files, made) = tls::self_signed(&args.tls_dir(), &names).context("making the self-signed certificate")?;
            if made {
                tracing::info!(names = ?names, cert = %files.cert.display(), "made a self-signed TLS certificate");
            }
            Some(files)
        }
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key go together: give both files, or neither"),
    };
    let tls = match files {
        Some(files) => {
            let cert = tls::ReloadingCert::load(files).context("loading the TLS certificate")?;
            let fingerprint = cert.fingerprint();
            tracing::info!(%fingerprint, "serving HTTPS");
            println!("TLS certificate SHA-256 fingerprint: {fingerprint}");
            Some(cert)
        }
        None => None,
    };
    let hosts = HostPolicy::new(&args.host, &args.allowed_hosts)?;
    if !hosts.is_checking() {
        tracing::info!(host = %args.host, "not bound to loopback and no --allowed-hosts: requests are answered whatever their Host");
    }
    Ok(Transport {
        tls,
        tls_reload_every: StdDuration::from_secs(args.tls_reload_secs),
        timeouts: Timeouts {
            request_header: StdDuration::from_secs(args.request_header_timeout_secs),
            keep_alive: StdDuration::from_secs(args.keep_alive_secs),
            client_disconnect: StdDuration::from_secs(args.client_disconnect_timeout_secs),
        },
        hosts,
        cors_origins: cors::parse_origins(&args.cors_origins)?,
    })
}

/// A thread that calls [`SessionManager::tick`] every [`TICK`] until the sender is dropped.
fn start_ticker(manager: SessionManager) -> anyhow::Result<(mpsc::Sender<()>, thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel::<()>();
    let handle = thread::Builder::new()
        .name("scheduler-tick".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(TICK) {
                manager.tick();
            }
        })
        .context("spawning the scheduler thread")?;
    Ok((tx, handle))
}
