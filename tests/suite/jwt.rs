//! JWT authentication against tokens minted by PyJWT (HMAC, RSA, RSA-PSS, EC by `kid` from a
//! JWK set), checked by Eclipse Paho: exact CONNACK codes for valid, expired, not-yet-valid,
//! wrongly signed and mismatching tokens, chain order (a token for other keys, or a plain
//! password, is passed on), the ACL claim, and the disconnect when the token expires. See
//! `tests/paho/tokens.py`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{self, BrokerProcess};

fn python_with_pyjwt() -> Option<String> {
    let python = common::paho_python()?;
    let ok = Command::new(&python)
        .args(["-c", "import jwt, cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok || !common::interop_required(),
        "PyJWT with cryptography is required (KEELMQ_REQUIRE_INTEROP); scripts/setup.sh installs it"
    );
    ok.then_some(python)
}

fn script(python: &str, args: &[&str]) -> common::ScriptRun {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/paho/tokens.py");
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    common::run_python(python, &script, &args, Duration::from_secs(60))
}

#[test]
fn pyjwt_tokens_get_exact_connack_codes_and_expire() {
    let Some(python) = python_with_pyjwt() else {
        return;
    };
    let dir = common::temp_dir("jwt");
    let d = dir.to_str().unwrap().to_string();
    let keys = script(&python, &["keys", &d]);
    assert!(keys.status.is_some_and(|s| s.success()), "{}", keys.stderr);
    let passwd = dir.join("passwd");
    common::keelmq_passwd_set(&passwd, "alice", "alice-pw", true);
    let config = dir.join("keelmq.toml");
    let k = "k".repeat(60);
    let text = format!(
        "[auth]\nallow_anonymous = false\n\
         [[auth.chain]]\nkind = \"jwt\"\nsecret = \"s3cret-{k}\"\nacl_claim = \"acl\"\n\
         verify_claims = {{ sub = \"${{clientid}}\" }}\n\
         [[auth.chain]]\nkind = \"jwt\"\npublic_key_file = \"{d}/rsa_public.pem\"\n\
         [[auth.chain]]\nkind = \"jwt\"\njwks_file = \"{d}/jwks.json\"\n\
         [[auth.chain]]\nkind = \"password_file\"\npath = \"{d}/passwd\"\n"
    );
    std::fs::write(&config, text).unwrap();
    let broker = BrokerProcess::start(&["--config", config.to_str().unwrap()]);
    let port = broker.port().to_string();
    let run = script(&python, &["check", "127.0.0.1", &port, &d]);
    assert!(
        run.status.is_some_and(|s| s.success()),
        "tokens.py: {:?}\n--- stdout\n{}--- stderr\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_names_a_bad_key_file() {
    let dir = common::temp_dir("jwt-config");
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.pem");
    std::fs::write(&key, "not a key").unwrap();
    let text = format!(
        "[[auth.chain]]\nkind = \"jwt\"\npublic_key_file = {:?}\n",
        key.to_str().unwrap()
    );
    let (ok, err) = common::check_config(&dir, "c.toml", &text);
    assert!(!ok);
    assert!(
        err.contains("auth.chain[0]") && err.contains("key.pem"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
