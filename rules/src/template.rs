//! `${…}` templates of rule actions (a republish topic or payload, a sink's SQL or body):
//! text with placeholders that name a field of the rule's output — `${clientid}`, `${t}`,
//! `${payload.a.b}`, `${pub_props.'User-Property'.k}` — written as rule SQL paths.
//!
//! Rendering puts a string in as it is, any other value as JSON, and a missing one as nothing.
//! `Display` prints the template back; what it prints parses to the same template.

use std::fmt;

use serde_json::{Map, Value};

use crate::ast::Expr;
use crate::eval::{text, Env};
use crate::Error;

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    /// A placeholder: a path (`Expr::Path`).
    Field(Expr),
}

impl Template {
    /// Parses `source`; an unclosed `${` or a placeholder that is not a path is an error with
    /// its position.
    pub fn parse(source: &str) -> Result<Template, Error> {
        let mut parts = Vec::new();
        let mut rest = 0;
        while let Some(found) = source[rest..].find("${") {
            let start = rest + found;
            if start > rest {
                parts.push(Part::Text(source[rest..start].to_string()));
            }
            let inner_at = start + 2;
            let Some(len) = source[inner_at..].find('}') else {
                return Err(Error::at(source, start, "unclosed ${".into()));
            };
            let inner = &source[inner_at..inner_at + len];
            let expr = crate::parser::parse_expr(inner).map_err(|e| Error {
                column: e.column + inner_at,
                ..e
            })?;
            if !matches!(expr, Expr::Path(..)) {
                let message = format!("${{{inner}}} is not a field name or path");
                return Err(Error::at(source, start, message));
            }
            parts.push(Part::Field(expr));
            rest = inner_at + len + 1;
        }
        if rest < source.len() {
            parts.push(Part::Text(source[rest..].to_string()));
        }
        Ok(Template { parts })
    }

    /// Whether the template has no placeholder.
    pub fn is_constant(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The text with every placeholder replaced by the field of `output` it names.
    pub fn render(&self, output: &Map<String, Value>) -> String {
        self.render_with(&mut Env::new(output.clone()))
    }

    /// [`Self::render`] in an environment several templates share (a payload decoded once).
    pub fn render_with(&self, env: &mut Env) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(e) => out.push_str(&text(&env.eval(e).unwrap_or(Value::Null))),
            }
        }
        out
    }

    /// The first name of every placeholder's path (`payload` for `${payload.a.b}`).
    pub fn roots(&self) -> Vec<&str> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Field(Expr::Path(name, _)) => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// A SQL statement template: every `${…}` becomes a numbered parameter (`$1`, `$2`, … — the
/// same placeholder twice is one parameter), so values are sent typed and never spliced
/// into the SQL text.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlTemplate {
    /// The statement with `$n` parameters.
    pub statement: String,
    params: Vec<Expr>,
}

impl SqlTemplate {
    /// Parses `source`; a placeholder inside a quoted string or identifier is refused (it
    /// would be text, not a parameter).
    pub fn parse(source: &str) -> Result<SqlTemplate, String> {
        let template = Template::parse(source).map_err(|e| e.to_string())?;
        let mut statement = String::new();
        let mut params: Vec<Expr> = Vec::new();
        let mut quote: Option<char> = None;
        for part in template.parts {
            match part {
                Part::Text(t) => {
                    for c in t.chars() {
                        quote = match (quote, c) {
                            (None, '\'' | '"') => Some(c),
                            (Some(q), c) if c == q => None,
                            (q, _) => q,
                        };
                    }
                    statement.push_str(&t);
                }
                Part::Field(e) => {
                    if quote.is_some() {
                        return Err(format!(
                            "${{{e}}} is inside quotes: write it bare, it becomes a typed \
                             parameter"
                        ));
                    }
                    let n = match params.iter().position(|p| *p == e) {
                        Some(n) => n,
                        None => {
                            params.push(e);
                            params.len() - 1
                        }
                    };
                    statement.push_str(&format!("${}", n + 1));
                }
            }
        }
        Ok(SqlTemplate { statement, params })
    }

    /// The first name of every parameter's path.
    pub fn roots(&self) -> Vec<&str> {
        self.params
            .iter()
            .filter_map(|e| match e {
                Expr::Path(name, _) => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The parameters' values for `output`, in order (a missing field is `null`).
    pub fn values(&self, env: &mut Env) -> Vec<Value> {
        self.params
            .iter()
            .map(|e| env.eval(e).unwrap_or(Value::Null))
            .collect()
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Text(t) => write!(f, "{t}")?,
                Part::Field(e) => write!(f, "${{{e}}}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn fields(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn placeholders_render_fields_and_paths() {
        let t = Template::parse("alerts/${clientid}/${payload.a.b}").unwrap();
        let out = fields(json!({"clientid": "c1", "payload": "{\"a\": {\"b\": 7}}"}));
        assert_eq!(t.render(&out), "alerts/c1/7");
        let t = Template::parse(r#"{"t": ${t}, "p": ${p}, "m": "${missing}"}"#).unwrap();
        let out = fields(json!({"t": 85.5, "p": {"x": [1]}}));
        assert_eq!(t.render(&out), r#"{"t": 85.5, "p": {"x":[1]}, "m": ""}"#);
        let t = Template::parse("${pub_props.'User-Property'.k}").unwrap();
        let out = fields(json!({"pub_props": {"User-Property": {"k": "v"}}}));
        assert_eq!(t.render(&out), "v");
        assert!(Template::parse("plain/topic").unwrap().is_constant());
    }

    #[test]
    fn sql_templates_make_numbered_parameters() {
        let t = SqlTemplate::parse(
            "INSERT INTO t(id, c, v, again) VALUES (${id}, ${clientid}, ${payload.v}, ${id})",
        )
        .unwrap();
        assert_eq!(
            t.statement,
            "INSERT INTO t(id, c, v, again) VALUES ($1, $2, $3, $1)"
        );
        let out = fields(json!({"id": 7, "clientid": "c", "payload": "{\"v\": 2.5}"}));
        assert_eq!(
            t.values(&mut Env::new(out)),
            vec![json!(7), json!("c"), json!(2.5)]
        );
        let e = SqlTemplate::parse("SELECT '${clientid}'").unwrap_err();
        assert!(e.contains("inside quotes"), "{e}");
        assert!(SqlTemplate::parse("SELECT 'it''s', ${a}").is_ok());
    }

    #[test]
    fn bad_placeholders_say_where() {
        let e = Template::parse("a/${clientid").unwrap_err();
        assert_eq!((e.line, e.column), (1, 3), "{e}");
        let e = Template::parse("x ${1 + 2} y").unwrap_err();
        assert!(e.message.contains("not a field name"), "{e}");
        assert!(Template::parse("${}").is_err());
        assert!(Template::parse("${a b}").is_err());
    }

    proptest! {
        #[test]
        fn printed_templates_parse_back(source in "([a-z/ {}\"$]{0,6}(\\$\\{[a-z_]{1,6}(\\.[a-z]{1,4}){0,2}\\})?){0,4}") {
            if let Ok(t) = Template::parse(&source) {
                let again = Template::parse(&t.to_string()).expect("printed template parses");
                prop_assert_eq!(again.render(&Map::new()), t.render(&Map::new()));
                prop_assert_eq!(again.to_string(), t.to_string());
            }
        }

        #[test]
        fn sql_templates_number_each_placeholder_once(
            names in proptest::collection::vec("x_[a-c]{1,2}", 1..6),
        ) {
            let sql = format!(
                "INSERT INTO t VALUES ({})",
                names.iter().map(|n| format!("${{{n}}}")).collect::<Vec<_>>().join(", ")
            );
            let t = SqlTemplate::parse(&sql).expect("parses");
            let mut distinct = names.clone();
            distinct.sort();
            distinct.dedup();
            let out: Map<String, Value> = names
                .iter()
                .map(|n| (n.clone(), Value::String(format!("v-{n}"))))
                .collect();
            let values = t.values(&mut Env::new(out));
            prop_assert_eq!(values.len(), distinct.len());
            prop_assert!(!t.statement.contains("${"), "{}", t.statement);
            // Parameters are numbered in order of first appearance.
            let mut order: Vec<&String> = Vec::new();
            for n in &names {
                if !order.contains(&n) {
                    order.push(n);
                }
            }
            for (i, n) in order.iter().enumerate() {
                prop_assert_eq!(&values[i], &Value::String(format!("v-{n}")));
            }
        }

        #[test]
        fn arbitrary_text_never_panics(source in "\\PC{0,80}") {
            if let Ok(t) = Template::parse(&source) {
                let _ = t.render(&Map::new());
            }
            if let Ok(sql) = SqlTemplate::parse(&source) {
                prop_assert!(!sql.statement.contains("${"), "{}", sql.statement);
            }
        }
    }
}
