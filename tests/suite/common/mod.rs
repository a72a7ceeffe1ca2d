//! Shared harness for the integration tests: real brokers on ephemeral loopback ports, either
//! in-process ([`start`]) or as the `keelmq` binary in a child process ([`BrokerProcess`]).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keelmq::config::Config;
use keelmq::server::Server;

pub mod certs;
pub mod raw;
pub mod servers;

/// A configuration for tests: an ephemeral loopback port, `$SYS` every second, a fresh
/// data directory of its own, and no HTTP API (the API's tests turn it on).
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.listener.bind = "127.0.0.1:0".parse().unwrap();
    c.api.enabled = false;
    c.sys.interval_secs = 1;
    c.data_dir = temp_dir("broker");
    // Small WAL segments: a test writes little, and each broker has its own directory.
    c.storage.wal_segment_bytes = 1 << 20;
    c
}

/// A fresh directory under the system temp directory, unique to this process and call.
///
/// In-process brokers do not own their data directory, so nothing removes it when a test
/// ends; instead, the first call in each test process removes the directories left by test
/// processes that no longer run. A failed run's directories stay for diagnosis until the next
/// run.
pub fn temp_dir(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(remove_dirs_of_finished_runs);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("keelmq-test-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Removes `keelmq-test-<name>-<pid>-<n>` directories whose process is gone.
fn remove_dirs_of_finished_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix("keelmq-test-"))
        else {
            continue;
        };
        // <name>-<pid>-<n>: the pid is the second number from the end.
        let mut parts = rest.rsplitn(3, '-');
        let (Some(_n), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Starts an in-process broker.
pub async fn start(config: Config) -> Server {
    Server::start(config).await.expect("broker starts")
}

/// Whether the interop peers must be present (set by scripts/test.sh, so CI never skips).
pub fn interop_required() -> bool {
    std::env::var_os("KEELMQ_REQUIRE_INTEROP").is_some()
}

/// Finds an external tool, or returns `None` (after failing the test if interop is required).
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            !interop_required(),
            "{name} is required (KEELMQ_REQUIRE_INTEROP) but missing"
        );
        eprintln!("skipping: {name} not installed");
    }
    found
}

/// The `keelmq` binary running in a child process, killed (SIGKILL) when dropped.
pub struct BrokerProcess {
    pub child: Child,
    /// The first listener's address.
    pub addr: SocketAddr,
    /// Every listener's address as the broker reports it, by name.
    listeners: std::sync::Arc<parking_lot::Mutex<std::collections::HashMap<String, SocketAddr>>>,
    /// A data directory this harness created, removed on drop.
    owned_dir: Option<PathBuf>,
}

impl BrokerProcess {
    /// Starts `keelmq serve --listen 127.0.0.1:0 --api-bind 127.0.0.1:0` with extra arguments
    /// and waits until it reports its address (the API's: `listener_addr("api")`).
    pub fn start(extra_args: &[&str]) -> BrokerProcess {
        let dir = temp_dir("process");
        let dir_arg = dir.to_str().expect("utf-8 temp dir").to_string();
        let mut args = vec!["--data-dir", dir_arg.as_str()];
        args.extend_from_slice(extra_args);
        let mut process = Self::start_with(Path::new(env!("CARGO_BIN_EXE_keelmq")), &args);
        process.owned_dir = Some(dir);
        process
    }

    pub fn start_with(binary: &Path, extra_args: &[&str]) -> BrokerProcess {
        let mut child = Command::new(binary)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--api-bind", "127.0.0.1:0"])
            .args(extra_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("keelmq starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let listeners =
            std::sync::Arc::new(parking_lot::Mutex::new(std::collections::HashMap::new()));
        let found = listeners.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("api_addr=").nth(1) {
                    let addr = addr.split_whitespace().next().unwrap_or("").parse();
                    if let Ok(a) = addr {
                        found.lock().insert("api".to_string(), a);
                    }
                }
                if let Some(addr) = line.split("local_addr=").nth(1) {
                    let addr = addr
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .parse::<SocketAddr>();
                    let name = line
                        .split("listener=")
                        .nth(1)
                        .and_then(|n| n.split_whitespace().next());
                    if let (Some(name), Ok(a)) = (name, &addr) {
                        found.lock().insert(name.to_string(), *a);
                    }
                    if let (Some(tx), Ok(a)) = (tx.take(), addr) {
                        let _ = tx.send(a);
                    }
                }
                if std::env::var_os("KEELMQ_TEST_BROKER_LOG").is_some() {
                    eprintln!("[keelmq] {line}");
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("keelmq reports its listening address");
        BrokerProcess {
            child,
            addr,
            listeners,
            owned_dir: None,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address of listener `name` (waits up to 10 s for the broker to report it).
    pub fn listener_addr(&self, name: &str) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(a) = self.listeners.lock().get(name) {
                return *a;
            }
            assert!(
                Instant::now() < deadline,
                "the broker reports no listener {name}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.owned_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// The Python interpreter with paho-mqtt 2.x (`$KEELMQ_PYTHON`, else `python3`), or `None`
/// (test skipped) when there is none; fails instead when interop is required.
pub fn paho_python() -> Option<String> {
    use std::sync::OnceLock;
    static PYTHON: OnceLock<Result<String, String>> = OnceLock::new();
    let found = PYTHON.get_or_init(|| {
        let python = std::env::var("KEELMQ_PYTHON").unwrap_or_else(|_| "python3".to_string());
        let probe = Command::new(&python)
            .args([
                "-c",
                "import paho.mqtt as m; assert int(m.__version__.split('.')[0]) >= 2, m.__version__",
            ])
            .stdin(Stdio::null())
            .output();
        match probe {
            Ok(out) if out.status.success() => Ok(python),
            Ok(out) => Err(format!("{python}: {}", String::from_utf8_lossy(&out.stderr).trim())),
            Err(e) => Err(format!("{python}: {e}")),
        }
    });
    match found {
        Ok(python) => Some(python.clone()),
        Err(why) => {
            assert!(
                !interop_required(),
                "python3 with paho-mqtt 2.x is required (KEELMQ_REQUIRE_INTEROP) but unusable: {why}"
            );
            eprintln!("skipping: python3 with paho-mqtt 2.x unusable: {why}");
            None
        }
    }
}

/// Reads a child's pipe to the end on a thread, so the child never blocks on a full pipe.
pub fn drain(pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut pipe = pipe;
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// What a script run by [`run_python`] did: its exit status (`None`: killed at the timeout)
/// and its output.
pub struct ScriptRun {
    pub status: Option<std::process::ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `python script args...` unbuffered, with no stdin, for at most `timeout`.
pub fn run_python(
    python: &str,
    script: &Path,
    args: &[&std::ffi::OsStr],
    timeout: Duration,
) -> ScriptRun {
    let mut child = Command::new(python)
        .arg(script)
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));
    let status = wait_timeout(&mut child, timeout);
    ScriptRun {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Waits for a child until `timeout`; kills it (SIGKILL) and returns `None` if it is still
/// running then.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waits for the child") {
            return Some(status);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connects `id` with a persistent session (expiry 3600 s) to the broker at `addr`, if there
/// is one: `None` when there is no broker to reach, it answers nothing in time (crash tests
/// kill it at any moment), or it refuses.
pub async fn connect_persistent(
    addr: Option<SocketAddr>,
    version: keelmq::codec::ProtocolVersion,
    id: &str,
    clean: bool,
) -> Option<(raw::RawClient, keelmq::codec::ConnAck)> {
    connect_persistent_over(addr, None, version, id, clean).await
}

/// [`connect_persistent`] over TLS when `tls` is given.
pub async fn connect_persistent_over(
    addr: Option<SocketAddr>,
    tls: Option<&keelmq_tools::client::TlsClient>,
    version: keelmq::codec::ProtocolVersion,
    id: &str,
    clean: bool,
) -> Option<(raw::RawClient, keelmq::codec::ConnAck)> {
    let mut c = tokio::time::timeout(
        Duration::from_secs(2),
        raw::RawClient::try_open(addr?, version, tls),
    )
    .await
    .ok()??;
    let handshake = c.try_handshake(id, clean, |c| {
        c.properties.session_expiry_interval = Some(3600)
    });
    let ack = tokio::time::timeout(Duration::from_secs(3), handshake)
        .await
        .ok()??;
    (ack.code == keelmq::codec::ReasonCode::SUCCESS).then_some((c, ack))
}

/// Persistence settings for tests on the in-memory file system: 64 KiB segments, every sync
/// `Always`, no checkpoint unless a test asks for one.
pub fn memfs_persistence_options() -> keelmq::persistence::PersistenceOptions {
    keelmq::persistence::PersistenceOptions {
        sync: keelmq_wal::SyncPolicy::Always,
        segment_bytes: 64 * 1024,
        wal_writer_nice: None,
        commit_window: std::time::Duration::ZERO,
        commit_quiet: std::time::Duration::ZERO,
        checkpoint_interval: Duration::from_secs(3600),
        checkpoint_wal_bytes: u64::MAX,
        store: keelmq_storage::StoreOptions::default(),
    }
}

/// What a command-line client did: its exit code (`None`: killed by a signal) and output.
pub struct ToolRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `tool` with `args` (standard input empty) and fails the test unless it ends within
/// `timeout`.
pub fn run_tool<S: AsRef<std::ffi::OsStr>>(tool: &Path, args: &[S], timeout: Duration) -> ToolRun {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} starts: {e}", tool.display()));
    let stdout = drain(child.stdout.take().expect("piped"));
    let stderr = drain(child.stderr.take().expect("piped"));
    let status = wait_timeout(&mut child, timeout)
        .unwrap_or_else(|| panic!("{} still running after {timeout:?}", tool.display()));
    ToolRun {
        code: status.code(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// `keelmq passwd [-c] -b FILE USER PASSWORD` (`-c` with `create`); fails the test if it fails.
pub fn keelmq_passwd_set(file: &Path, user: &str, password: &str, create: bool) {
    let mut args: Vec<&std::ffi::OsStr> = vec!["passwd".as_ref()];
    if create {
        args.push("-c".as_ref());
    }
    args.extend([
        "-b".as_ref(),
        file.as_os_str(),
        user.as_ref(),
        password.as_ref(),
    ]);
    let run = run_tool(
        Path::new(env!("CARGO_BIN_EXE_keelmq")),
        &args,
        Duration::from_secs(30),
    );
    assert_eq!(run.code, Some(0), "keelmq passwd {user}: {}", run.stderr);
}

/// `mosquitto_pub` (or `mosquitto_sub`) against 127.0.0.1:`port` with `args`.
pub fn mosquitto(tool: &Path, port: u16, args: &[&str]) -> ToolRun {
    let port = port.to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", port.as_str()];
    all.extend_from_slice(args);
    run_tool(tool, &all, Duration::from_secs(20))
}

/// `keelmq check-config` on `text` (written to `dir/name`): (whether it passed, stderr).
pub fn check_config(dir: &Path, name: &str, text: &str) -> (bool, String) {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let args = [std::ffi::OsStr::new("check-config"), path.as_os_str()];
    let run = run_tool(
        Path::new(env!("CARGO_BIN_EXE_keelmq")),
        &args,
        Duration::from_secs(30),
    );
    (run.code == Some(0), run.stderr)
}
