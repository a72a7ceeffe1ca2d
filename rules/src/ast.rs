//! The syntax tree of a rule, and its printing back to SQL (`Display`): what is printed parses
//! to the same tree (the round trip the property tests check).

use std::fmt;

/// A rule statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    Select(Select),
    Foreach(Foreach),
}

/// `SELECT fields FROM sources [WHERE cond]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Select {
    pub fields: Vec<Field>,
    pub from: Vec<String>,
    pub filter: Option<Expr>,
}

/// `FOREACH list [AS alias] [DO fields] [INCASE cond] FROM sources [WHERE cond]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Foreach {
    pub list: Expr,
    pub alias: Option<String>,
    pub fields: Vec<Field>,
    pub incase: Option<Expr>,
    pub from: Vec<String>,
    pub filter: Option<Expr>,
}

/// One selected field.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// `*`: every field of the context.
    All,
    Expr {
        expr: Expr,
        alias: Option<String>,
    },
}

/// One step of a path after its first name.
#[derive(Debug, Clone, PartialEq)]
pub enum Seg {
    /// `.name` or `.'name'`.
    Key(String),
    /// `[index]` (1-based; negative from the end).
    Index(Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
    /// `=~`: the topic on the left matches the filter on the right.
    Match,
    Add,
    Sub,
    Mul,
    Div,
    IntDiv,
    Mod,
}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Lit(Lit),
    /// A name and the steps after it (`payload.a[1].b`).
    Path(String, Vec<Seg>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `expr [NOT] IN (a, b, ...)`.
    In {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    /// A function call; `at` is its byte offset in the SQL (for errors).
    Call {
        name: String,
        args: Vec<Expr>,
        at: usize,
    },
    /// `CASE [operand] WHEN c THEN e ... [ELSE e] END`.
    Case {
        operand: Option<Box<Expr>>,
        whens: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
    },
    /// `[a, b, ...]`.
    Array(Vec<Expr>),
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        use BinOp::*;
        match self {
            Or => "or",
            And => "and",
            Eq => "=",
            Ne => "!=",
            Lt => "<",
            Gt => ">",
            Le => "<=",
            Ge => ">=",
            Match => "=~",
            Add => "+",
            Sub => "-",
            Mul => "*",
            Div => "/",
            IntDiv => "div",
            Mod => "mod",
        }
    }
}

/// Writes `s` in `quote`s, doubling the quote and escaping backslashes.
fn quote(f: &mut fmt::Formatter<'_>, s: &str, q: char) -> fmt::Result {
    write!(f, "{q}")?;
    for ch in s.chars() {
        match ch {
            '\\' => write!(f, "\\\\")?,
            c if c == q => write!(f, "{q}{q}")?,
            c => write!(f, "{c}")?,
        }
    }
    write!(f, "{q}")
}

/// A name as an identifier: bare when it can be, else double-quoted.
fn ident(f: &mut fmt::Formatter<'_>, name: &str) -> fmt::Result {
    let bare = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        && !crate::parser::is_keyword(name);
    match bare {
        true => write!(f, "{name}"),
        false => quote(f, name, '"'),
    }
}

impl fmt::Display for Lit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lit::Null => write!(f, "null"),
            Lit::Bool(b) => write!(f, "{b}"),
            Lit::Int(n) => write!(f, "{n}"),
            // Plain decimal digits (never an exponent), with a fraction so that it parses
            // back as a float.
            Lit::Float(x) => {
                let digits = format!("{x}");
                match digits.contains('.') {
                    true => write!(f, "{digits}"),
                    false => write!(f, "{digits}.0"),
                }
            }
            Lit::Str(s) => quote(f, s, '\''),
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Lit(l) => write!(f, "{l}"),
            Expr::Path(name, segs) => {
                ident(f, name)?;
                for s in segs {
                    match s {
                        Seg::Key(k) => {
                            write!(f, ".")?;
                            quote(f, k, '\'')?;
                        }
                        Seg::Index(i) => write!(f, "[{i}]")?,
                    }
                }
                Ok(())
            }
            Expr::Not(e) => write!(f, "(not {e})"),
            Expr::Neg(e) => write!(f, "(-{e})"),
            Expr::Binary(op, a, b) => write!(f, "({a} {} {b})", op.symbol()),
            Expr::In {
                expr,
                list,
                negated,
            } => {
                let not = if *negated { "not " } else { "" };
                write!(f, "({expr} {not}in (")?;
                list_of(f, list)?;
                write!(f, "))")
            }
            Expr::Call { name, args, .. } => {
                write!(f, "{name}(")?;
                list_of(f, args)?;
                write!(f, ")")
            }
            Expr::Case {
                operand,
                whens,
                otherwise,
            } => {
                write!(f, "case")?;
                if let Some(o) = operand {
                    write!(f, " {o}")?;
                }
                for (c, e) in whens {
                    write!(f, " when {c} then {e}")?;
                }
                if let Some(e) = otherwise {
                    write!(f, " else {e}")?;
                }
                write!(f, " end")
            }
            Expr::Array(items) => {
                write!(f, "[")?;
                list_of(f, items)?;
                write!(f, "]")
            }
        }
    }
}

fn list_of(f: &mut fmt::Formatter<'_>, items: &[Expr]) -> fmt::Result {
    for (i, e) in items.iter().enumerate() {
        if i > 0 {
            write!(f, ", ")?;
        }
        write!(f, "{e}")?;
    }
    Ok(())
}

fn fields_of(f: &mut fmt::Formatter<'_>, fields: &[Field]) -> fmt::Result {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            write!(f, ", ")?;
        }
        match field {
            Field::All => write!(f, "*")?,
            Field::Expr { expr, alias } => {
                write!(f, "{expr}")?;
                if let Some(a) = alias {
                    write!(f, " as ")?;
                    ident(f, a)?;
                }
            }
        }
    }
    Ok(())
}

fn from_of(f: &mut fmt::Formatter<'_>, from: &[String], filter: &Option<Expr>) -> fmt::Result {
    write!(f, " from ")?;
    for (i, s) in from.iter().enumerate() {
        if i > 0 {
            write!(f, ", ")?;
        }
        quote(f, s, '"')?;
    }
    if let Some(w) = filter {
        write!(f, " where {w}")?;
    }
    Ok(())
}

impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Statement::Select(s) => {
                write!(f, "select ")?;
                fields_of(f, &s.fields)?;
                from_of(f, &s.from, &s.filter)
            }
            Statement::Foreach(s) => {
                write!(f, "foreach {}", s.list)?;
                if let Some(a) = &s.alias {
                    write!(f, " as ")?;
                    ident(f, a)?;
                }
                if !s.fields.is_empty() {
                    write!(f, " do ")?;
                    fields_of(f, &s.fields)?;
                }
                if let Some(c) = &s.incase {
                    write!(f, " incase {c}")?;
                }
                from_of(f, &s.from, &s.filter)
            }
        }
    }
}

/// Calls `f` on every expression of `statement`, outer before inner.
pub fn visit(statement: &Statement, f: &mut dyn FnMut(&Expr)) {
    let fields = |fields: &[Field], f: &mut dyn FnMut(&Expr)| {
        for field in fields {
            if let Field::Expr { expr, .. } = field {
                visit_expr(expr, f);
            }
        }
    };
    match statement {
        Statement::Select(s) => {
            fields(&s.fields, f);
            s.filter.iter().for_each(|e| visit_expr(e, f));
        }
        Statement::Foreach(s) => {
            visit_expr(&s.list, f);
            fields(&s.fields, f);
            s.incase.iter().for_each(|e| visit_expr(e, f));
            s.filter.iter().for_each(|e| visit_expr(e, f));
        }
    }
}

fn visit_expr(e: &Expr, f: &mut dyn FnMut(&Expr)) {
    f(e);
    match e {
        Expr::Lit(_) => {}
        Expr::Path(_, segs) => {
            for s in segs {
                if let Seg::Index(i) = s {
                    visit_expr(i, f);
                }
            }
        }
        Expr::Not(x) | Expr::Neg(x) => visit_expr(x, f),
        Expr::Binary(_, a, b) => {
            visit_expr(a, f);
            visit_expr(b, f);
        }
        Expr::In { expr, list, .. } => {
            visit_expr(expr, f);
            list.iter().for_each(|x| visit_expr(x, f));
        }
        Expr::Call { args, .. } | Expr::Array(args) => args.iter().for_each(|x| visit_expr(x, f)),
        Expr::Case {
            operand,
            whens,
            otherwise,
        } => {
            operand.iter().for_each(|x| visit_expr(x, f));
            for (c, t) in whens {
                visit_expr(c, f);
                visit_expr(t, f);
            }
            otherwise.iter().for_each(|x| visit_expr(x, f));
        }
    }
}

/// The depth of the statement's deepest expression (a leaf is 1), without recursion.
pub fn depth(statement: &Statement) -> usize {
    let mut roots: Vec<&Expr> = Vec::new();
    let (fields, rest): (&[Field], Vec<&Expr>) = match statement {
        Statement::Select(s) => (&s.fields, s.filter.iter().collect()),
        Statement::Foreach(s) => {
            let mut rest = vec![&s.list];
            rest.extend(s.incase.iter().chain(s.filter.iter()));
            (&s.fields, rest)
        }
    };
    for f in fields {
        if let Field::Expr { expr, .. } = f {
            roots.push(expr);
        }
    }
    roots.extend(rest);
    let mut stack: Vec<(&Expr, usize)> = roots.into_iter().map(|e| (e, 1)).collect();
    let mut deepest = 0;
    while let Some((e, d)) = stack.pop() {
        deepest = deepest.max(d);
        stack.extend(children(e).into_iter().map(|c| (c, d + 1)));
    }
    deepest
}

/// An expression's direct sub-expressions.
fn children(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::Lit(_) => Vec::new(),
        Expr::Path(_, segs) => segs
            .iter()
            .filter_map(|s| match s {
                Seg::Index(i) => Some(&**i),
                Seg::Key(_) => None,
            })
            .collect(),
        Expr::Not(x) | Expr::Neg(x) => vec![&**x],
        Expr::Binary(_, a, b) => vec![&**a, &**b],
        Expr::In { expr, list, .. } => std::iter::once(&**expr).chain(list.iter()).collect(),
        Expr::Call { args, .. } | Expr::Array(args) => args.iter().collect(),
        Expr::Case {
            operand,
            whens,
            otherwise,
        } => {
            let mut out: Vec<&Expr> = operand.iter().map(|x| &**x).collect();
            for (c, t) in whens {
                out.push(c);
                out.push(t);
            }
            out.extend(otherwise.iter().map(|x| &**x));
            out
        }
    }
}
