//! HTTP authentication against a real HTTP service (Python's http.server,
//! `tests/http/auth_server.py`), with `mosquitto_pub`/`mosquitto_sub` as the clients: allow,
//! deny, ignore (passed on to the password file), superuser, rules in the answer, and a service
//! that is slow, broken or down (each passes the client on).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, BrokerProcess};

/// The HTTP service, killed when dropped.
struct Service {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn service(python: &str, dir: &Path) -> Service {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/http/auth_server.py");
    let (port_file, log) = (dir.join("http.port"), dir.join("http.log"));
    let child = Command::new(python)
        .arg(&script)
        .arg(&port_file)
        .arg(&log)
        .stdout(Stdio::null())
        .spawn()
        .expect("the HTTP service starts");
    assert!(
        common::wait_until(Duration::from_secs(10), || port_file.exists()),
        "the HTTP service reports its port"
    );
    let port = std::fs::read_to_string(&port_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    Service { child, port, log }
}

/// `mosquitto_pub` (5.0, QoS 1) as `user` with `password`; (exit code, stderr).
fn login(tool: &Path, port: u16, user: &str, password: &str, topic: &str) -> (i32, String) {
    let args = [
        "-V", "mqttv5", "-q", "1", "-i", "car-9", "-u", user, "-P", password,
    ];
    let mut all = args.to_vec();
    all.extend(["-t", topic, "-m", "x"]);
    let run = common::mosquitto(tool, port, &all);
    (run.code.unwrap_or(-1), run.stderr)
}

fn broker(dir: &Path, url: &str) -> BrokerProcess {
    let passwd = dir.join("passwd");
    common::keelmq_passwd_set(&passwd, "alice", "alice-pw", true);
    let acl = dir.join("acl");
    std::fs::write(&acl, "topic readwrite t/#\n").unwrap();
    let config = dir.join("keelmq.toml");
    let text = format!(
        "[auth]\nallow_anonymous = false\nfailures_before_delay = 1000\n\
         [[auth.chain]]\nkind = \"http\"\nurl = \"{url}\"\ntimeout_ms = 500\n\
         [[auth.chain]]\nkind = \"password_file\"\npath = {:?}\n\
         [authz]\nacl_file = {:?}\nno_match = \"deny\"\n",
        passwd.to_str().unwrap(),
        acl.to_str().unwrap()
    );
    std::fs::write(&config, text).unwrap();
    BrokerProcess::start(&["--config", config.to_str().unwrap()])
}

const BAD_CREDENTIALS: i32 = 0x86;

#[test]
fn an_http_service_allows_denies_or_passes_clients_on() {
    let (Some(python), Some(publ), Some(sub)) = (
        common::paho_python(),
        common::tool("mosquitto_pub"),
        common::tool("mosquitto_sub"),
    ) else {
        return;
    };
    let dir = common::temp_dir("auth-http");
    std::fs::create_dir_all(&dir).unwrap();
    let http = service(&python, &dir);
    let broker = broker(&dir, &format!("http://127.0.0.1:{}/auth", http.port));
    let port = broker.port();
    let code = |user: &str, password: &str| login(&publ, port, user, password, "t/x").0;
    assert_eq!(code("allow-1", "pw-1"), 0, "allow");
    assert_eq!(code("deny", "x"), BAD_CREDENTIALS, "deny is final");
    assert_eq!(
        code("alice", "alice-pw"),
        0,
        "ignore: the password file decides"
    );
    assert_eq!(code("alice", "wrong"), BAD_CREDENTIALS);
    assert_eq!(code("nobody", "x"), BAD_CREDENTIALS, "nobody knows it");
    for user in ["broken", "garbage"] {
        assert_eq!(
            code(user, "x"),
            BAD_CREDENTIALS,
            "{user}: passed on, then refused"
        );
    }
    let started = Instant::now();
    assert_eq!(
        code("slow", "x"),
        BAD_CREDENTIALS,
        "a timeout passes the client on"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "{:?}",
        started.elapsed()
    );
    // The answer's rules, with ${clientid} substituted.
    let (c, err) = login(&publ, port, "ruled", "x", "t/car-9");
    assert_eq!((c, err.contains("failed")), (0, false), "{err}");
    let (_, err) = login(&publ, port, "ruled", "x", "t/no");
    assert!(err.contains("Not authorized"), "{err}");
    // A superuser skips the ACL ($SYS needs a rule otherwise).
    let may_subscribe = |user: &str| {
        let out = Command::new(&sub)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-V",
                "mqttv5",
                "-E",
            ])
            .args(["-u", user, "-P", "x", "-t", "$SYS/#"])
            .output()
            .unwrap();
        out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("denied")
    };
    assert!(may_subscribe("super"));
    assert!(!may_subscribe("allow-2"));
    // What the service was sent.
    let log = std::fs::read_to_string(&http.log).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["clientid"], "car-9");
    assert_eq!(first["username"], "allow-1");
    assert_eq!(first["password"], "pw-1");
    assert_eq!(first["peerhost"], "127.0.0.1");
    assert_eq!(first["listener"], "tcp");
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_service_that_is_down_passes_every_client_on() {
    let Some(publ) = common::tool("mosquitto_pub") else {
        return;
    };
    let dir = common::temp_dir("auth-http-down");
    std::fs::create_dir_all(&dir).unwrap();
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let broker = broker(&dir, &format!("http://127.0.0.1:{port}/auth"));
    let code = |user: &str, password: &str| login(&publ, broker.port(), user, password, "t/x").0;
    assert_eq!(code("alice", "alice-pw"), 0);
    assert_eq!(code("allow-1", "x"), BAD_CREDENTIALS);
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
