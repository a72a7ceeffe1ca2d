//! The `http` authenticator: asks an HTTP service, as EMQX's HTTP authentication does. The
//! request is a POST of `{clientid, username, password, peerhost, cert_cn, listener}` as JSON;
//! the answer a 200 with `{"result": "allow"|"deny"|"ignore", "is_superuser": bool, "acl":
//! [...]}` (`acl` in the forms of the JWT ACL claim, placeholders substituted). A refusal is
//! final (bad username or password); an error, a timeout, another status or an unreadable
//! answer passes the client on to the next authenticator, and is logged.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::{Link, Verdict, VerdictFuture};
use crate::codec::Connect;
use crate::config::HttpSpec;
use crate::hooks::Identity;
use crate::protocol::Refusal;
use crate::transport::ConnInfo;

/// Answers longer than this are not read (and pass the client on).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// One `http` entry of the chain.
pub struct HttpAuth {
    index: usize,
    spec: HttpSpec,
    client: reqwest::Client,
}

impl HttpAuth {
    pub fn open(index: usize, spec: &HttpSpec) -> Result<HttpAuth, String> {
        // reqwest takes rustls's process default: the ring provider the listeners use.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(spec.timeout_ms))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(HttpAuth {
            index,
            spec: spec.clone(),
            client,
        })
    }

    /// The request body.
    fn request(info: &ConnInfo, connect: &Connect, client_id: &str) -> Value {
        let cert_cn = info
            .peer_certificates
            .first()
            .and_then(|der| crate::transport::tls::subject_names(der))
            .and_then(|(cn, _)| cn);
        let password = connect
            .password
            .as_deref()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        json!({
            "clientid": client_id,
            "username": connect.username,
            "password": password,
            "peerhost": info.peer.ip().to_string(),
            "cert_cn": cert_cn,
            "listener": &*info.listener,
        })
    }

    /// The service's answer, or why there is none.
    async fn ask(&self, body: &Value) -> Result<Value, String> {
        let mut request = self.client.post(&self.spec.url).json(body);
        for (name, value) in &self.spec.headers {
            request = request.header(name, value);
        }
        let mut response = request.send().await.map_err(|e| e.to_string())?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(format!("status {}", response.status()));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(format!("answer longer than {MAX_ANSWER_BYTES} bytes"));
            }
            bytes.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("answer is not JSON: {e}"))
    }

    fn verdict(answer: &Value, client_id: &str, username: Option<&str>) -> Result<Verdict, String> {
        match answer.get("result").and_then(Value::as_str) {
            Some("allow") => {}
            Some("deny") => return Ok(Verdict::Deny(Refusal::BadCredentials)),
            Some("ignore") => return Ok(Verdict::Ignore),
            other => return Err(format!("result {other:?}")),
        }
        let rules = match answer.get("acl") {
            None | Some(Value::Null) => None,
            Some(acl) => Some(Arc::new(super::jwt::client_rules(
                acl, client_id, username,
            )?)),
        };
        Ok(Verdict::Allow(Identity {
            username: username.map(str::to_string),
            superuser: answer.get("is_superuser").and_then(Value::as_bool) == Some(true),
            rules,
            expires_at: None,
            peerhost: None,
        }))
    }
}

impl Link for HttpAuth {
    fn describe(&self) -> String {
        format!("auth.chain[{}] (http {})", self.index, self.spec.url)
    }

    fn check<'a>(&'a self, info: &'a ConnInfo, connect: &'a Connect) -> VerdictFuture<'a> {
        Box::pin(async move {
            let client_id = info
                .client_id_from_cert
                .as_deref()
                .unwrap_or(&connect.client_id);
            let body = Self::request(info, connect, client_id);
            let username = connect.username.as_deref();
            let answer = self.ask(&body).await;
            match answer.and_then(|a| Self::verdict(&a, client_id, username)) {
                Ok(verdict) => verdict,
                Err(e) => {
                    let url = &self.spec.url;
                    tracing::warn!(%client_id, %url, error = %e, "HTTP authentication gave no answer; passed on");
                    Verdict::Ignore
                }
            }
        })
    }

    fn reload(&self) -> Result<(), String> {
        Ok(()) // no files
    }
}
