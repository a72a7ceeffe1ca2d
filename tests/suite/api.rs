//! The HTTP management API and Prometheus metrics against a real broker, with a real HTTP
//! client (`reqwest`), MQTT clients (`rumqttc`) and `promtool`: credentials (none, wrong,
//! right; API keys and the admin login; throttling), every endpoint with good and bad input,
//! paging, kicking, publishing (answered once durable, and surviving a SIGKILL right after),
//! retained messages, rules, and a Prometheus scrape `promtool check metrics` accepts whose
//! values move with the traffic.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use rumqttc::QoS;
use serde_json::{json, Value};

use crate::common;
use crate::interop_rumqttc::v311::{connect, next, subscribe};
use keelmq::config::Config;

const KEY: &str = "ops";
const SECRET: &str = "s3cret:with-colon";
const ADMIN_PASSWORD: &str = "correct horse";

/// A broker config with the API on an ephemeral port, an API key file and an admin password.
fn api_config(dir: &Path) -> Config {
    std::fs::create_dir_all(dir).unwrap();
    let keys = dir.join("api_keys");
    std::fs::write(&keys, format!("# scripts\n{KEY}:{SECRET}\n")).unwrap();
    let admin = dir.join("admin");
    let hash = keelmq_auth::Hash::new_argon2id(ADMIN_PASSWORD.as_bytes()).unwrap();
    std::fs::write(&admin, format!("admin:{}\n", hash.render())).unwrap();
    let mut c = common::test_config();
    c.api.enabled = true;
    c.api.bind = Some("127.0.0.1:0".parse().unwrap());
    c.api.api_key_file = Some(keys);
    c.api.admin_password_file = Some(admin);
    c.api.max_auth_failures_per_minute = 5;
    c
}

/// The API's base URL and a client that sends the API key.
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(addr: std::net::SocketAddr) -> Api {
        // reqwest is built without a default TLS provider (the broker installs ring).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Api {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = req
            .basic_auth(KEY, Some(SECRET))
            .send()
            .await
            .expect("answer");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(self.url(path))).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.http.post(self.url(path)).json(&body)).await
    }

    async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.http.put(self.url(path)).json(&body)).await
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.delete(self.url(path))).await
    }
}

fn dir(name: &str) -> PathBuf {
    common::temp_dir(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_required_and_checked() {
    let d = dir("api-auth");
    let server = common::start(api_config(&d)).await;
    let api = Api::new(server.api_addr().expect("the API is served"));
    let http = &api.http;
    let clients = api.url("/api/v5/clients");

    // No credentials, a wrong secret, a malformed header: 401 with EMQX's code.
    let none = http.get(&clients).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert!(none.headers().contains_key("www-authenticate"));
    let body: Value = none.json().await.unwrap();
    assert_eq!(body["code"], "BAD_API_KEY_OR_SECRET");
    let wrong = http
        .get(&clients)
        .basic_auth(KEY, Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = http
        .get(&clients)
        .basic_auth(KEY, Some(SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::OK);

    // The admin login gives a Bearer token; a wrong password does not.
    let login = api.url("/api/v5/login");
    let bad = json!({"username": "admin", "password": "guess"});
    let r = http.post(&login).json(&bad).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "BAD_USERNAME_OR_PWD"
    );
    let good = json!({"username": "admin", "password": ADMIN_PASSWORD});
    let r = http.post(&login).json(&good).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = http.get(&clients).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .post(api.url("/api/v5/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = http.get(&clients).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "logged out");

    // Failures from one address are throttled (5 a minute here): even right credentials
    // get 429 until the minute ends.
    for _ in 0..5 {
        let _ = http
            .get(&clients)
            .basic_auth(KEY, Some("x"))
            .send()
            .await
            .unwrap();
    }
    let r = http
        .get(&clients)
        .basic_auth(KEY, Some(SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "TOO_MANY_REQUESTS"
    );

    // Open without credentials: the status and the Prometheus scrape.
    let r = http.get(api.url("/api/v5/status")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("is running"));
    let r = http.get(api.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Unknown paths: 404 in EMQX's form.
    let r = http.get(api.url("/api/v5/nope")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_creates_an_admin_password() {
    let d = dir("api-admin");
    let mut config = api_config(&d);
    config.api.admin_password_file = None;
    let data = config.data_dir.clone();
    let server = common::start(config).await;
    let file = data.join("dashboard_admin");
    let text = std::fs::read_to_string(&file).expect("created in the data directory");
    assert!(text.starts_with("admin:$argon2id$"), "{text}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "readable by its owner only");
    server.shutdown(Duration::from_secs(5)).await;
}

/// Clients: listed with filters and paging, read, subscribed and unsubscribed through the API,
/// sent a message published through the API, kicked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_listed_subscribed_and_kicked() {
    let d = dir("api-clients");
    let server = common::start(api_config(&d)).await;
    let api = Api::new(server.api_addr().unwrap());
    let port = server.local_addr().port();
    let mut alpha = connect(port, "alpha", true, None).await;
    subscribe(&alpha, "cmd/alpha/#", QoS::AtLeastOnce).await;
    let _beta = connect(port, "beta", false, None).await;

    let (s, v) = api.get("/api/v5/clients").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["meta"]["count"], 2, "{v}");
    let first = &v["data"][0];
    assert_eq!(first["clientid"], "alpha");
    assert_eq!(first["connected"], true);
    assert_eq!(first["ip_address"], "127.0.0.1");
    assert_eq!(first["proto_ver"], 4);
    assert_eq!(first["subscriptions_cnt"], 1);
    assert!(
        first["connected_at"].as_str().unwrap().ends_with('Z'),
        "{first}"
    );
    let (_, v) = api.get("/api/v5/clients?like_clientid=bet").await;
    assert_eq!(v["meta"]["count"], 1);
    assert_eq!(v["data"][0]["clientid"], "beta");
    let (_, v) = api.get("/api/v5/clients?clean_start=false").await;
    assert_eq!(v["data"][0]["clientid"], "beta");
    let (_, v) = api.get("/api/v5/clients?limit=1&page=2").await;
    assert_eq!(v["data"][0]["clientid"], "beta");
    assert_eq!(v["meta"]["hasnext"], false);
    for bad in [
        "limit=100000",
        "limit=0",
        "page=0",
        "page=x",
        "conn_state=maybe",
        "proto_ver=9",
    ] {
        let (s, v) = api.get(&format!("/api/v5/clients?{bad}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["code"], "BAD_REQUEST");
    }
    let (s, v) = api.get("/api/v5/clients/nobody").await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("CLIENTID_NOT_FOUND"))
    );
    let (s, v) = api.get("/api/v5/clients/alpha/subscriptions").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v[0]["topic"], "cmd/alpha/#");
    assert_eq!(v[0]["qos"], 1);

    // Subscribed through the API, then sent a message published through the API.
    let (s, v) = api
        .post(
            "/api/v5/clients/alpha/subscribe",
            json!({"topic": "extra/+", "qos": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = api
        .post(
            "/api/v5/clients/alpha/subscribe",
            json!({"topic": "bad/#/x", "qos": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = api
        .post(
            "/api/v5/publish",
            json!({"topic": "extra/one", "payload": "hello", "qos": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["id"].as_str().unwrap().len(), 16);
    let p = next(&mut alpha).await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("extra/one", &b"hello"[..])
    );
    let (_, v) = api.get("/api/v5/subscriptions?clientid=alpha").await;
    assert_eq!(v["meta"]["count"], 2, "{v}");
    let (_, v) = api.get("/api/v5/subscriptions?match_topic=extra/zzz").await;
    assert_eq!(v["data"][0]["topic"], "extra/+", "{v}");
    let (_, v) = api.get("/api/v5/topics").await;
    let topics: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["topic"].as_str())
        .collect();
    assert_eq!(topics, ["cmd/alpha/#", "extra/+"]);
    let (s, _) = api
        .post(
            "/api/v5/clients/alpha/unsubscribe",
            json!({"topic": "extra/+"}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api
        .post(
            "/api/v5/clients/alpha/unsubscribe",
            json!({"topic": "extra/+"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "no longer subscribed");
    let (s, _) = api
        .post(
            "/api/v5/clients/nobody/subscribe",
            json!({"topic": "a", "qos": 0}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Queued and in-flight lists answer for a known client.
    let (s, v) = api.get("/api/v5/clients/alpha/mqueue_messages").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = api
        .get("/api/v5/clients/alpha/inflight_messages?limit=5")
        .await;
    assert_eq!(s, StatusCode::OK);

    // A 5.0 client kicked gets DISCONNECT 0x98 (Administrative action).
    let mut gamma = crate::interop_rumqttc::v5::connect(port, "gamma", true, 0, None).await;
    let (s, _) = api.delete("/api/v5/clients/gamma").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let reason = tokio::time::timeout(Duration::from_secs(5), gamma.disconnects.recv()).await;
    assert_eq!(reason.ok().flatten(), Some(0x98));

    // Kicked: the connection is closed and the session gone.
    let (s, _) = api.delete("/api/v5/clients/alpha").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api.get("/api/v5/clients/alpha").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api.delete("/api/v5/clients/alpha").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, v) = api.get("/api/v5/clients").await;
    assert_eq!(v["meta"]["count"], 1);
    server.shutdown(Duration::from_secs(5)).await;
}

/// Publish and bulk publish with bad input, retained messages listed, read and deleted,
/// rules created, tested, changed and removed, and the node's statistics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_retained_rules_and_statistics() {
    let d = dir("api-publish");
    let server = common::start(api_config(&d)).await;
    let api = Api::new(server.api_addr().unwrap());

    for (bad, why) in [
        (json!({"topic": "a/#", "payload": "x"}), "wildcard"),
        (json!({"topic": "a", "payload": "x", "qos": 3}), "qos"),
        (
            json!({"topic": "a", "payload": "%%%", "payload_encoding": "base64"}),
            "base64",
        ),
        (json!({"payload": "x"}), "no topic"),
        (json!({"topic": "a", "bogus": 1}), "unknown field"),
    ] {
        let (s, v) = api.post("/api/v5/publish", bad).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{why}: {v}");
        assert_eq!(v["code"], "BAD_REQUEST", "{why}");
    }
    let raw = api
        .http
        .post(api.url("/api/v5/publish"))
        .basic_auth(KEY, Some(SECRET))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    assert_eq!(raw.json::<Value>().await.unwrap()["code"], "BAD_REQUEST");

    // No subscriber: 202 with reason code 16, as EMQX answers; the retained copy is kept.
    let (s, v) = api
        .post(
            "/api/v5/publish",
            json!({"topic": "kept/one", "payload": "AAEC", "payload_encoding": "base64", "qos": 1, "retain": true}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["reason_code"], 16);
    let (s, v) = api
        .post(
            "/api/v5/publish/bulk",
            json!([{"topic": "kept/two", "payload": "2", "retain": true, "qos": 1}, {"topic": "x/#"}]),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v[0]["reason_code"], 16);
    assert_eq!(v[1]["code"], "BAD_REQUEST");
    let (s, _) = api.post("/api/v5/publish/bulk", json!([])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let (_, v) = api
        .get("/api/v5/mqtt/retainer/messages?topic=kept/%2B")
        .await;
    assert_eq!(v["meta"]["count"], 2, "{v}");
    let (s, v) = api.get("/api/v5/mqtt/retainer/message/kept%2Fone").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["payload"], "AAEC");
    let (s, _) = api.delete("/api/v5/mqtt/retainer/message/kept%2Fone").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = api.get("/api/v5/mqtt/retainer/message/kept%2Fone").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (_, v) = api.get("/api/v5/mqtt/retainer/messages").await;
    assert_eq!(v["meta"]["count"], 1);

    // Rules: created (201), listed with metrics, tested, changed, removed.
    let rule = json!({"id": "r1", "sql": "SELECT payload.v AS v FROM \"t/#\" WHERE payload.v > 1", "actions": [{"kind": "console"}]});
    let (s, v) = api.post("/api/v5/rules", rule.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["metrics"]["matched"], 0);
    let (s, v) = api.post("/api/v5/rules", rule).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("ALREADY_EXISTS"))
    );
    let (s, v) = api
        .post("/api/v5/rules", json!({"id": "r2", "sql": "SELEKT"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (_, _) = api
        .post(
            "/api/v5/publish",
            json!({"topic": "t/1", "payload": "{\"v\": 5}"}),
        )
        .await;
    let (_, v) = api.get("/api/v5/rules").await;
    assert_eq!(v["data"][0]["id"], "r1");
    assert_eq!(v["data"][0]["metrics"]["matched"], 1, "{v}");
    let test = json!({"sql": "SELECT payload.v * 2 AS d FROM \"t/#\"", "context": {"payload": "{\"v\": 21}", "topic": "t/1"}});
    let (s, v) = api.post("/api/v5/rule_test", test).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["d"], 42);
    let (s, v) = api
        .put(
            "/api/v5/rules/r1",
            json!({"sql": "SELECT 1 AS one FROM \"u/#\"", "enabled": false}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["enable"], false);
    let (s, _) = api
        .put("/api/v5/rules/zz", json!({"sql": "SELECT 1 FROM \"u\""}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = api.get("/api/v5/rules/r1/metrics").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["metrics"]["matched"].is_u64(), "{v}");
    let (s, _) = api.delete("/api/v5/rules/r1").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api.get("/api/v5/rules/r1").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Node, statistics, metrics, listeners, durability.
    let (_, v) = api.get("/api/v5/nodes").await;
    assert_eq!(v[0]["node_status"], "running");
    let node = v[0]["node"].as_str().unwrap().to_string();
    let (s, v) = api.get(&format!("/api/v5/nodes/{node}")).await;
    assert_eq!(
        (s, v["node"].as_str()),
        (StatusCode::OK, Some(node.as_str()))
    );
    let (s, _) = api.get("/api/v5/nodes/other@host").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = api.get("/api/v5/monitor?latest=3600").await;
    assert_eq!(s, StatusCode::OK);
    assert!(!v.as_array().unwrap().is_empty(), "a sample at start: {v}");
    let (s, _) = api.get("/api/v5/monitor?latest=soon").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, v) = api.get("/api/v5/monitor_current").await;
    assert!(v["received_msg_rate"].is_number(), "{v}");
    let (_, v) = api.get("/api/v5/sources").await;
    assert_eq!(v, json!([]));
    let (s, _) = api.get("/api/v5/sinks/none").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, v) = api.get("/api/v5/stats?aggregate=true").await;
    assert!(v["retained.count"].as_u64() >= Some(1), "{v}");
    let (_, v) = api.get("/api/v5/metrics").await;
    assert!(v[0]["messages.received"].is_u64(), "{v}");
    let (s, _) = api.get("/api/v5/stats?aggregate=maybe").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, v) = api.get("/api/v5/listeners").await;
    assert_eq!(v[0]["type"], "tcp");
    let (_, v) = api.get("/api/v5/durability").await;
    assert!(v["wal"]["fsyncs"].as_u64().unwrap() > 0, "{v}");
    assert!(
        v["wal"]["fsync_latency_us"]["count"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert!(v["recovery"]["replay_ms"].is_u64(), "{v}");
    server.shutdown(Duration::from_secs(5)).await;
}

/// The scrape passes `promtool check metrics`, and its values move as clients connect and
/// publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_pass_promtool_and_move() {
    let Some(promtool) = common::tool("promtool") else {
        return;
    };
    let d = dir("api-prom");
    let mut config = api_config(&d);
    let parsed = Config::parse(
        "[[rules]]\nid = \"count\"\nsql = 'SELECT * FROM \"m/#\"'\nactions = [{ kind = \"console\" }]\n\
         [[sinks]]\nname = \"nowhere\"\nkind = \"http\"\nurl = \"http://127.0.0.1:1/x\"\ntopics = [\"none/#\"]\n",
    )
    .unwrap();
    config.rules = parsed.rules;
    config.sinks = parsed.sinks;
    let server = common::start(config).await;
    let api = Api::new(server.api_addr().unwrap());
    let scrape = || async {
        api.http
            .get(api.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no series {series}"))
    };
    let before = scrape().await;
    let port = server.local_addr().port();
    // A persistent subscriber: its queue is logged, so the messages cost fdatasyncs.
    let keeper = connect(port, "keeper", false, None).await;
    subscribe(&keeper, "m/#", QoS::AtLeastOnce).await;
    let publisher = connect(port, "pub", true, None).await;
    for i in 0..5u8 {
        publisher
            .client
            .publish("m/x", QoS::AtLeastOnce, false, vec![i])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = scrape().await;
    assert_eq!(value(&after, "emqx_live_connections_count"), 2.0);
    let received =
        value(&after, "emqx_messages_received") - value(&before, "emqx_messages_received");
    assert_eq!(received, 5.0);
    assert_eq!(value(&after, "emqx_rule_matched{rule=\"count\"}"), 5.0);
    assert!(
        value(&after, "keelmq_wal_fsync_seconds_count")
            > value(&before, "keelmq_wal_fsync_seconds_count")
    );
    let checked = run_promtool(&promtool, &after);
    assert!(checked.0, "promtool check metrics:\n{}\n{after}", checked.1);
    // Every series the shipped Grafana dashboard queries is in the scrape.
    let grafana = include_str!("../../scripts/grafana-dashboard.json");
    let mut names: Vec<&str> = grafana
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("emqx_") || w.starts_with("keelmq_"))
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() > 15, "{names:?}");
    for name in names {
        let exposed = after
            .lines()
            .any(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']));
        assert!(
            exposed,
            "the Grafana dashboard queries {name}, which /metrics lacks"
        );
    }
    server.shutdown(Duration::from_secs(5)).await;
}

fn run_promtool(promtool: &Path, text: &str) -> (bool, String) {
    use std::io::Write as _;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && said.trim().is_empty(), said)
}

/// `POST /publish` answers only once the message is durable: a broker SIGKILLed right after
/// the answers gives every answered message to a persistent subscriber after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_message_survives_sigkill_right_after_the_answer() {
    let data = common::temp_dir("api-kill");
    std::fs::create_dir_all(&data).unwrap();
    let keys = data.join("keys");
    std::fs::write(&keys, format!("{KEY}:{SECRET}\n")).unwrap();
    let config = data.join("keelmq.toml");
    let text = format!("[api]\napi_key_file = {:?}\n", keys.to_str().unwrap());
    std::fs::write(&config, text).unwrap();
    let (data_arg, config_arg) = (data.join("d"), config.to_str().unwrap().to_string());
    let data_arg = data_arg.to_str().unwrap().to_string();
    let args = [
        "--data-dir",
        data_arg.as_str(),
        "--config",
        config_arg.as_str(),
    ];
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_keelmq"));
    let broker = common::BrokerProcess::start_with(&binary, &args);
    {
        let sub = connect(broker.port(), "keeper", false, None).await;
        subscribe(&sub, "durable/#", QoS::AtLeastOnce).await;
        sub.client.disconnect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let api = Api::new(broker.listener_addr("api"));
    let mut answered = Vec::new();
    for i in 0..20 {
        let body = json!({"topic": format!("durable/{i}"), "payload": format!("m{i}"), "qos": 1});
        let (s, v) = api.post("/api/v5/publish", body).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        answered.push(format!("m{i}"));
    }
    drop(broker); // SIGKILL right after the last answer
    let broker = common::BrokerProcess::start_with(&binary, &args);
    let mut sub = connect(broker.port(), "keeper", false, None).await;
    let mut got = Vec::new();
    while got.len() < answered.len() {
        let p = next(&mut sub).await;
        got.push(String::from_utf8_lossy(&p.payload).to_string());
    }
    assert_eq!(got, answered, "every answered message, in order");
    drop(broker);
    let _ = std::fs::remove_dir_all(&data);
}

/// Whether `user` / `password` may connect (rumqttc, MQTT 3.1.1).
async fn mqtt_login(port: u16, user: &str, password: &str) -> bool {
    use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet};
    let mut options = MqttOptions::new(format!("login-{user}"), "127.0.0.1", port);
    options.set_credentials(user, password);
    let (_client, mut events) = AsyncClient::new(options, 10);
    let connack = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => {
                    return a.code == ConnectReturnCode::Success
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), connack)
        .await
        .expect("an answer in time")
}

/// The configuration file of the reload test: a password file, an ACL, a webhook sink.
fn reload_file(d: &Path, http_port: u16, extra: &str) -> String {
    format!(
        r#"
data_dir = {data:?}
[listener]
bind = "127.0.0.1:0"
[api]
bind = "127.0.0.1:0"
api_key_file = {keys:?}
[auth]
allow_anonymous = true
[[auth.chain]]
kind = "password_file"
path = {passwd:?}
[authz]
acl_file = {acl:?}
[[sinks]]
name = "hook"
kind = "http"
url = "http://127.0.0.1:{http_port}/in"
topics = ["hook/#"]
body = "${{payload}}"
batch_time_ms = 0
{extra}
"#,
        data = d.join("data").to_str().unwrap(),
        keys = d.join("api_keys").to_str().unwrap(),
        passwd = d.join("passwd").to_str().unwrap(),
        acl = d.join("acl").to_str().unwrap(),
    )
}

/// Run-time changes through the API: password-file users, the ACL as text (checked before it
/// is swapped in), a sink disabled, enabled and restarted, and `POST /configs/reload` applying
/// a new rule and a broker-wide limit while reporting the limit that needs a restart, and
/// refusing a bad file untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_acl_sinks_and_reload_change_a_running_broker() {
    let d = dir("api-reload");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("api_keys"), format!("{KEY}:{SECRET}\n")).unwrap();
    std::fs::write(d.join("passwd"), "").unwrap();
    std::fs::write(d.join("acl"), "topic readwrite #\n").unwrap();
    let (http, seen) = crate::sinks::http_receiver(|_, _| 200).await;
    let file = d.join("keelmq.toml");
    std::fs::write(&file, reload_file(&d, http, "")).unwrap();
    let config = Config::load(&file).unwrap();
    let source = Some((file.clone(), keelmq::reload::Overrides::default()));
    let server = keelmq::server::Server::start_from(config, source)
        .await
        .unwrap();
    let api = Api::new(server.api_addr().unwrap());
    let port = server.local_addr().port();
    let users = "/api/v5/authentication/password_based:password_file/users";

    // Users: added (hashed), listed, password changed, removed; logins follow at once.
    let (s, v) = api
        .post(users, json!({"user_id": "dev", "password": "pw1"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, _) = api
        .post(users, json!({"user_id": "dev", "password": "pw1"}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(std::fs::read_to_string(d.join("passwd"))
        .unwrap()
        .starts_with("dev:$argon2id$"));
    assert!(mqtt_login(port, "dev", "pw1").await);
    let (_, v) = api.get(users).await;
    assert_eq!(v["data"][0]["user_id"], "dev");
    let (s, _) = api
        .put(&format!("{users}/dev"), json!({"password": "pw2"}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(!mqtt_login(port, "dev", "pw1").await);
    assert!(mqtt_login(port, "dev", "pw2").await);
    let (s, _) = api.delete(&format!("{users}/dev")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api.get(&format!("{users}/dev")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api
        .get("/api/v5/authentication/password_based:other/users")
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The ACL: read, a bad one refused with its line (nothing changes), a good one swapped in.
    let acl = "/api/v5/authorization/sources/file";
    let (_, v) = api.get(acl).await;
    assert_eq!(v["rules"], "topic readwrite #\n");
    let (s, v) = api
        .put(acl, json!({"rules": "topic readwrite #\nfrobnicate x\n"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["message"].as_str().unwrap().contains("line 2"), "{v}");
    let (_, v) = api.get(acl).await;
    assert_eq!(v["rules"], "topic readwrite #\n", "unchanged");
    let (s, _) = api
        .put(acl, json!({"rules": "topic readwrite hook/#\n"}))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        std::fs::read_to_string(d.join("acl")).unwrap(),
        "topic readwrite hook/#\n"
    );

    // A sink disabled writes nothing (its subscriber unsubscribed), enabled again writes.
    let publish = |topic: &'static str| {
        let api = &api;
        async move {
            let (s, v) = api
                .post(
                    "/api/v5/publish",
                    json!({"topic": topic, "payload": topic, "qos": 1}),
                )
                .await;
            assert!(s.is_success(), "{v}");
        }
    };
    publish("hook/1").await;
    assert!(common::wait_until(Duration::from_secs(10), || seen
        .lock()
        .len()
        == 1));
    let (s, _) = api
        .put("/api/v5/sinks/hook/enable/false", json!(null))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    publish("hook/2").await;
    let (s, _) = api.put("/api/v5/sinks/hook/enable/true", json!(null)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    publish("hook/3").await;
    assert!(common::wait_until(Duration::from_secs(10), || seen
        .lock()
        .len()
        == 2));
    let bodies: Vec<String> = seen.lock().iter().map(|(_, b)| b.clone()).collect();
    assert_eq!(bodies, ["hook/1", "hook/3"]);
    let (s, _) = api.post("/api/v5/sinks/hook/restart", json!(null)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api.put("/api/v5/sinks/nope/enable/true", json!(null)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, v) = api.get("/api/v5/sinks/hook").await;
    assert_eq!(v["metrics"]["success"], 2, "{v}");

    // Reload: a new rule applied, a limit reported as needing a restart.
    let rule = "[[rules]]\nid = \"late\"\nsql = 'SELECT * FROM \"x/#\"'\nactions = [{ kind = \"console\" }]\n[limits]\nmax_connections = 77\nmax_topic_levels = 9\n";
    std::fs::write(&file, reload_file(&d, http, rule)).unwrap();
    let (s, v) = api.post("/api/v5/configs/reload", json!(null)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let applied = v["applied"].as_array().unwrap();
    assert!(applied.contains(&json!("rules")), "{v}");
    assert!(applied.contains(&json!("limits.max_connections")), "{v}");
    assert_eq!(
        v["restart_required"],
        json!(["limits.max_topic_levels"]),
        "{v}"
    );
    let (_, v) = api.get("/api/v5/nodes").await;
    assert_eq!(v[0]["max_connections"], 77, "applied at once: {v}");
    let (s, _) = api.get("/api/v5/rules/late").await;
    assert_eq!(s, StatusCode::OK);
    // A file that does not parse changes nothing and says why.
    std::fs::write(&file, "[limits\n").unwrap();
    let (s, v) = api.post("/api/v5/configs/reload", json!(null)).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BAD_CONFIG")),
        "{v}"
    );
    let (s, _) = api.get("/api/v5/rules/late").await;
    assert_eq!(s, StatusCode::OK, "still there");
    server.shutdown(Duration::from_secs(5)).await;
}

/// `/api-docs`: an OpenAPI document generated from the routes, which an independent validator
/// (`openapi-spec-validator`) accepts, naming every endpoint with its methods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_valid_and_complete() {
    let d = dir("api-docs");
    let server = common::start(api_config(&d)).await;
    let api = Api::new(server.api_addr().unwrap());
    let r = api.http.get(api.url("/api-docs")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "open without a login");
    let text = r.text().await.unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/v5/clients", "get"),
        ("/api/v5/clients/{clientid}", "delete"),
        ("/api/v5/publish", "post"),
        ("/api/v5/mqtt/retainer/message/{topic}", "delete"),
        ("/api/v5/rules/{id}", "put"),
        ("/api/v5/rule_test", "post"),
        ("/api/v5/configs/reload", "post"),
        ("/api/v5/authorization/sources/file", "put"),
        ("/api/v5/authentication/{id}/users", "post"),
        ("/api/v5/sinks/{name}/restart", "post"),
        ("/api/v5/durability", "get"),
        ("/api/v5/prometheus/stats", "get"),
        ("/api/v5/login", "post"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path}"
        );
    }
    assert!(paths.len() >= 35, "{} paths", paths.len());
    let Some(python) = common::paho_python() else {
        return;
    };
    let file = d.join("openapi.json");
    std::fs::write(&file, &text).unwrap();
    let check = "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))\nprint('valid')";
    let out = std::process::Command::new(python)
        .args(["-c", check, file.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    if said.contains("No module named 'openapi_spec_validator'") {
        assert!(
            !common::interop_required(),
            "openapi-spec-validator is required but missing"
        );
        return;
    }
    assert!(out.status.success(), "openapi-spec-validator: {said}");
    server.shutdown(Duration::from_secs(5)).await;
}

/// Reloads under load change rules without dropping a message: a QoS 1 publisher goes on while
/// `configs/reload` adds, changes and removes a rule again and again; a persistent subscriber
/// gets every acknowledged message, and a rule present throughout republishes every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_change_rules_without_dropping_a_message() {
    let d = dir("api-reload-load");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("api_keys"), format!("{KEY}:{SECRET}\n")).unwrap();
    std::fs::write(d.join("passwd"), "").unwrap();
    std::fs::write(d.join("acl"), "topic readwrite #\n").unwrap();
    let keep = "[[rules]]\nid = \"keep\"\nsql = 'SELECT payload FROM \"load/#\"'\nactions = [{ kind = \"republish\", topic = \"out/keep\", qos = 1, payload = '${payload}' }]\n";
    let extra = |v: u32| {
        format!("[[rules]]\nid = \"extra\"\nsql = 'SELECT {v} AS v FROM \"load/#\"'\nactions = [{{ kind = \"console\" }}]\n")
    };
    let file = d.join("keelmq.toml");
    std::fs::write(&file, reload_file(&d, 1, keep)).unwrap();
    let config = Config::load(&file).unwrap();
    let source = Some((file.clone(), keelmq::reload::Overrides::default()));
    let server = keelmq::server::Server::start_from(config, source)
        .await
        .unwrap();
    let api = Api::new(server.api_addr().unwrap());
    let port = server.local_addr().port();
    let mut sub = connect(port, "keeper", false, None).await;
    subscribe(&sub, "load/#", QoS::AtLeastOnce).await;
    let mut outputs = connect(port, "outputs", false, None).await;
    subscribe(&outputs, "out/keep", QoS::AtLeastOnce).await;

    let publisher = connect(port, "loader", true, None).await;
    const N: u32 = 400;
    let load = tokio::spawn(async move {
        for i in 0..N {
            publisher
                .client
                .publish("load/x", QoS::AtLeastOnce, false, i.to_string())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        publisher
    });
    for round in 0..8u32 {
        let text = match round % 3 {
            0 => format!("{keep}{}", extra(round)),
            1 => format!("{keep}{}", extra(round + 100)),
            _ => keep.to_string(),
        };
        std::fs::write(&file, reload_file(&d, 1, &text)).unwrap();
        let (s, v) = api.post("/api/v5/configs/reload", json!(null)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert!(v["errors"].as_array().unwrap().is_empty(), "{v}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let _publisher = load.await.unwrap();
    let mut got = std::collections::BTreeSet::new();
    while got.len() < N as usize {
        let p = next(&mut sub).await;
        got.insert(String::from_utf8_lossy(&p.payload).to_string());
    }
    let mut republished = std::collections::BTreeSet::new();
    while republished.len() < N as usize {
        let p = next(&mut outputs).await;
        republished.insert(String::from_utf8_lossy(&p.payload).to_string());
    }
    assert_eq!(
        got, republished,
        "the rule present throughout saw every message"
    );
    server.shutdown(Duration::from_secs(5)).await;
}

/// The next message `local` receives within `ms`, as text.
async fn recv(local: &mut crate::interop_rumqttc::v311::Client, ms: u64) -> Option<String> {
    tokio::time::timeout(Duration::from_millis(ms), local.publishes.recv())
        .await
        .ok()
        .flatten()
        .map(|p| String::from_utf8_lossy(&p.payload).to_string())
}

/// A source disabled through the API stops (status "disconnected", reason "disabled"); what
/// the remote broker queued for its persistent session meanwhile arrives once it is enabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_disabled_and_enabled_through_the_api_resumes_its_remote_session() {
    let Some(remote) = common::servers::mosquitto(20) else {
        return;
    };
    let d = dir("api-source");
    let mut config = api_config(&d);
    let text = format!(
        "[[sources]]\nname = \"plant\"\nkind = \"mqtt\"\nserver = \"127.0.0.1:{}\"\n\
         client_id = \"keelmq-api-source\"\ntopics = [{{ filter = \"plant/#\", qos = 1 }}]\n\
         local_topic = \"remote/${{topic}}\"\n",
        remote.port
    );
    config.sources = Config::parse(&text).unwrap().sources;
    let server = common::start(config).await;
    let api = Api::new(server.api_addr().unwrap());
    let mut local = connect(server.local_addr().port(), "local-sub", false, None).await;
    subscribe(&local, "remote/#", QoS::AtLeastOnce).await;
    let far = connect(remote.port, "plant-device", true, None).await;
    let send = |payload: &'static str| {
        let c = far.client.clone();
        async move {
            c.publish("plant/a", QoS::AtLeastOnce, false, payload)
                .await
                .unwrap()
        }
    };
    let mut through = false;
    for _ in 0..50 {
        send("probe").await;
        if recv(&mut local, 200).await.is_some() {
            through = true;
            break;
        }
    }
    assert!(through, "the source brings messages in");
    while recv(&mut local, 300).await.is_some() {} // late probes

    let (s, _) = api
        .put("/api/v5/sources/plant/enable/false", json!(null))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = api.get("/api/v5/sources/plant").await;
    assert_eq!(
        (v["status"].as_str(), v["status_reason"].as_str()),
        (Some("disconnected"), Some("disabled")),
        "{v}"
    );
    send("while-off").await;
    assert_eq!(
        recv(&mut local, 700).await,
        None,
        "a disabled source brings nothing in"
    );
    let (s, _) = api
        .put("/api/v5/sources/plant/enable/true", json!(null))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        recv(&mut local, 10_000).await.as_deref(),
        Some("while-off"),
        "queued remotely, resumed"
    );
    let (s, _) = api.post("/api/v5/sources/plant/restart", json!(null)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    send("after-restart").await;
    assert_eq!(
        recv(&mut local, 10_000).await.as_deref(),
        Some("after-restart")
    );
    let (s, _) = api
        .put("/api/v5/sources/nope/enable/true", json!(null))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    server.shutdown(Duration::from_secs(5)).await;
}
