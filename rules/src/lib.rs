//! EMQX-style rule SQL, without I/O: the statements EMQX 5 users write
//! (`SELECT … FROM "topic/+" WHERE …`, `FOREACH … DO … INCASE … FROM …`), parsed
//! ([`parser`]), printed back ([`ast`]'s `Display`) and evaluated against one message's or
//! event's fields ([`eval`], with the built-in [`functions`]).
//!
//! [`Rule::compile`] refuses an unknown function or a wrong number of arguments with the line
//! and column of the call, before the rule ever runs. [`Rule::apply`] turns the input fields into
//! the rule's outputs: none when `WHERE` does not hold (EMQX's `failed.no_result`), one for a
//! `SELECT`, one per kept element for a `FOREACH`, or an [`EvalError`] (`failed.exception`).
//!
//! [`template::Template`] is the `${…}` text of rule actions (a republish topic or payload).
//!
//! The broker's rule engine (durable rule subscribers, actions, metrics) builds on this crate.

pub mod ast;
pub mod eval;
pub mod functions;
mod lexer;
pub mod parser;
pub mod sources;
pub mod template;

use serde_json::{Map, Value};

pub use ast::Statement;
pub use eval::EvalError;

/// A rule SQL problem, where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct Error {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Error {
    /// An error at byte `offset` of `sql`.
    pub fn at(sql: &str, offset: usize, message: String) -> Error {
        let before = &sql[..offset.min(sql.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Error {
            line,
            column,
            message,
        }
    }
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    statement: Statement,
    sources: Vec<sources::Source>,
    /// The input fields the statement reads (`None`: all of them, for `SELECT *`).
    inputs: Option<Vec<String>>,
}

impl Rule {
    /// Parses `sql` and checks every function call's name and number of arguments.
    pub fn compile(sql: &str) -> Result<Rule, Error> {
        let statement = parser::parse(sql)?;
        if ast::depth(&statement) > parser::MAX_TREE_DEPTH {
            let max = parser::MAX_TREE_DEPTH;
            return Err(Error::at(
                sql,
                0,
                format!("expression nested deeper than {max}"),
            ));
        }
        check_calls(sql, &statement)?;
        let from = match &statement {
            Statement::Select(s) => &s.from,
            Statement::Foreach(f) => &f.from,
        };
        let mut sources = Vec::with_capacity(from.len());
        for f in from {
            let at = sql.find(&format!("\"{f}\"")).unwrap_or(0);
            sources.push(sources::parse(f).map_err(|m| Error::at(sql, at, m))?);
        }
        let inputs = inputs_of(&statement);
        Ok(Rule {
            statement,
            sources,
            inputs,
        })
    }

    pub fn statement(&self) -> &Statement {
        &self.statement
    }

    /// The topic filters and events the rule reads.
    pub fn sources(&self) -> &[sources::Source] {
        &self.sources
    }

    /// Whether the statement reads input field `name` (a caller may leave out the others).
    pub fn reads(&self, name: &str) -> bool {
        self.inputs
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == name))
    }

    /// The rule's outputs for one input.
    pub fn apply(&self, input: &Map<String, Value>) -> Result<Vec<Map<String, Value>>, EvalError> {
        self.apply_owned(input.clone())
    }

    /// [`Self::apply`] on an input the caller gives away (no copy of its fields).
    pub fn apply_owned(
        &self,
        input: Map<String, Value>,
    ) -> Result<Vec<Map<String, Value>>, EvalError> {
        let mut env = eval::Env::new(input);
        match &self.statement {
            Statement::Select(s) => {
                let out = select_fields(&mut env, &s.fields)?;
                for (k, v) in &out {
                    env.set(k, v.clone());
                }
                match &s.filter {
                    Some(w) if !eval::truthy(&env.eval(w)?) => Ok(Vec::new()),
                    _ => Ok(vec![out]),
                }
            }
            Statement::Foreach(f) => foreach(&mut env, f),
        }
    }
}

/// The fields of a SELECT (or a FOREACH's DO), each alias visible to the fields after it.
fn select_fields(
    env: &mut eval::Env,
    fields: &[ast::Field],
) -> Result<Map<String, Value>, EvalError> {
    let mut out = Map::new();
    for field in fields {
        match field {
            ast::Field::All => out.extend(env.vars().clone()),
            ast::Field::Expr { expr, alias } => {
                let value = env.eval(expr)?;
                let name = alias.clone().unwrap_or_else(|| default_name(expr));
                env.set(&name, value.clone());
                out.insert(name, value);
            }
        }
    }
    Ok(out)
}

/// The name a field without an alias gets: its path's last key, or the expression's text.
fn default_name(e: &ast::Expr) -> String {
    match e {
        ast::Expr::Path(name, segs) => match segs.last() {
            Some(ast::Seg::Key(k)) => k.clone(),
            Some(ast::Seg::Index(_)) => e.to_string(),
            None => name.clone(),
        },
        other => other.to_string(),
    }
}

fn foreach(env: &mut eval::Env, f: &ast::Foreach) -> Result<Vec<Map<String, Value>>, EvalError> {
    if let Some(w) = &f.filter {
        if !eval::truthy(&env.eval(w)?) {
            return Ok(Vec::new());
        }
    }
    let items = match env.eval(&f.list)? {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        other => return Err(EvalError(format!("FOREACH over {other}, not an array"))),
    };
    let alias = f.alias.as_deref().unwrap_or("item");
    let mut outputs = Vec::new();
    for item in items {
        env.set(alias, item.clone());
        if let Some(c) = &f.incase {
            if !eval::truthy(&env.eval(c)?) {
                continue;
            }
        }
        let out = match f.fields.is_empty() {
            true => Map::from_iter([(alias.to_string(), item)]),
            false => select_fields(env, &f.fields)?,
        };
        outputs.push(out);
    }
    Ok(outputs)
}

/// The roots of every path a statement reads; `None` when it selects `*`.
fn inputs_of(statement: &Statement) -> Option<Vec<String>> {
    let fields = match statement {
        Statement::Select(s) => &s.fields,
        Statement::Foreach(f) => &f.fields,
    };
    if fields.iter().any(|f| matches!(f, ast::Field::All)) {
        return None;
    }
    let mut names: Vec<String> = Vec::new();
    ast::visit(statement, &mut |e| {
        if let ast::Expr::Path(name, _) = e {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    });
    Some(names)
}

/// Every call names a known function with an acceptable number of arguments.
fn check_calls(sql: &str, statement: &Statement) -> Result<(), Error> {
    let mut problem = None;
    ast::visit(statement, &mut |e| {
        if let (None, ast::Expr::Call { name, args, at }) = (&problem, e) {
            let message = match functions::arity(name) {
                None => Some(format!("unknown function {name}")),
                Some((lo, hi)) if args.len() < lo || args.len() > hi => Some(format!(
                    "{name} takes {} arguments, not {}",
                    arity_text(lo, hi),
                    args.len()
                )),
                Some(_) => None,
            };
            problem = message.map(|m| Error::at(sql, *at, m));
        }
    });
    problem.map_or(Ok(()), Err)
}

fn arity_text(lo: usize, hi: usize) -> String {
    match (lo, hi) {
        (l, h) if l == h => l.to_string(),
        (l, usize::MAX) => format!("at least {l}"),
        (l, h) => format!("{l} to {h}"),
    }
}

#[cfg(test)]
mod tests;
