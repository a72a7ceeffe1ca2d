//! LDAP authentication against a real OpenLDAP `slapd` (Debian's), started on a loopback port
//! with a generated configuration and directory, and `mosquitto_pub` as the client: bind
//! success, wrong password, empty password (never an anonymous bind), unknown user (passed on
//! to the password file), a username that tries to name another entry, and the server down.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{self, BrokerProcess};

const SUFFIX: &str = "dc=example,dc=org";

/// `slapd` in the foreground, killed when dropped.
struct Slapd {
    child: Child,
    port: u16,
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Tools from the `slapd` package, or `None` (a failure when interop is required).
fn slapd_tools() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let find = |name: &str| {
        let path = Path::new("/usr/sbin").join(name);
        path.is_file().then_some(path)
    };
    let tools = (find("slapd")?, find("slapadd")?, find("slappasswd")?);
    Some(tools)
}

/// A directory with bob (password "bob-pw", SSHA-hashed by slappasswd) under ou=people.
fn start_slapd(dir: &Path) -> Option<Slapd> {
    let Some((slapd, slapadd, slappasswd)) = slapd_tools() else {
        assert!(
            !common::interop_required(),
            "slapd is required (KEELMQ_REQUIRE_INTEROP)"
        );
        eprintln!("skipping: slapd not installed");
        return None;
    };
    let db = dir.join("db");
    std::fs::create_dir_all(&db).unwrap();
    let out = Command::new(slappasswd)
        .args(["-s", "bob-pw"])
        .output()
        .unwrap();
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let conf = dir.join("slapd.conf");
    std::fs::write(
        &conf,
        format!(
            "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\nmodulepath /usr/lib/ldap\n\
             moduleload back_mdb\npidfile {d}/slapd.pid\ndatabase mdb\nmaxsize 10485760\n\
             suffix \"{SUFFIX}\"\nrootdn \"cn=admin,{SUFFIX}\"\nrootpw admin-pw\ndirectory {d}/db\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let ldif = dir.join("data.ldif");
    std::fs::write(
        &ldif,
        format!(
            "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
             dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: uid=bob,ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: bob\ncn: Bob\n\
             sn: Builder\nuserPassword: {hash}\n"
        ),
    )
    .unwrap();
    let added = Command::new(slapadd)
        .arg("-f")
        .arg(&conf)
        .arg("-l")
        .arg(&ldif)
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "slapadd: {}",
        String::from_utf8_lossy(&added.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(slapd)
        .arg("-f")
        .arg(&conf)
        .args(["-h", &format!("ldap://127.0.0.1:{port}/"), "-d", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("slapd starts");
    let up = common::wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "slapd listens");
    Some(Slapd { child, port })
}

/// A broker whose chain is ldap, then a password file with carol.
fn broker(dir: &Path, ldap_port: u16) -> BrokerProcess {
    let passwd = dir.join("passwd");
    common::keelmq_passwd_set(&passwd, "carol", "carol-pw", true);
    let config = dir.join("keelmq.toml");
    let text = format!(
        "[auth]\nallow_anonymous = false\nfailures_before_delay = 1000\n\
         [[auth.chain]]\nkind = \"ldap\"\nserver = \"ldap://127.0.0.1:{ldap_port}\"\n\
         base_dn = \"uid=${{username}},ou=people,{SUFFIX}\"\ntimeout_ms = 2000\n\
         [[auth.chain]]\nkind = \"password_file\"\npath = {:?}\n",
        passwd.to_str().unwrap()
    );
    std::fs::write(&config, text).unwrap();
    BrokerProcess::start(&["--config", config.to_str().unwrap()])
}

fn login(tool: &Path, port: u16, creds: &[&str]) -> i32 {
    let mut args = vec!["-V", "mqttv5", "-t", "t", "-m", "x"];
    args.extend_from_slice(creds);
    common::mosquitto(tool, port, &args).code.unwrap_or(-1)
}

const BAD_CREDENTIALS: i32 = 0x86;

#[test]
fn slapd_binds_decide_and_unknown_users_pass_on() {
    let Some(publ) = common::tool("mosquitto_pub") else {
        return;
    };
    let dir = common::temp_dir("ldap");
    std::fs::create_dir_all(&dir).unwrap();
    let Some(slapd) = start_slapd(&dir) else {
        return;
    };
    let broker = broker(&dir, slapd.port);
    let code = |creds: &[&str]| login(&publ, broker.port(), creds);
    assert_eq!(code(&["-u", "bob", "-P", "bob-pw"]), 0, "bind succeeds");
    assert_eq!(
        code(&["-u", "bob", "-P", "wrong"]),
        BAD_CREDENTIALS,
        "wrong password"
    );
    assert_eq!(
        code(&["-u", "bob", "-P", ""]),
        BAD_CREDENTIALS,
        "empty: no anonymous bind"
    );
    assert_eq!(code(&["-u", "bob"]), BAD_CREDENTIALS, "no password");
    assert_eq!(
        code(&["-u", "carol", "-P", "carol-pw"]),
        0,
        "not in LDAP: the file decides"
    );
    assert_eq!(
        code(&["-u", "mallory", "-P", "x"]),
        BAD_CREDENTIALS,
        "nobody knows mallory"
    );
    // A username that tries to name bob's entry (or another) through the DN is escaped.
    let injected = "bob,ou=people,dc=example,dc=org";
    assert_eq!(code(&["-u", injected, "-P", "bob-pw"]), BAD_CREDENTIALS);
    // The server goes away: every client is passed on.
    drop(slapd);
    assert_eq!(code(&["-u", "carol", "-P", "carol-pw"]), 0);
    assert_eq!(code(&["-u", "bob", "-P", "bob-pw"]), BAD_CREDENTIALS);
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
