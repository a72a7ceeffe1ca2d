//! The PostgreSQL sink (`tokio-postgres`): the statement's `${…}` are typed parameters of a
//! prepared statement (never spliced into SQL); a batch is one transaction whose statements
//! are pipelined. Exactly once when the statement deduplicates on the message id (`INSERT …
//! ON CONFLICT DO NOTHING` with `${id}` in a unique column): a batch retried after a crash or
//! a lost answer inserts nothing twice.
//!
//! A batch the database refuses for its data (SQLSTATE classes 22 and 23: a value out of
//! range, a constraint) is written again item by item, each in its own transaction, so one bad
//! item goes to the dead-letter topic and the others in; a value that does not convert to its
//! parameter's type is refused before the batch is sent. Everything else (the server down, a
//! missing table or privilege, a statement that does not prepare) is tried again.

use std::error::Error;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use keelmq_rules::eval::{text, Env};
use keelmq_rules::template::SqlTemplate;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};

use super::target::{Item, Outcome, Target, WriteFuture};
use crate::config::SinkSpec;

pub struct PgTarget {
    config: tokio_postgres::Config,
    sql: SqlTemplate,
    /// One connection and prepared statement per batch in flight (`inflight_batches`);
    /// `None` until its first write and after one failed.
    conns: Vec<Mutex<Option<(Client, Statement)>>>,
}

impl PgTarget {
    pub fn open(spec: &SinkSpec, password: Option<String>) -> Result<PgTarget, String> {
        let url = spec.url.as_deref().unwrap_or_default();
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("url: {e}"))?;
        if let Some(p) = password {
            config.password(p);
        }
        config.connect_timeout(Duration::from_millis(spec.request_timeout_ms));
        let sql = SqlTemplate::parse(spec.sql.as_deref().unwrap_or_default())
            .map_err(|e| format!("sql: {e}"))?;
        let conns = (0..spec.inflight_batches.max(1))
            .map(|_| Mutex::new(None))
            .collect();
        Ok(PgTarget { config, sql, conns })
    }

    async fn connect(&self) -> Result<(Client, Statement), String> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(|e| describe(&e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL sink connection ended");
            }
        });
        let statement = client
            .prepare(&self.sql.statement)
            .await
            .map_err(|e| format!("preparing the statement: {}", describe(&e)))?;
        Ok((client, statement))
    }

    /// The parameters of each item.
    fn params(&self, items: &[Item]) -> Vec<Vec<Param>> {
        items
            .iter()
            .map(|item| {
                let mut env = Env::new(item.fields.clone());
                self.sql.values(&mut env).into_iter().map(Param).collect()
            })
            .collect()
    }

    /// A free connection slot, or (all busy) the first once it is free.
    async fn slot(&self) -> tokio::sync::MutexGuard<'_, Option<(Client, Statement)>> {
        for c in &self.conns {
            if let Ok(free) = c.try_lock() {
                return free;
            }
        }
        self.conns[0].lock().await
    }

    async fn write_all(&self, items: &[Item]) -> Result<Vec<Outcome>, String> {
        let mut conn = self.slot().await;
        if conn.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            *conn = Some(self.connect().await?);
        }
        let Some((client, statement)) = conn.as_mut() else {
            return Err("not connected".into());
        };
        // Items whose values do not convert to the statement's types are refused here.
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(items.len());
        let mut params = Vec::new();
        for p in self.params(items) {
            match convertible(&p, statement.params())? {
                Ok(()) => {
                    outcomes.push(None);
                    params.push(p);
                }
                Err(why) => outcomes.push(Some(Outcome::Refused(why))),
            }
        }
        let written = match in_one_transaction(client, statement, &params).await {
            Ok(()) => vec![Outcome::Done; params.len()],
            Err(e) if refuses_data(&e) => one_by_one(client, statement, &params).await?,
            Err(e) => {
                *conn = None;
                return Err(describe(&e));
            }
        };
        let mut written = written.into_iter();
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.or_else(|| written.next())
                    .unwrap_or_else(|| Outcome::Retry("no answer for the item".into()))
            })
            .collect())
    }
}

impl Target for PgTarget {
    fn write<'a>(&'a self, items: &'a [Item]) -> WriteFuture<'a> {
        Box::pin(self.write_all(items))
    }

    fn reads(&self) -> Option<Vec<String>> {
        Some(self.sql.roots().into_iter().map(String::from).collect())
    }

    fn reset(&self) {
        for c in &self.conns {
            if let Ok(mut conn) = c.try_lock() {
                *conn = None;
            }
        }
    }
}

/// Whether every value converts to its parameter's type: `Ok(Err(why))` for a value that
/// does not (the item is refused), `Err` for a type the sink cannot send (the batch waits).
fn convertible(params: &[Param], types: &[Type]) -> Result<Result<(), String>, String> {
    if params.len() != types.len() {
        return Err(format!(
            "{} values for {} parameters",
            params.len(),
            types.len()
        ));
    }
    let mut scratch = BytesMut::new();
    for (i, (p, ty)) in params.iter().zip(types).enumerate() {
        scratch.clear();
        if let Err(e) = p.to_sql(ty, &mut scratch) {
            let why = format!("parameter ${}: {e}", i + 1);
            return match e.is::<Unsupported>() {
                true => Err(why),
                false => Ok(Err(why)),
            };
        }
    }
    Ok(Ok(()))
}

/// Runs the statement for every parameter set in one transaction, pipelined.
async fn in_one_transaction(
    client: &mut Client,
    statement: &Statement,
    params: &[Vec<Param>],
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let runs = params.iter().map(|p| {
        let refs: Vec<&(dyn ToSql + Sync)> = p.iter().map(|v| v as _).collect();
        let tx = &tx;
        async move { tx.execute(statement, &refs).await }
    });
    futures_util::future::try_join_all(runs).await?;
    tx.commit().await
}

/// Each item in its own transaction: a refused one is refused alone.
async fn one_by_one(
    client: &mut Client,
    statement: &Statement,
    params: &[Vec<Param>],
) -> Result<Vec<Outcome>, String> {
    let mut outcomes = Vec::with_capacity(params.len());
    for p in params {
        let outcome = match in_one_transaction(client, statement, std::slice::from_ref(p)).await {
            Ok(()) => Outcome::Done,
            Err(e) if refuses_data(&e) => Outcome::Refused(describe(&e)),
            Err(e) => return Err(describe(&e)),
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Whether the database refused the data itself (SQLSTATE class 22, data exception, or 23,
/// integrity constraint): trying again cannot help. Anything else (a missing table or
/// privilege, a connection lost) is tried again until an operator fixes it.
fn refuses_data(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| matches!(db.code().code().get(..2), Some("22" | "23")))
}

/// An error with the database's own message when it sent one.
fn describe(e: &tokio_postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => format!("{} ({})", db.message(), db.code().code()),
        (None, Some(source)) => format!("{e}: {source}"),
        (None, None) => e.to_string(),
    }
}

/// A template's value as a parameter of the type the statement declares for it: text,
/// integers, floats, booleans, json/jsonb, bytea, timestamps (milliseconds since the epoch).
/// `null` is SQL NULL.
#[derive(Debug)]
pub struct Param(pub Value);

type BoxError = Box<dyn Error + Sync + Send>;

impl ToSql for Param {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let v = &self.0;
        if v.is_null() {
            return Ok(IsNull::Yes);
        }
        match *ty {
            Type::BOOL => as_bool(v)?.to_sql(ty, out),
            Type::INT2 => i16::try_from(as_i64(v)?)?.to_sql(ty, out),
            Type::INT4 => i32::try_from(as_i64(v)?)?.to_sql(ty, out),
            Type::INT8 => as_i64(v)?.to_sql(ty, out),
            Type::FLOAT4 => (as_f64(v)? as f32).to_sql(ty, out),
            Type::FLOAT8 => as_f64(v)?.to_sql(ty, out),
            Type::JSON => json_text(v, out),
            Type::JSONB => {
                out.put_u8(1);
                json_text(v, out)
            }
            Type::BYTEA => text(v).as_bytes().to_sql(ty, out),
            Type::TIMESTAMP | Type::TIMESTAMPTZ => {
                // Microseconds since 2000-01-01.
                let ms = as_i64(v)?;
                (ms.saturating_sub(946_684_800_000).saturating_mul(1000)).to_sql(&Type::INT8, out)
            }
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                text(v).to_sql(&Type::TEXT, out)
            }
            _ => Err(Box::new(Unsupported(ty.clone()))),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A parameter type the sink cannot send: a configuration error (the whole batch waits), not
/// bad data.
#[derive(Debug)]
struct Unsupported(Type);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ty = &self.0;
        write!(
            f,
            "parameter of type {ty} is not supported: cast it (`${{x}}::text::{ty}`)"
        )
    }
}

impl Error for Unsupported {}

fn json_text(v: &Value, out: &mut BytesMut) -> Result<IsNull, BoxError> {
    // A string holding JSON (a payload) goes in as that JSON; any other value as itself.
    match v {
        Value::String(s) if serde_json::from_str::<Value>(s).is_ok() => out.put_slice(s.as_bytes()),
        other => out.put_slice(other.to_string().as_bytes()),
    }
    Ok(IsNull::No)
}

fn as_i64(v: &Value) -> Result<i64, BoxError> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .ok_or_else(|| format!("{n} is not an integer").into()),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an integer").into()),
        Value::Bool(b) => Ok(i64::from(*b)),
        other => Err(format!("{other} is not an integer").into()),
    }
}

fn as_f64(v: &Value) -> Result<f64, BoxError> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| format!("{n} is not a number").into()),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a number").into()),
        other => Err(format!("{other} is not a number").into()),
    }
}

fn as_bool(v: &Value) -> Result<bool, BoxError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s == "true" => Ok(true),
        Value::String(s) if s == "false" => Ok(false),
        Value::Number(n) => Ok(n.as_f64() != Some(0.0)),
        other => Err(format!("{other} is not a boolean").into()),
    }
}
