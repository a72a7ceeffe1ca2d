//! The Redis sink (`redis` crate, async on tokio): a command template whose words are
//! templates (`SET msg:${id} ${payload} NX`; a rendered word stays one argument, spaces and
//! all), a batch sent as one pipeline. Exactly once with a command that is a no-op the second
//! time for the same message (`SET … NX` keyed by `${id}`, `XADD stream <id>-0 …`, `HSET` of
//! a key per message); at least once otherwise. A command Redis answers with an error
//! (`WRONGTYPE`, a bad argument) is refused alone (dead-letter topic).

use keelmq_rules::eval::Env;
use keelmq_rules::template::Template;
use redis::aio::MultiplexedConnection;
use redis::{IntoConnectionInfo, RedisResult};
use tokio::sync::Mutex;

use super::target::{Item, Outcome, Target, WriteFuture};
use crate::config::SinkSpec;

pub struct RedisTarget {
    client: redis::Client,
    words: Vec<Template>,
    conn: Mutex<Option<MultiplexedConnection>>,
    timeout: std::time::Duration,
}

impl RedisTarget {
    pub fn open(spec: &SinkSpec, password: Option<String>) -> Result<RedisTarget, String> {
        let url = spec.url.as_deref().unwrap_or_default();
        let mut info = url
            .into_connection_info()
            .map_err(|e| format!("url: {e}"))?;
        if let Some(p) = password {
            let settings = info.redis_settings().clone().set_password(p);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(|e| format!("url: {e}"))?;
        let command = spec.command.as_deref().unwrap_or_default();
        let words = command
            .split_whitespace()
            .map(|w| Template::parse(w).map_err(|e| format!("command: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RedisTarget {
            client,
            words,
            conn: Mutex::new(None),
            timeout: std::time::Duration::from_millis(spec.request_timeout_ms),
        })
    }

    fn pipeline(&self, items: &[Item]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for item in items {
            let mut env = Env::new(item.fields.clone());
            let mut words = self.words.iter().map(|w| w.render_with(&mut env));
            let mut cmd = redis::cmd(&words.next().unwrap_or_default());
            for w in words {
                cmd.arg(w);
            }
            pipe.add_command(cmd);
        }
        pipe.ignore_errors();
        pipe
    }

    async fn write_all(&self, items: &[Item]) -> Result<Vec<Outcome>, String> {
        let mut conn = self.conn.lock().await;
        let connection = match conn.as_ref() {
            Some(c) => c.clone(),
            None => {
                // No response timeout of its own: the sink's (`request_timeout_ms`) bounds a
                // write and counts a late reply.
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(None);
                let c = self
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| e.to_string())?;
                *conn = Some(c.clone());
                c
            }
        };
        let mut connection = connection;
        let answers: RedisResult<Vec<RedisResult<redis::Value>>> =
            self.pipeline(items).query_async(&mut connection).await;
        match answers {
            Ok(answers) => Ok(answers
                .into_iter()
                .map(|a| match a {
                    Ok(_) => Outcome::Done,
                    Err(e) if transient(&e) => Outcome::Retry(e.to_string()),
                    Err(e) => Outcome::Refused(e.to_string()),
                })
                .collect()),
            Err(e) => {
                *conn = None;
                Err(e.to_string())
            }
        }
    }
}

impl Target for RedisTarget {
    fn write<'a>(&'a self, items: &'a [Item]) -> WriteFuture<'a> {
        Box::pin(self.write_all(items))
    }

    fn reads(&self) -> Option<Vec<String>> {
        Some(super::target::roots(&self.words))
    }

    fn reset(&self) {
        if let Ok(mut conn) = self.conn.try_lock() {
            *conn = None;
        }
    }
}

/// Errors Redis answers while it cannot serve for now (loading, busy, a replica, out of
/// memory): tried again, not refused.
fn transient(e: &redis::RedisError) -> bool {
    const CODES: [&str; 9] = [
        "LOADING",
        "BUSY",
        "TRYAGAIN",
        "MASTERDOWN",
        "READONLY",
        "OOM",
        "CLUSTERDOWN",
        "NOAUTH",
        "NOPERM",
    ];
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.code().is_some_and(|c| CODES.contains(&c))
}
