//! The `keelmq` command: `serve` (the default), `check-config`.

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
    /// Verify a data directory (WAL and state store) without changing it, and print its
    /// contents. Exits non-zero on corruption.
    Inspect {
        /// The data directory (`data_dir` of the configuration).
        data_dir: PathBuf,
        /// Print every WAL record.
        #[arg(long)]
        dump: bool,
    },
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
    /// Address for MQTT over TCP, overriding `listener.bind`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory, overriding `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
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
    let opts = keelmq::verify::VerifyOptions {
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
    let r = runtime.block_on(keelmq::verify::run(opts))?;
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
    let report = keelmq::inspect::inspect(dir, dump, &mut out)?;
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
    println!("{}: OK\n{config:#?}", file.display());
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listener.bind = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let server = Server::start(config).await?;
        let mut stopped = server.broker().shutdown_signal();
        tokio::select! {
            r = wait_for_signal() => r?,
            // The broker stops itself when persistence fails.
            _ = stopped.changed() => {}
        }
        tracing::info!("shutting down");
        if server.shutdown(Duration::from_secs(5)).await {
            anyhow::bail!("persistence failed; acknowledged data up to the failure is on disk");
        }
        Ok(())
    })
}

/// Waits for SIGINT or SIGTERM.
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
