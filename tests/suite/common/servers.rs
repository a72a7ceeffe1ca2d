//! Real target systems for the bridge tests, each a throwaway instance on a free loopback port
//! in a directory of its own, stopped when dropped: PostgreSQL (Debian's, `initdb` + `postgres`
//! run as the `postgres` user when the tests run as root) and Redis (`redis-server`, no
//! persistence). Each can be stopped and hung (SIGSTOP) for outage tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{interop_required, temp_dir, wait_until};

/// A free loopback TCP port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}

/// Starts a server's process in its directory on its port.
type Starter = Box<dyn Fn(&Path, u16) -> Child + Send>;

/// A server process, killed when dropped.
pub struct Server {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    start: Starter,
    /// The signal that stops it at once (PostgreSQL: SIGQUIT, which ends its backends too).
    stop_signal: &'static str,
}

impl Server {
    /// Starts a server in `dir` on a free port and waits until it listens.
    fn launch(dir: PathBuf, start: Starter, what: &str, stop_signal: &'static str) -> Server {
        let port = free_port();
        let child = start(&dir, port);
        assert!(
            wait_until(Duration::from_secs(30), || listening(port)),
            "{what} listens"
        );
        Server {
            port,
            dir,
            child: Some(child),
            start,
            stop_signal,
        }
    }

    /// Stops the server at once (no clean shutdown) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, "-CONT");
            signal(&c, self.stop_signal);
            if super::wait_timeout(&mut c, Duration::from_secs(10)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Some((self.start)(&self.dir, self.port));
        assert!(
            wait_until(Duration::from_secs(30), || listening(self.port)),
            "server listens again on {}",
            self.port
        );
    }

    /// Hangs it (SIGSTOP): connections stay open, nothing answers.
    pub fn hang(&self) {
        if let Some(c) = &self.child {
            signal(c, "-STOP");
        }
    }

    pub fn resume(&self) {
        if let Some(c) = &self.child {
            signal(c, "-CONT");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn found(path: &str, what: &str) -> Option<PathBuf> {
    let p = PathBuf::from(path);
    if p.is_file() {
        return Some(p);
    }
    assert!(
        !interop_required(),
        "{what} is required (KEELMQ_REQUIRE_INTEROP) but {path} is missing"
    );
    eprintln!("skipping: {what} not installed");
    None
}

/// The directory of Debian's PostgreSQL programs (the newest version installed).
fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    versions.sort();
    let bin = versions.pop();
    if bin.is_none() {
        found("/usr/lib/postgresql/<version>/bin/initdb", "PostgreSQL")?;
    }
    bin
}

fn is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false)
}

/// `program args…`, as the `postgres` user when running as root (PostgreSQL refuses root);
/// `setpriv` executes it in place, so the child is the program itself (signals reach it).
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A PostgreSQL cluster with database `keelmq` and a superuser `keelmq` (password `secret`,
/// scram-sha-256 over TCP), or `None` if PostgreSQL is not installed (and not required).
pub fn postgres() -> Option<Server> {
    let bin = pg_bin()?;
    let dir = temp_dir("postgres");
    std::fs::create_dir_all(&dir).expect("postgres dir");
    if is_root() {
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status();
    }
    let pwfile = dir.join("pw");
    std::fs::write(&pwfile, "secret\n").expect("password file");
    if is_root() {
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&pwfile)
            .status();
    }
    let data = dir.join("data");
    let init = as_postgres(&bin.join("initdb"))
        .args(["-D"])
        .arg(&data)
        .args([
            "-U",
            "keelmq",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("initdb runs");
    assert!(
        init.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let postgres = bin.join("postgres");
    let start = move |dir: &Path, port: u16| {
        as_postgres(&postgres)
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .args(["-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres starts")
    };
    let server = Server::launch(dir, Box::new(start), "postgres", "-QUIT");
    let created = psql_as(&bin, &server, "postgres", "CREATE DATABASE keelmq");
    assert!(created.is_some(), "database created");
    Some(server)
}

fn psql_as(bin: &Path, server: &Server, db: &str, sql: &str) -> Option<String> {
    let out = as_postgres(&bin.join("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "keelmq",
            "-d",
            db,
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .args(["-p", &server.port.to_string()])
        .env("PGPASSWORD", "secret")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("psql: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs `sql` in database `keelmq` with `psql` (an independent client); its output (`-At`).
/// Tried again for up to 10 s (a server that was just started may not take connections yet).
pub fn psql(server: &Server, sql: &str) -> String {
    let bin = pg_bin().expect("postgres installed");
    let mut out = None;
    wait_until(Duration::from_secs(10), || {
        out = psql_as(&bin, server, "keelmq", sql);
        out.is_some()
    });
    out.unwrap_or_else(|| panic!("psql `{sql}` failed"))
}

/// A Redis server without persistence, or `None` if it is not installed (and not required).
pub fn redis() -> Option<Server> {
    let program = found("/usr/bin/redis-server", "redis-server")?;
    let dir = temp_dir("redis");
    std::fs::create_dir_all(&dir).expect("redis dir");
    let start = move |dir: &Path, port: u16| {
        Command::new(&program)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts")
    };
    Some(Server::launch(dir, Box::new(start), "redis", "-KILL"))
}

/// Runs a command with `redis-cli` (an independent client); its raw output.
pub fn redis_cli(server: &Server, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &server.port.to_string(), "--raw"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A Mosquitto broker (Debian's) as a remote for MQTT bridges: anonymous, in-memory sessions
/// (kept while it runs), at most `max_inflight` QoS 1/2 messages in flight per client.
pub fn mosquitto(max_inflight: u16) -> Option<Server> {
    let program = found("/usr/sbin/mosquitto", "mosquitto")?;
    let dir = temp_dir("mosquitto");
    std::fs::create_dir_all(&dir).expect("mosquitto dir");
    let start = move |dir: &Path, port: u16| {
        let conf = dir.join("mosquitto.conf");
        let text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_inflight_messages {max_inflight}\nmax_queued_messages 100000\n\
             log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
        );
        // Its log, for a failed test's diagnosis (it drops root, so it cannot open files here).
        let log = std::fs::File::create(dir.join("mosquitto.log")).expect("mosquitto log");
        std::fs::write(&conf, text).expect("mosquitto.conf");
        Command::new(&program)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto starts")
    };
    Some(Server::launch(dir, Box::new(start), "mosquitto", "-KILL"))
}

/// A Kafka-protocol broker: Tansu (`scripts/setup.sh` installs it), memory storage, run from
/// an empty directory of its own (it reads `./.env`).
pub fn kafka() -> Option<Server> {
    let program = ["/usr/local/bin/tansu", "/usr/bin/tansu"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    let program = match program {
        Some(p) => p,
        None => found("/usr/local/bin/tansu", "tansu (a Kafka-protocol broker)")?,
    };
    let dir = temp_dir("kafka");
    std::fs::create_dir_all(&dir).expect("kafka dir");
    let start = move |dir: &Path, port: u16| {
        let url = format!("tcp://127.0.0.1:{port}");
        Command::new(&program)
            .current_dir(dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args([
                "--storage-engine",
                "memory://tansu/",
                "--cluster-id",
                "keelmq-test",
            ])
            .env_clear()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts")
    };
    Some(Server::launch(dir, Box::new(start), "tansu", "-KILL"))
}
