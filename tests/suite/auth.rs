//! Authentication against independent peers: password files written by `keelmq passwd` and by
//! Mosquitto's own `mosquitto_passwd`, logins by `mosquitto_pub` (whose exit status is the
//! CONNACK's return code or reason code, so each refusal is checked exactly), the chain's
//! semantics, failure delays, reload on SIGHUP, and the `keelmq passwd` command itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, BrokerProcess};

const KEELMQ: &str = env!("CARGO_BIN_EXE_keelmq");
const TIMEOUT: Duration = Duration::from_secs(20);

/// CONNACK codes as `mosquitto_pub` exits with them: 3.1.1 return codes and 5.0 reason codes.
const V3_BAD_CREDENTIALS: i32 = 4;
const V3_NOT_AUTHORIZED: i32 = 5;
const V5_BAD_CREDENTIALS: i32 = 0x86;
const V5_NOT_AUTHORIZED: i32 = 0x87;

/// `keelmq passwd ARGS`, with `stdin` as its standard input; (success, stderr).
fn keelmq_passwd(args: &[&str], stdin: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(KEELMQ)
        .arg("passwd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keelmq passwd starts");
    let mut input = child.stdin.take().expect("piped");
    input.write_all(stdin.as_bytes()).expect("writes stdin");
    drop(input);
    let out = child.wait_with_output().expect("keelmq passwd ends");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Logs in with `mosquitto_pub` (MQTT `version` "mqttv311" or "mqttv5") and publishes one
/// message; its exit status: 0, or the CONNACK's code.
fn login(mosquitto_pub: &Path, port: u16, version: &str, creds: &[&str]) -> i32 {
    let mut args = vec!["-V", version, "-t", "auth/test", "-m", "x", "-q", "1"];
    args.extend_from_slice(creds);
    let run = common::mosquitto(mosquitto_pub, port, &args);
    run.code.expect("mosquitto_pub exits with a code")
}

/// Both versions' codes for one login: (3.1.1, 5.0).
fn login_both(tool: &Path, port: u16, creds: &[&str]) -> (i32, i32) {
    (
        login(tool, port, "mqttv311", creds),
        login(tool, port, "mqttv5", creds),
    )
}

/// A broker whose `[auth]` section is `auth` (written to a config file in `dir`).
fn broker_with(dir: &Path, auth: &str) -> BrokerProcess {
    let config = dir.join("keelmq.toml");
    std::fs::write(&config, auth).expect("writes the config");
    BrokerProcess::start(&["--config", path_str(&config)])
}

fn chain_entry(path: &Path) -> String {
    format!(
        "[[auth.chain]]\nkind = \"password_file\"\npath = {:?}\n",
        path_str(path)
    )
}

/// `mosquitto_pub` and the password files, or `None` when the tools are missing (a failure
/// when interop is required).
fn publisher_and_files() -> Option<(PathBuf, Files)> {
    let publ = common::tool("mosquitto_pub")?;
    let passwd = common::tool("mosquitto_passwd")?;
    Some((publ, password_files(&passwd)))
}

struct Files {
    dir: PathBuf,
    ours: PathBuf,
    mosquittos: PathBuf,
}

/// Two password files: `ours` by `keelmq passwd` (alice, dave), `mosquittos` by
/// `mosquitto_passwd` (bob with its default `$7$`, carol with `$6$`, dave with another
/// password).
fn password_files(mosquitto_passwd: &Path) -> Files {
    let dir = common::temp_dir("auth");
    std::fs::create_dir_all(&dir).unwrap();
    let ours = dir.join("keelmq.passwd");
    let mosquittos = dir.join("mosquitto.passwd");
    common::keelmq_passwd_set(&ours, "alice", "alice-pw", true);
    common::keelmq_passwd_set(&ours, "dave", "dave-ours", false);
    let m = path_str(&mosquittos);
    for args in [
        vec!["-c", "-b", m, "bob", "bob-pw"],
        vec!["-H", "sha512", "-b", m, "carol", "carol-pw"],
        vec!["-b", m, "dave", "dave-theirs"],
    ] {
        let status = Command::new(mosquitto_passwd).args(&args).status().unwrap();
        assert!(status.success(), "mosquitto_passwd {args:?}");
    }
    Files {
        dir,
        ours,
        mosquittos,
    }
}

#[test]
fn password_files_of_keelmq_and_mosquitto_refuse_with_exact_codes() {
    let Some((publ, f)) = publisher_and_files() else {
        return;
    };
    let auth = format!(
        "{}{}[auth]\nallow_anonymous = false\nfailures_before_delay = 1000\n",
        chain_entry(&f.ours),
        chain_entry(&f.mosquittos)
    );
    let broker = broker_with(&f.dir, &auth);
    let port = broker.port();
    let ok = (0, 0);
    let bad = (V3_BAD_CREDENTIALS, V5_BAD_CREDENTIALS);
    let huge = "p".repeat(60_000);
    let cases: Vec<(&str, Vec<&str>, (i32, i32))> = vec![
        (
            "argon2id of keelmq passwd",
            vec!["-u", "alice", "-P", "alice-pw"],
            ok,
        ),
        ("mosquitto $7$", vec!["-u", "bob", "-P", "bob-pw"], ok),
        ("mosquitto $6$", vec!["-u", "carol", "-P", "carol-pw"], ok),
        ("wrong password", vec!["-u", "alice", "-P", "bob-pw"], bad),
        (
            "wrong password, $7$",
            vec!["-u", "bob", "-P", "alice-pw"],
            bad,
        ),
        // The first file knows dave: its refusal is final, the second file is not asked.
        (
            "refused by the first that knows",
            vec!["-u", "dave", "-P", "dave-theirs"],
            bad,
        ),
        (
            "accepted by the first that knows",
            vec!["-u", "dave", "-P", "dave-ours"],
            ok,
        ),
        ("unknown user", vec!["-u", "mallory", "-P", "x"], bad),
        ("username without password", vec!["-u", "alice"], bad),
        ("empty password", vec!["-u", "alice", "-P", ""], bad),
        ("huge password", vec!["-u", "alice", "-P", &huge], bad),
        (
            "no username",
            vec![],
            (V3_NOT_AUTHORIZED, V5_NOT_AUTHORIZED),
        ),
    ];
    for (what, creds, expected) in cases {
        assert_eq!(login_both(&publ, port, &creds), expected, "{what}");
    }
    let _ = std::fs::remove_dir_all(&f.dir);
}

#[test]
fn anonymous_clients_pass_when_allowed_but_a_known_user_s_wrong_password_does_not() {
    let Some((publ, f)) = publisher_and_files() else {
        return;
    };
    let auth = format!("{}[auth]\nallow_anonymous = true\n", chain_entry(&f.ours));
    let broker = broker_with(&f.dir, &auth);
    let port = broker.port();
    assert_eq!(login_both(&publ, port, &[]), (0, 0), "no username");
    let unknown = ["-u", "mallory", "-P", "x"];
    assert_eq!(login_both(&publ, port, &unknown), (0, 0), "unknown user");
    let wrong = ["-u", "alice", "-P", "nope"];
    assert_eq!(
        login_both(&publ, port, &wrong),
        (V3_BAD_CREDENTIALS, V5_BAD_CREDENTIALS)
    );
    let _ = std::fs::remove_dir_all(&f.dir);
}

#[test]
fn an_address_that_keeps_failing_waits_and_a_success_resets_it() {
    let Some((publ, f)) = publisher_and_files() else {
        return;
    };
    let auth = format!(
        "{}[auth]\nallow_anonymous = false\nfailures_before_delay = 2\nmax_failure_delay_ms = 800\n",
        chain_entry(&f.ours)
    );
    let broker = broker_with(&f.dir, &auth);
    let port = broker.port();
    let wrong = ["-u", "alice", "-P", "nope"];
    let timed = |creds: &[&str]| {
        let started = Instant::now();
        let code = login(&publ, port, "mqttv5", creds);
        (code, started.elapsed())
    };
    for _ in 0..2 {
        assert_eq!(timed(&wrong).0, V5_BAD_CREDENTIALS);
    }
    // From now on each answer waits: 100 ms, 200 ms, 400 ms, then the 800 ms cap.
    for floor_ms in [100, 200, 400, 800, 800] {
        let (code, took) = timed(&wrong);
        assert_eq!(code, V5_BAD_CREDENTIALS);
        assert!(
            took >= Duration::from_millis(floor_ms),
            "{took:?} < {floor_ms} ms"
        );
    }
    let (code, took) = timed(&["-u", "alice", "-P", "alice-pw"]);
    assert_eq!(code, 0, "the right password still gets in, after the wait");
    assert!(took >= Duration::from_millis(800));
    let (code, took) = timed(&wrong);
    assert_eq!(code, V5_BAD_CREDENTIALS);
    assert!(
        took < Duration::from_millis(800),
        "a success reset the count: {took:?}"
    );
    let _ = std::fs::remove_dir_all(&f.dir);
}

#[test]
fn sighup_rereads_the_password_file_and_a_broken_one_keeps_the_old() {
    let Some((publ, f)) = publisher_and_files() else {
        return;
    };
    let auth = format!("{}[auth]\nallow_anonymous = false\n", chain_entry(&f.ours));
    let broker = broker_with(&f.dir, &auth);
    let port = broker.port();
    let erin = ["-u", "erin", "-P", "erin-pw"];
    let alice = ["-u", "alice", "-P", "alice-pw"];
    assert_eq!(login(&publ, port, "mqttv5", &erin), V5_BAD_CREDENTIALS);
    common::keelmq_passwd_set(&f.ours, "erin", "erin-pw", false);
    let hup = || {
        let pid = broker.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    };
    hup();
    let reloaded = common::wait_until(TIMEOUT, || login(&publ, port, "mqttv5", &erin) == 0);
    assert!(reloaded, "erin gets in after SIGHUP");
    std::fs::write(&f.ours, "alice:not-a-hash\n").unwrap();
    hup();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        login(&publ, port, "mqttv5", &alice),
        0,
        "the old file stays"
    );
    assert_eq!(login(&publ, port, "mqttv5", &erin), 0);
    let _ = std::fs::remove_dir_all(&f.dir);
}

#[test]
fn keelmq_passwd_follows_mosquitto_passwd_s_conventions() {
    let dir = common::temp_dir("passwd");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("passwd");
    let p = path_str(&file);
    let (ok, err) = keelmq_passwd(&["-b", p, "a", "x"], "");
    assert!(
        !ok && err.contains("-c creates it"),
        "no file without -c: {err}"
    );
    // Prompted twice (standard input when it is not a terminal).
    assert!(keelmq_passwd(&["-c", p, "alice"], "pw1\npw1\n").0);
    let (ok, err) = keelmq_passwd(&[p, "bob"], "pw2\nother\n");
    assert!(!ok && err.contains("do not match"), "{err}");
    assert!(keelmq_passwd(&["-b", p, "bob", "pw2"], "").0);
    let text = std::fs::read_to_string(&file).unwrap();
    let users: Vec<&str> = text.lines().filter_map(|l| l.split(':').next()).collect();
    assert_eq!(users, ["alice", "bob"]);
    assert!(text.lines().all(|l| l.contains(":$argon2id$")), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "readable by its owner only");
    assert!(keelmq_passwd(&["-D", p, "alice"], "").0);
    let (ok, err) = keelmq_passwd(&["-D", p, "alice"], "");
    assert!(!ok && err.contains("not in"), "{err}");
    // -U hashes a plain-text file in place; the hashes verify.
    std::fs::write(&file, "carol:plain-pw\nbob:$6$AAAA$AAAA\n").unwrap();
    assert!(keelmq_passwd(&["-U", p], "").0);
    let hashed = keelmq_auth::PasswordFile::parse(&std::fs::read_to_string(&file).unwrap())
        .expect("every entry is hashed now");
    assert!(hashed.hash_of("carol").unwrap().verify(b"plain-pw"));
    let (ok, err) = keelmq_passwd(&["-b", p, "bad:name", "x"], "");
    assert!(!ok && err.contains("username"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_refuses_an_open_listener_without_authentication_and_bad_files() {
    let dir = common::temp_dir("auth-config");
    std::fs::create_dir_all(&dir).unwrap();
    let check = |name: &str, text: &str| common::check_config(&dir, name, text);
    let (ok, err) = check("open.toml", "[listener]\nbind = \"0.0.0.0:1883\"\n");
    assert!(!ok && err.contains("auth.allow_anonymous"), "{err}");
    let explicit = "[listener]\nbind = \"0.0.0.0:1883\"\n[auth]\nallow_anonymous = true\n";
    assert!(check("explicit.toml", explicit).0);
    let plain = dir.join("plain.passwd");
    std::fs::write(&plain, "# users\nalice:secret\n").unwrap();
    let (ok, err) = check("plain.toml", &chain_entry(&plain));
    assert!(!ok, "a plain-text password file is refused");
    assert!(
        err.contains("auth.chain[0].path") && err.contains("line 2") && err.contains("-U"),
        "{err}"
    );
    let missing = dir.join("missing.passwd");
    let (ok, err) = check("missing.toml", &chain_entry(&missing));
    assert!(!ok && err.contains("missing.passwd"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `mosquitto_sub -E` with a persistent session (`-c`) under client id `id`: its exit status
/// (0, or the CONNACK's code).
fn persistent_login(tool: &Path, port: u16, version: &str, id: &str, user: &str) -> i32 {
    let password = format!("{user}-pw");
    let mut args = vec![
        "-V", version, "-E", "-c", "-i", id, "-q", "1", "-t", "owned/#",
    ];
    args.extend(["-u", user, "-P", &password]);
    if version == "mqttv5" {
        args.extend(["-x", "600"]);
    }
    let run = common::mosquitto(tool, port, &args);
    run.code.expect("mosquitto_sub exits with a code")
}

/// A session belongs to the user that made it: another user cannot resume, replace or take it
/// over by its client id — not even after a restart (the owner is durable with the session).
#[test]
fn a_session_belongs_to_its_user_across_a_restart() {
    let (Some(sub), Some(passwd)) = (
        common::tool("mosquitto_sub"),
        common::tool("mosquitto_passwd"),
    ) else {
        return;
    };
    let f = password_files(&passwd);
    common::keelmq_passwd_set(&f.ours, "bob", "bob-pw", false);
    let config = f.dir.join("keelmq.toml");
    let auth = format!("{}[auth]\nallow_anonymous = false\n", chain_entry(&f.ours));
    std::fs::write(&config, auth).unwrap();
    let data = f.dir.join("data");
    let args = ["--data-dir", path_str(&data), "--config", path_str(&config)];
    let binary = Path::new(KEELMQ);
    let broker = BrokerProcess::start_with(binary, &args);
    let port = broker.port();
    assert_eq!(
        persistent_login(&sub, port, "mqttv311", "car-1", "alice"),
        0
    );
    assert_eq!(
        persistent_login(&sub, port, "mqttv311", "car-1", "bob"),
        V3_NOT_AUTHORIZED
    );
    assert_eq!(
        persistent_login(&sub, port, "mqttv5", "car-1", "bob"),
        V5_NOT_AUTHORIZED
    );
    assert_eq!(
        persistent_login(&sub, port, "mqttv311", "car-1", "alice"),
        0
    );
    drop(broker); // SIGKILL
    let broker = BrokerProcess::start_with(binary, &args);
    let port = broker.port();
    assert_eq!(
        persistent_login(&sub, port, "mqttv5", "car-1", "bob"),
        V5_NOT_AUTHORIZED
    );
    assert_eq!(
        persistent_login(&sub, port, "mqttv311", "car-1", "alice"),
        0
    );
    // A client id nobody holds is free.
    assert_eq!(persistent_login(&sub, port, "mqttv311", "car-2", "bob"), 0);
    drop(broker);
    let _ = std::fs::remove_dir_all(&f.dir);
}

/// A listener with its own `auth` asks its chain instead of the broker's.
#[test]
fn a_listener_s_own_chain_decides_for_its_clients() {
    let Some((publ, f)) = publisher_and_files() else {
        return;
    };
    let config = format!(
        "[[listeners]]\nname = \"open\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"secure\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\
         [listeners.auth]\nallow_anonymous = false\n\
         [[listeners.auth.chain]]\nkind = \"password_file\"\npath = {:?}\n",
        path_str(&f.ours)
    );
    let broker = broker_with(&f.dir, &config);
    let (open, secure) = (broker.port(), broker.listener_addr("secure").port());
    assert_ne!(open, secure);
    assert_eq!(
        login_both(&publ, open, &[]),
        (0, 0),
        "the broker lets anyone in"
    );
    let refused = (V3_NOT_AUTHORIZED, V5_NOT_AUTHORIZED);
    assert_eq!(
        login_both(&publ, secure, &[]),
        refused,
        "the listener does not"
    );
    let alice = ["-u", "alice", "-P", "alice-pw"];
    assert_eq!(login_both(&publ, secure, &alice), (0, 0));
    let wrong = ["-u", "alice", "-P", "x"];
    assert_eq!(
        login_both(&publ, secure, &wrong),
        (V3_BAD_CREDENTIALS, V5_BAD_CREDENTIALS)
    );
    // On the open listener a username is only claimed: alice's session is not the claimer's.
    if let Some(sub) = common::tool("mosquitto_sub") {
        assert_eq!(
            persistent_login(&sub, secure, "mqttv311", "car-9", "alice"),
            0
        );
        let claimed = persistent_login(&sub, open, "mqttv311", "car-9", "alice");
        assert_eq!(claimed, V3_NOT_AUTHORIZED);
    }
    drop(broker);
    let _ = std::fs::remove_dir_all(&f.dir);
}
