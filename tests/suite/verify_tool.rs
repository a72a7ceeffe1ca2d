//! `keelmq verify` against KeelMQ itself: the broker binary is started by the tool, SIGKILLed
//! and restarted, and the tool must report no violation (QoS 2, MQTT 5 and QoS 1, 3.1.1).

use crate::common;

use std::process::Command;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn verify(qos: &str, mqtt: &str, kills: &str) {
    let dir = common::temp_dir("verify");
    let port = free_port().to_string();
    let start = format!(
        "{} serve --listen 127.0.0.1:{port} --data-dir {}",
        env!("CARGO_BIN_EXE_keelmq"),
        dir.display()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_keelmq"))
        .args([
            "verify",
            "--port",
            &port,
            "--start-cmd",
            &start,
            "--kills",
            kills,
        ])
        .args(["--qos", qos, "--mqtt", mqtt, "--cycle-ms", "400"])
        .output()
        .expect("keelmq verify runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("lost:            0"), "{stdout}");
    assert!(stdout.contains("OK"), "{stdout}");
    let acknowledged: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("acknowledged:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(acknowledged > 100, "the load ran: {stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn verify_qos2_v5_with_kills() {
    verify("2", "5", "5");
}

#[test]
fn verify_qos1_v311_with_kills() {
    verify("1", "3.1.1", "5");
}
