//! The HTTP sink (a webhook): one request per item, the batch's requests concurrently, with
//! method, URL, header and body templates and an `Idempotency-Key` header (the item's key),
//! so a receiver can drop what a retry repeats: at least once. 2xx is success; a refusal of
//! the item's content (400, 405, 410, 411, 413–415, 422) goes to the dead-letter topic; any
//! other status (408, 429, 5xx, and 401, 403, 404, which an operator fixes) is tried again.

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
        let response = match request.send().await {
            Ok(r) => r,
            // A request that cannot be built from this item (a header value with a line
            // break, a URL that does not parse) never will be.
            Err(e) if e.is_builder() => return Ok(Outcome::Refused(format!("{url}: {e}"))),
            Err(e) => return Err(format!("{url}: {e}")),
        };
        let status = response.status();
        let why = format!("{url}: HTTP {status}");
        Ok(match status.as_u16() {
            200..=299 => Outcome::Done,
            // The item's content: refused for good (dead-letter topic).
            400 | 405 | 410 | 411 | 413..=415 | 422 => Outcome::Refused(why),
            // Busy, down, or set up wrong (credentials, path): tried again until it is fixed.
            _ => Outcome::Retry(why),
        })
    }
}

impl Target for HttpTarget {
    fn reads(&self) -> Option<Vec<String>> {
        // Without a body template the body is every field.
        let body = self.body.as_ref()?;
        let headers = self.headers.iter().map(|(_, t)| t);
        Some(super::target::roots(headers.chain([&self.url, body])))
    }

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
