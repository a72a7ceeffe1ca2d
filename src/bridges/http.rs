//! The HTTP sink (a webhook): one request per item, the batch's requests concurrently, with
//! method, URL, header and body templates and an `Idempotency-Key` header (the item's key),
//! so a receiver can drop what a retry repeats: at least once. 2xx is success; 408, 429 and
//! 5xx are tried again; any other status is a refusal for good (dead-letter topic).

use std::time::Duration;

use keelmq_rules::eval::Env;
use keelmq_rules::template::Template;
use reqwest::Method;
use serde_json::Value;

use super::target::{Item, Outcome, Target, WriteFuture};
use crate::config::SinkSpec;

pub struct HttpTarget {
    client: reqwest::Client,
    method: Method,
    url: Template,
    headers: Vec<(reqwest::header::HeaderName, Template)>,
    /// `None`: the item's fields as JSON.
    body: Option<Template>,
}

fn template(field: &str, text: &str) -> Result<Template, String> {
    Template::parse(text).map_err(|e| format!("{field}: {e}"))
}

impl HttpTarget {
    pub fn open(spec: &SinkSpec) -> Result<HttpTarget, String> {
        // reqwest takes rustls's process default: the ring provider the listeners use.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(spec.request_timeout_ms))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let method = spec
            .method
            .as_deref()
            .unwrap_or("post")
            .to_ascii_uppercase();
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| format!("method: {e}"))?;
        let mut headers = Vec::new();
        for (name, value) in &spec.headers {
            let header = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("headers.{name}: {e}"))?;
            headers.push((header, template(&format!("headers.{name}"), value)?));
        }
        Ok(HttpTarget {
            client,
            method,
            url: template("url", spec.url.as_deref().unwrap_or_default())?,
            headers,
            body: spec
                .body
                .as_deref()
                .map(|b| template("body", b))
                .transpose()?,
        })
    }

    async fn send(&self, item: &Item) -> Result<Outcome, String> {
        let mut env = Env::new(item.fields.clone());
        let url = self.url.render_with(&mut env);
        let mut request = self
            .client
            .request(self.method.clone(), &url)
            .header("idempotency-key", item.key());
        for (name, value) in &self.headers {
            request = request.header(name.clone(), value.render_with(&mut env));
        }
        let body = match &self.body {
            Some(t) => t.render_with(&mut env),
            None => Value::Object(item.fields.clone()).to_string(),
        };
        if self.method != Method::GET {
            request = request.body(body);
        }
        let response = request.send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        Ok(match status.as_u16() {
            200..=299 => Outcome::Done,
            408 | 429 | 500..=599 => Outcome::Retry(format!("{url}: HTTP {status}")),
            _ => Outcome::Refused(format!("{url}: HTTP {status}")),
        })
    }
}

impl Target for HttpTarget {
    fn write<'a>(&'a self, items: &'a [Item]) -> WriteFuture<'a> {
        Box::pin(async move {
            let sends = items.iter().map(|item| self.send(item));
            let answers = futures_util::future::join_all(sends).await;
            // Nothing reached the target: the whole batch failed (the sink is disconnected).
            if let (Some(Err(e)), false) = (answers.first(), answers.iter().any(|a| a.is_ok())) {
                return Err(e.clone());
            }
            Ok(answers
                .into_iter()
                .map(|a| a.unwrap_or_else(Outcome::Retry))
                .collect())
        })
    }
}
