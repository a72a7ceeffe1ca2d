//! The web dashboard in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! driven by Python Selenium from `dashboard.py`): log in (a wrong password refused), see a
//! chart with data, find the client this test connected and kick it, test a rule's SQL and
//! create the rule, see every other page. The broker then shows the kick and the rule.
//! Screenshots of every page are kept in `target/tmp/dashboard/` (test artifacts).

use std::process::{Command, Stdio};
use std::time::Duration;

use rumqttc::QoS;

use crate::common;
use crate::interop_rumqttc::v311::{connect, subscribe};

const ADMIN_PASSWORD: &str = "dashboard pw";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_logs_in_shows_data_kicks_and_creates_a_rule() {
    let (Some(python), Some(_driver)) = (common::paho_python(), common::tool("chromedriver"))
    else {
        return;
    };
    let probe = Command::new(&python)
        .args(["-c", "import selenium"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        assert!(
            !common::interop_required(),
            "python selenium is required but missing"
        );
        return;
    }
    let dir = common::temp_dir("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    let admin = dir.join("admin");
    let hash = keelmq_auth::Hash::new_argon2id(ADMIN_PASSWORD.as_bytes()).unwrap();
    std::fs::write(&admin, format!("admin:{}\n", hash.render())).unwrap();
    let mut config = common::test_config();
    config.api.enabled = true;
    config.api.bind = Some("127.0.0.1:0".parse().unwrap());
    config.api.admin_password_file = Some(admin);
    config.api.monitor_interval_secs = 1;
    let server = common::start(config).await;
    let port = server.local_addr().port();

    // Traffic for the charts: a persistent subscriber (its queue is logged: fdatasyncs) and a
    // publisher, in the background while the browser looks.
    let watched = connect(port, "dash-client", false, None).await;
    subscribe(&watched, "plant/#", QoS::AtLeastOnce).await;
    let publisher = connect(port, "dash-publisher", true, None).await;
    publisher
        .client
        .publish("plant/kept", QoS::AtLeastOnce, true, "retained")
        .await
        .unwrap();
    let traffic = tokio::spawn(async move {
        for i in 0..600u32 {
            let _ = publisher
                .client
                .publish("plant/x", QoS::AtLeastOnce, false, i.to_be_bytes().to_vec())
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    let base = format!("http://{}", server.api_addr().unwrap());
    let shots = concat!(env!("CARGO_TARGET_TMPDIR"), "/dashboard");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/suite/dashboard.py");
    let run = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args([script, &base, ADMIN_PASSWORD, "dash-client", shots])
            .stdin(Stdio::null())
            .output()
            .expect("python runs")
    });
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser session ends in time")
        .unwrap();
    traffic.abort();
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "dashboard.py failed (screenshots in {shots}):\n{said}"
    );
    assert!(said.contains("OK"), "{said}");
    assert!(
        server.broker().client("dash-client").is_none(),
        "kicked from the dashboard"
    );
    assert!(
        server.rules().get("dash_rule").is_some(),
        "created from the dashboard"
    );
    for page in ["overview", "client", "rules", "durability"] {
        assert!(
            std::path::Path::new(&format!("{shots}/{page}.png")).is_file(),
            "{page}.png"
        );
    }
    drop(watched);
    server.shutdown(Duration::from_secs(5)).await;
}
