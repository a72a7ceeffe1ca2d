//! The `keelmq` binary starts on its defaults, serves a client, and `check-config` names bad
//! fields.

use crate::common;

use std::process::Command;

#[test]
fn binary_serves_and_check_config_reports_fields() {
    let broker = common::BrokerProcess::start(&[]);
    let stream = std::net::TcpStream::connect(broker.addr).expect("accepts connections");
    drop(stream);

    let dir = std::env::temp_dir().join(format!("keelmq-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/keelmq.example.toml"),
        &good,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keelmq"))
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[limits]\nmax_queued_messages = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keelmq"))
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.max_queued_messages"), "{err}");

    std::fs::write(&bad, "[mqtt]\nmax_qos = \"high\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keelmq"))
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("max_qos"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigterm_shuts_down_gracefully() {
    let mut broker = common::BrokerProcess::start(&[]);
    let status = Command::new("kill")
        .args(["-TERM", &broker.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = common::wait_until(std::time::Duration::from_secs(10), || {
        matches!(broker.child.try_wait(), Ok(Some(_)))
    });
    assert!(exited, "keelmq exits after SIGTERM");
    let status = broker.child.wait().unwrap();
    assert!(status.success(), "clean exit: {status:?}");
}
