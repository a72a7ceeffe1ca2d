//! The `keelmq` command: `serve` (the default), `check-config`, `inspect`, `verify`, `bench`,
//! `passwd`.

mod passwd_command;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use keelmq::config::Config;
use keelmq::server::Server;

#[derive(Parser)]
#[command(
    name = "keelmq",
    version,
    about = "An MQTT broker that acknowledges only what is on disk"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

// Parsed once per process: the size of the largest command's options costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the broker (the default when no command is given).
    Serve(ServeArgs),
    /// Validate a configuration file and print the effective configuration.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Crash-consistency check against any broker: sequence-numbered QoS 1/2 traffic with
    /// persistent sessions, optionally SIGKILLing and restarting the broker; reports lost and
    /// duplicated messages and exits non-zero on any violation.
    Verify(VerifyArgs),
    /// Load generator for any broker, modelled on emqtt-bench: `conn`, `sub`, `pub`. Prints a
    /// live line per second and a summary whose last line is JSON.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Verify a data directory (WAL and state store) without changing it, and print its
    /// contents. Exits non-zero on corruption.
    Inspect {
        /// The data directory (`data_dir` of the configuration).
        data_dir: PathBuf,
        /// Print every WAL record.
        #[arg(long)]
        dump: bool,
    },
    /// Manage a password file (Mosquitto's format and `mosquitto_passwd`'s options; new
    /// entries are Argon2id).
    Passwd(passwd_command::PasswdArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Open connections and keep them idle (pinging) until the duration ends.
    Conn {
        #[command(flatten)]
        common: BenchCommon,
    },
    /// Subscribers: count, de-duplicate and time what arrives.
    Sub {
        #[command(flatten)]
        common: BenchCommon,
        /// Topic filter; `%i` is the client index.
        #[arg(short = 't', long)]
        topic: String,
        #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
        qos: u8,
        /// Stop once nothing has arrived for this many seconds (after the first message).
        #[arg(long)]
        idle_exit: Option<f64>,
        /// Stop as soon as every subscriber has its SUBACK (to set up persistent sessions).
        #[arg(long)]
        exit_when_subscribed: bool,
    },
    /// Publishers of sequence-numbered, timestamped messages.
    Pub {
        #[command(flatten)]
        common: BenchCommon,
        /// Topic; `%i` is the client index, `%s` the message's sequence number.
        #[arg(short = 't', long)]
        topic: String,
        #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
        qos: u8,
        /// Payload size in bytes (at least 28: the bench header).
        #[arg(short = 's', long, default_value_t = 256)]
        size: usize,
        /// Milliseconds between two messages of one publisher (0 = unpaced).
        #[arg(short = 'I', long)]
        interval_ms: Option<f64>,
        /// Total messages per second over all publishers (overrides --interval-ms).
        #[arg(long)]
        rate: Option<f64>,
        /// Messages per publisher (0 = until --duration ends).
        #[arg(short = 'L', long, default_value_t = 0)]
        limit: u64,
        /// Unacknowledged QoS 1/2 messages per publisher.
        #[arg(short = 'F', long, default_value_t = 32)]
        inflight: usize,
        /// Set RETAIN on every message.
        #[arg(long)]
        retain: bool,
        /// The payload as a JSON object `{"a": <seq>, "b": 1, "h": "<bench header in hex>"}`,
        /// padded with spaces to --size (for rules that read `payload.a`).
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct BenchCommon {
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    #[arg(short = 'p', long, default_value_t = 1883)]
    port: u16,
    /// Number of clients.
    #[arg(short = 'c', long, default_value_t = 1)]
    clients: u32,
    /// New connections per second (0 = as fast as they are accepted).
    #[arg(short = 'R', long, default_value_t = 0)]
    conn_rate: u32,
    /// MQTT version.
    #[arg(short = 'V', long, default_value = "3.1.1", value_parser = ["3.1", "3.1.1", "5"])]
    mqtt: String,
    /// Client ids are PREFIX-INDEX (default: kqb-MODE-PID, unique per process; give a fixed
    /// prefix to resume persistent sessions in a later run).
    #[arg(long)]
    prefix: Option<String>,
    /// Index of the first client.
    #[arg(long, default_value_t = 0)]
    first_index: u32,
    /// Seconds to run (pub: of sending; then outstanding acknowledgements are awaited).
    #[arg(short = 'd', long)]
    duration: Option<f64>,
    #[arg(short = 'k', long, default_value_t = 60)]
    keep_alive: u16,
    /// Keep the session: Clean Session 0 / Clean Start 0 (with --session-expiry in 5.0).
    #[arg(long)]
    persistent: bool,
    /// Session Expiry Interval in seconds (5.0).
    #[arg(long, default_value_t = 0)]
    session_expiry: u32,
    /// Worker threads of the load generator (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// No live line.
    #[arg(long)]
    quiet: bool,
    /// Connect over TLS, trusting the CAs in this PEM file.
    #[arg(long)]
    cafile: Option<std::path::PathBuf>,
    /// With --cafile: the client certificate chain (PEM) to present.
    #[arg(long, requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// With --cert: its private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// With --cafile: the name expected in the broker's certificate (default: --host).
    #[arg(long)]
    tls_server_name: Option<String>,
    /// Speak MQTT over WebSocket, upgrading on this path (e.g. /mqtt); with --cafile over TLS.
    #[arg(long)]
    ws_path: Option<String>,
}

fn seconds(name: &str, v: Option<f64>) -> anyhow::Result<Option<Duration>> {
    match v {
        None => Ok(None),
        Some(s) if s.is_finite() && s >= 0.0 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => anyhow::bail!("{name}: {s} is not a number of seconds"),
    }
}

fn qos_of(q: u8) -> keelmq::codec::QoS {
    use keelmq::codec::QoS;
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl BenchCommon {
    fn build(&self, mode: &str) -> anyhow::Result<keelmq_tools::bench::Common> {
        use keelmq::codec::ProtocolVersion;
        if self.clients == 0 {
            anyhow::bail!("--clients must be at least 1");
        }
        let tls = match &self.cafile {
            None => None,
            Some(ca) => {
                let name = self
                    .tls_server_name
                    .clone()
                    .unwrap_or_else(|| self.host.to_string());
                let identity = self.cert.as_deref().zip(self.key.as_deref());
                Some(keelmq_tools::client::TlsClient::new(ca, &name, identity)?)
            }
        };
        let via = keelmq_tools::client::Via {
            tls,
            ws_path: self.ws_path.clone(),
        };
        Ok(keelmq_tools::bench::Common {
            addr: SocketAddr::new(self.host, self.port),
            via,
            clients: self.clients,
            conn_rate: self.conn_rate,
            version: match self.mqtt.as_str() {
                "3.1" => ProtocolVersion::V3_1,
                "5" => ProtocolVersion::V5,
                _ => ProtocolVersion::V3_1_1,
            },
            prefix: self
                .prefix
                .clone()
                .unwrap_or_else(|| format!("kqb-{mode}-{}", std::process::id())),
            first_index: self.first_index,
            duration: seconds("--duration", self.duration)?,
            keep_alive: self.keep_alive,
            clean: !self.persistent,
            session_expiry: self.session_expiry,
            live: !self.quiet,
        })
    }
}

fn bench(cmd: BenchCommand) -> anyhow::Result<()> {
    let threads = match &cmd {
        BenchCommand::Conn { common }
        | BenchCommand::Sub { common, .. }
        | BenchCommand::Pub { common, .. } => common.threads,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = builder.enable_all().build()?;
    let summary = match cmd {
        BenchCommand::Conn { common } => {
            runtime.block_on(keelmq_tools::bench::conn(common.build("conn")?))?
        }
        BenchCommand::Sub {
            common,
            topic,
            qos,
            idle_exit,
            exit_when_subscribed,
        } => {
            let o = keelmq_tools::bench::SubOptions {
                common: common.build("sub")?,
                topic,
                qos: qos_of(qos),
                idle_exit: seconds("--idle-exit", idle_exit)?,
                exit_when_subscribed,
            };
            runtime.block_on(keelmq_tools::bench::sub(o))?
        }
        BenchCommand::Pub {
            common,
            topic,
            qos,
            size,
            interval_ms,
            rate,
            limit,
            inflight,
            retain,
            json,
        } => {
            let o = keelmq_tools::bench::PubOptions {
                common: common.build("pub")?,
                topic,
                qos: qos_of(qos),
                retain,
                size,
                interval: seconds("--interval-ms", interval_ms.map(|ms| ms / 1000.0))?,
                rate,
                limit,
                inflight,
                json,
            };
            runtime.block_on(keelmq_tools::bench::publish(o))?
        }
    };
    // Clients still blocked in a connect attempt must not hold the process.
    runtime.shutdown_timeout(Duration::from_secs(1));
    summary.print();
    Ok(())
}

#[derive(clap::Args)]
struct VerifyArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Command that starts the broker on HOST:PORT (run through `sh -c "exec ..."`).
    #[arg(long)]
    start_cmd: Option<String>,
    /// How many times to SIGKILL and restart the broker (needs --start-cmd).
    #[arg(long, default_value_t = 0)]
    kills: u32,
    /// QoS of the published messages.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    qos: u8,
    /// MQTT version of both clients.
    #[arg(long, default_value = "5", value_parser = ["3.1.1", "5"])]
    mqtt: String,
    /// Milliseconds of load between kills (and of the whole run without kills).
    #[arg(long, default_value_t = 500)]
    cycle_ms: u64,
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// TOML configuration file; every field has a default (see keelmq.example.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address for MQTT over TCP, overriding `listener.bind` (or the first `tcp` entry of `[[listeners]]`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory, overriding `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the HTTP API, Prometheus metrics and dashboard, overriding `api.bind`.
    #[arg(long)]
    api_bind: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(args),
        Command::CheckConfig { file } => check_config(&file),
        Command::Inspect { data_dir, dump } => inspect(&data_dir, dump),
        Command::Verify(args) => verify(args),
        Command::Bench(cmd) => bench(cmd),
        Command::Passwd(args) => passwd_command::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keelmq: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    use keelmq::codec::{ProtocolVersion, QoS};
    if a.kills > 0 && a.start_cmd.is_none() {
        anyhow::bail!("--kills needs --start-cmd to restart the broker");
    }
    let opts = keelmq_tools::verify::VerifyOptions {
        addr: std::net::SocketAddr::new(a.host, a.port),
        qos: if a.qos == 1 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        },
        version: if a.mqtt == "5" {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V3_1_1
        },
        start_cmd: a.start_cmd,
        kills: a.kills,
        cycle: Duration::from_millis(a.cycle_ms),
        window: 8,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let r = runtime.block_on(keelmq_tools::verify::run(opts))?;
    println!("published:       {}", r.published);
    println!("acknowledged:    {}", r.acknowledged);
    println!("received:        {}", r.received);
    println!(
        "lost:            {} {:?}",
        r.lost.len(),
        &r.lost[..r.lost.len().min(20)]
    );
    println!(
        "duplicated QoS2: {} {:?}",
        r.duplicated_qos2.len(),
        &r.duplicated_qos2[..r.duplicated_qos2.len().min(20)]
    );
    println!("duplicated QoS1: {} (allowed)", r.duplicated_qos1);
    println!("sessions lost:   {}", r.sessions_lost);
    for v in &r.violations {
        println!("violation:       {v}");
    }
    if !r.ok() {
        anyhow::bail!("crash consistency violated");
    }
    println!("OK");
    Ok(())
}

fn inspect(dir: &std::path::Path, dump: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let report = keelmq::persistence::inspect::inspect(dir, dump, &mut out)?;
    if !report.problems.is_empty() {
        anyhow::bail!(
            "{} problem(s) found in {}",
            report.problems.len(),
            dir.display()
        );
    }
    Ok(())
}

fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    keelmq::transport::check_files(&config)?;
    keelmq::auth::authenticator(&config)?;
    keelmq::auth::acl::AclAuthorizer::from_config(&config.authz)?;
    println!("{}: OK\n{config:#?}", file.display());
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let overrides = keelmq::reload::Overrides {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        api_bind: args.api_bind,
    };
    overrides.apply(&mut config).map_err(anyhow::Error::msg)?;
    config.validate()?;
    let source = args.config.clone().map(|path| (path, overrides));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime.workers(cores))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // Before the start: a signal while starting is handled (SIGHUP as a reload, SIGTERM and
        // SIGINT as a shutdown once started), not given its default action (termination).
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = signal(SignalKind::hangup())?;
        let (mut term, mut int) = (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        );
        let server = Server::start_from(config, source).await?;
        let mut stopped = server.broker().shutdown_signal();
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                // The broker stops itself when persistence fails.
                _ = stopped.changed() => break,
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    // The outcome is logged by the reload itself.
                    let _ = server.reload().await;
                }
            }
        }
        tracing::info!("shutting down");
        if server.shutdown(Duration::from_secs(5)).await {
            anyhow::bail!("persistence failed; acknowledged data up to the failure is on disk");
        }
        Ok(())
    })
}
