//! Evaluation of a rule against one message or event: its fields in, the selected outputs out.
//!
//! Values are JSON values. A path into a string decodes the string as JSON on demand (the
//! payload once per message). Comparisons of a number with a numeric string compare numbers;
//! `+` joins when either side is a string; a missing field is `null`; a condition holds only if
//! it is `true`.

use serde_json::{Map, Number, Value};

use crate::ast::*;
use crate::functions;

/// An evaluation failure (EMQX's `failed.exception`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

fn fail<T>(msg: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError(msg.into()))
}

/// The fields an expression sees: the input's, then the aliases selected so far.
pub struct Env {
    vars: Map<String, Value>,
    /// The payload decoded as JSON, once (`None`: not yet tried).
    payload: Option<Value>,
}

impl Env {
    pub fn new(vars: Map<String, Value>) -> Env {
        Env {
            vars,
            payload: None,
        }
    }

    pub fn set(&mut self, name: &str, value: Value) {
        if name == "payload" {
            self.payload = None;
        }
        self.vars.insert(name.to_string(), value);
    }

    pub fn vars(&self) -> &Map<String, Value> {
        &self.vars
    }

    /// The value a path starts from: a variable, or for `payload.…` the payload decoded as
    /// JSON (once).
    fn root(&mut self, name: &str, has_steps: bool) -> &Value {
        static NULL: Value = Value::Null;
        if name == "payload" && has_steps {
            if self.payload.is_none() {
                let decoded = match self.vars.get("payload") {
                    Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::Null),
                    Some(other) => other.clone(),
                    None => Value::Null,
                };
                self.payload = Some(decoded);
            }
            return self.payload.as_ref().unwrap_or(&NULL);
        }
        self.vars.get(name).unwrap_or(&NULL)
    }

    /// A path's value: walked by reference through objects, so only what it ends at is copied.
    fn path(&mut self, name: &str, segs: &[Seg]) -> Result<Value, EvalError> {
        static NULL: Value = Value::Null;
        let mut at = self.root(name, !segs.is_empty());
        let mut rest = segs;
        while let (Some((Seg::Key(k), tail)), Value::Object(m)) = (rest.split_first(), at) {
            at = m.get(k).unwrap_or(&NULL);
            rest = tail;
        }
        let mut v = at.clone();
        for s in rest {
            v = match s {
                Seg::Key(k) => key(v, k),
                Seg::Index(i) => {
                    let i = self.eval(i)?;
                    index(v, &i)
                }
            };
        }
        Ok(v)
    }

    /// Evaluates `e`.
    pub fn eval(&mut self, e: &Expr) -> Result<Value, EvalError> {
        Ok(match e {
            Expr::Lit(l) => literal(l),
            Expr::Path(name, segs) => self.path(name, segs)?,
            Expr::Not(e) => Value::Bool(!truthy(&self.eval(e)?)),
            Expr::Neg(e) => negate(self.eval(e)?)?,
            Expr::Binary(op, a, b) => self.binary(*op, a, b)?,
            Expr::In {
                expr,
                list,
                negated,
            } => {
                let v = self.eval(expr)?;
                let mut found = false;
                for item in list {
                    found |= equal(&v, &self.eval(item)?);
                }
                Value::Bool(found != *negated)
            }
            Expr::Call { name, args, .. } => {
                let mut values = Vec::with_capacity(args.len());
                for a in args {
                    values.push(self.eval(a)?);
                }
                functions::call(name, values).map_err(EvalError)?
            }
            Expr::Case {
                operand,
                whens,
                otherwise,
            } => self.case(operand.as_deref(), whens, otherwise.as_deref())?,
            Expr::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for i in items {
                    out.push(self.eval(i)?);
                }
                Value::Array(out)
            }
        })
    }

    fn binary(&mut self, op: BinOp, a: &Expr, b: &Expr) -> Result<Value, EvalError> {
        // `and` / `or` do not evaluate their right side when the left decides.
        match op {
            BinOp::And => {
                return Ok(Value::Bool(
                    truthy(&self.eval(a)?) && truthy(&self.eval(b)?),
                ))
            }
            BinOp::Or => {
                return Ok(Value::Bool(
                    truthy(&self.eval(a)?) || truthy(&self.eval(b)?),
                ))
            }
            _ => {}
        }
        let (x, y) = (self.eval(a)?, self.eval(b)?);
        use std::cmp::Ordering::*;
        Ok(match op {
            BinOp::Eq => Value::Bool(equal(&x, &y)),
            BinOp::Ne => Value::Bool(!equal(&x, &y)),
            BinOp::Lt => Value::Bool(compare(&x, &y) == Some(Less)),
            BinOp::Gt => Value::Bool(compare(&x, &y) == Some(Greater)),
            BinOp::Le => Value::Bool(matches!(compare(&x, &y), Some(Less | Equal))),
            BinOp::Ge => Value::Bool(matches!(compare(&x, &y), Some(Greater | Equal))),
            BinOp::Match => match (&x, &y) {
                (Value::String(t), Value::String(f)) => Value::Bool(topic_matches(f, t)),
                _ => Value::Bool(false),
            },
            _ => arithmetic(op, x, y)?,
        })
    }

    fn case(
        &mut self,
        operand: Option<&Expr>,
        whens: &[(Expr, Expr)],
        otherwise: Option<&Expr>,
    ) -> Result<Value, EvalError> {
        let subject = match operand {
            Some(o) => Some(self.eval(o)?),
            None => None,
        };
        for (cond, then) in whens {
            let c = self.eval(cond)?;
            let hit = match &subject {
                Some(s) => equal(s, &c),
                None => truthy(&c),
            };
            if hit {
                return self.eval(then);
            }
        }
        match otherwise {
            Some(e) => self.eval(e),
            None => Ok(Value::Null),
        }
    }
}

fn literal(l: &Lit) -> Value {
    match l {
        Lit::Null => Value::Null,
        Lit::Bool(b) => Value::Bool(*b),
        Lit::Int(n) => Value::from(*n),
        Lit::Float(x) => Number::from_f64(*x).map_or(Value::Null, Value::Number),
        Lit::Str(s) => Value::String(s.clone()),
    }
}

/// `v.k`: a field of an object, or of a string holding a JSON object.
fn key(v: Value, k: &str) -> Value {
    match v {
        Value::Object(mut m) => m.remove(k).unwrap_or(Value::Null),
        Value::String(s) => match serde_json::from_str::<Value>(&s) {
            Ok(Value::Object(mut m)) => m.remove(k).unwrap_or(Value::Null),
            _ => Value::Null,
        },
        _ => Value::Null,
    }
}

/// `v[i]`: 1-based, negative from the end; `null` out of range.
fn index(v: Value, i: &Value) -> Value {
    let (Value::Array(items), Some(i)) = (v, i.as_i64()) else {
        return Value::Null;
    };
    let len = items.len() as i64;
    let at = if i > 0 { i - 1 } else { len + i };
    match (0..len).contains(&at) {
        true => items.into_iter().nth(at as usize).unwrap_or(Value::Null),
        false => Value::Null,
    }
}

pub fn truthy(v: &Value) -> bool {
    matches!(v, Value::Bool(true))
}

/// A number, or a string holding one.
pub fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::String(_)) | (Value::String(_), Value::Number(_)) => {
            matches!((as_number(a), as_number(b)), (Some(x), Some(y)) if x == y)
        }
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => as_number(a)?.partial_cmp(&as_number(b)?),
    }
}

fn negate(v: Value) -> Result<Value, EvalError> {
    match &v {
        Value::Number(n) if n.is_i64() => Ok(n
            .as_i64()
            .and_then(i64::checked_neg)
            .map_or(Value::Null, Value::from)),
        _ => match as_number(&v) {
            Some(x) => Ok(float(-x)),
            None => fail(format!("cannot negate {v}")),
        },
    }
}

pub fn float(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

fn arithmetic(op: BinOp, x: Value, y: Value) -> Result<Value, EvalError> {
    if op == BinOp::Add && (x.is_string() || y.is_string()) {
        return Ok(Value::String(format!("{}{}", text(&x), text(&y))));
    }
    if let (Some(a), Some(b)) = (x.as_i64(), y.as_i64()) {
        let r = match op {
            BinOp::Add => a.checked_add(b),
            BinOp::Sub => a.checked_sub(b),
            BinOp::Mul => a.checked_mul(b),
            BinOp::IntDiv | BinOp::Mod if b == 0 => return fail("division by zero"),
            BinOp::IntDiv => a.checked_div(b),
            BinOp::Mod => a.checked_rem(b),
            _ => None,
        };
        if let Some(r) = r {
            return Ok(Value::from(r));
        }
    }
    let (Some(a), Some(b)) = (as_number(&x), as_number(&y)) else {
        return fail(format!("{} of {x} and {y}", op.symbol()));
    };
    match op {
        BinOp::Div | BinOp::IntDiv | BinOp::Mod if b == 0.0 => fail("division by zero"),
        BinOp::Add => Ok(float(a + b)),
        BinOp::Sub => Ok(float(a - b)),
        BinOp::Mul => Ok(float(a * b)),
        BinOp::Div => Ok(float(a / b)),
        BinOp::IntDiv => Ok(float((a / b).trunc())),
        BinOp::Mod => Ok(float(a % b)),
        _ => fail(format!("{} is not arithmetic", op.symbol())),
    }
}

/// A value as text: a string as it is, anything else as JSON.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// MQTT topic matching: `filter` (with `+` and `#`) against `topic`.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    if topic.starts_with('$') && matches!(f.first(), Some(&"+" | &"#")) {
        return false;
    }
    for (i, level) in f.iter().enumerate() {
        match (*level, t.get(i)) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (l, Some(x)) if l == *x => {}
            _ => return false,
        }
    }
    f.len() == t.len()
}
