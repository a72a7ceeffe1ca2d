//! A recursive-descent parser for rule SQL. Precedence, loosest first: `or`, `and`, `not`,
//! comparisons (`= != <> < > <= >= =~ in`), `+ -`, `* / div mod`, unary `-`, then paths,
//! calls, literals and parentheses.

use crate::ast::*;
use crate::lexer::{tokens, Tok, Token};
use crate::Error;

const KEYWORDS: [&str; 20] = [
    "select", "from", "where", "as", "and", "or", "not", "in", "case", "when", "then", "else",
    "end", "foreach", "do", "incase", "div", "mod", "true", "false",
];

/// How deeply the parser may nest (parentheses, NOT, unary minus, calls, CASE, and each operator
/// of a chain such as `a + b + c`): deeper is an error, so that no input exhausts the stack.
/// [`crate::Rule::compile`] then bounds the tree's depth tighter (see [`MAX_TREE_DEPTH`]).
pub const MAX_DEPTH: usize = 100;

/// How deep a compiled rule's expression tree may be: printed back (one parenthesis level per
/// operator, two for NOT, minus and IN), it stays within [`MAX_DEPTH`].
pub const MAX_TREE_DEPTH: usize = 48;

/// Whether `word` is a keyword (so that the printer quotes such a name).
pub fn is_keyword(word: &str) -> bool {
    let w = word.to_ascii_lowercase();
    KEYWORDS.contains(&w.as_str()) || w == "null"
}

/// Parses one statement.
pub fn parse(sql: &str) -> Result<Statement, Error> {
    let mut p = Parser {
        sql,
        toks: tokens(sql)?,
        pos: 0,
        depth: 0,
    };
    let statement = if p.eat_word("select") {
        Statement::Select(p.select()?)
    } else if p.eat_word("foreach") {
        Statement::Foreach(p.foreach()?)
    } else {
        return Err(p.error("expected SELECT or FOREACH"));
    };
    if p.pos < p.toks.len() {
        return Err(p.error("unexpected text after the statement"));
    }
    Ok(statement)
}

/// Parses one expression (a template's placeholder).
pub fn parse_expr(sql: &str) -> Result<Expr, Error> {
    let mut p = Parser {
        sql,
        toks: tokens(sql)?,
        pos: 0,
        depth: 0,
    };
    let e = p.expr()?;
    if p.pos < p.toks.len() {
        return Err(p.error("unexpected text after the expression"));
    }
    Ok(e)
}

struct Parser<'a> {
    sql: &'a str,
    toks: Vec<Token>,
    pos: usize,
    /// Nesting of the expression being parsed (see [`MAX_DEPTH`]).
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }

    fn offset(&self) -> usize {
        self.toks.get(self.pos).map_or(self.sql.len(), |t| t.at)
    }

    fn error(&self, what: &str) -> Error {
        let found = match self.peek() {
            None => "the end".to_string(),
            Some(t) => format!("{t:?}"),
        };
        Error::at(self.sql, self.offset(), format!("{what}, found {found}"))
    }

    fn is_word(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn eat_word(&mut self, word: &str) -> bool {
        let yes = self.is_word(word);
        if yes {
            self.pos += 1;
        }
        yes
    }

    fn eat_sym(&mut self, sym: &str) -> bool {
        let yes = matches!(self.peek(), Some(Tok::Sym(s)) if *s == sym);
        if yes {
            self.pos += 1;
        }
        yes
    }

    fn expect_sym(&mut self, sym: &str) -> Result<(), Error> {
        match self.eat_sym(sym) {
            true => Ok(()),
            false => Err(self.error(&format!("expected `{sym}`"))),
        }
    }

    fn expect_word(&mut self, word: &str) -> Result<(), Error> {
        match self.eat_word(word) {
            true => Ok(()),
            false => Err(self.error(&format!("expected {}", word.to_uppercase()))),
        }
    }

    fn select(&mut self) -> Result<Select, Error> {
        let fields = self.fields()?;
        let (from, filter) = self.sources_and_filter()?;
        Ok(Select {
            fields,
            from,
            filter,
        })
    }

    fn foreach(&mut self) -> Result<Foreach, Error> {
        let list = self.expr()?;
        let alias = match self.eat_word("as") {
            true => Some(self.name()?),
            false => None,
        };
        let fields = match self.eat_word("do") {
            true => self.fields()?,
            false => Vec::new(),
        };
        let incase = match self.eat_word("incase") {
            true => Some(self.expr()?),
            false => None,
        };
        let (from, filter) = self.sources_and_filter()?;
        Ok(Foreach {
            list,
            alias,
            fields,
            incase,
            from,
            filter,
        })
    }

    fn sources_and_filter(&mut self) -> Result<(Vec<String>, Option<Expr>), Error> {
        self.expect_word("from")?;
        let mut from = Vec::new();
        loop {
            match self.peek() {
                Some(Tok::Quoted(s)) => {
                    from.push(s.clone());
                    self.pos += 1;
                }
                _ => return Err(self.error("expected a \"topic filter\" or \"$events/...\"")),
            }
            if !self.eat_sym(",") {
                break;
            }
        }
        let filter = match self.eat_word("where") {
            true => Some(self.expr()?),
            false => None,
        };
        Ok((from, filter))
    }

    fn fields(&mut self) -> Result<Vec<Field>, Error> {
        let mut fields = Vec::new();
        loop {
            if self.eat_sym("*") {
                fields.push(Field::All);
            } else {
                let expr = self.expr()?;
                let alias = match self.eat_word("as") {
                    true => Some(self.name()?),
                    false => None,
                };
                fields.push(Field::Expr { expr, alias });
            }
            if !self.eat_sym(",") {
                return Ok(fields);
            }
        }
    }

    /// An alias: a bare word that is not a keyword, or a double-quoted name.
    fn name(&mut self) -> Result<String, Error> {
        match self.peek().cloned() {
            Some(Tok::Word(w)) if !is_keyword(&w) => {
                self.pos += 1;
                Ok(w)
            }
            Some(Tok::Quoted(q)) => {
                self.pos += 1;
                Ok(q)
            }
            _ => Err(self.error("expected a name")),
        }
    }

    /// One more level for the operator of a chain being parsed (`a + b + c`): the tree's
    /// left spine grows by one per operator.
    fn chain(&mut self) -> Result<(), Error> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(&format!("expression nested deeper than {MAX_DEPTH}")));
        }
        self.depth += 1;
        Ok(())
    }

    /// Runs `parse` one level deeper, refusing to go past [`MAX_DEPTH`].
    fn nested(
        &mut self,
        parse: impl FnOnce(&mut Self) -> Result<Expr, Error>,
    ) -> Result<Expr, Error> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(&format!("expression nested deeper than {MAX_DEPTH}")));
        }
        self.depth += 1;
        let e = parse(self);
        self.depth -= 1;
        e
    }

    fn expr(&mut self) -> Result<Expr, Error> {
        self.nested(|p| {
            let base = p.depth;
            let mut left = p.and()?;
            while p.eat_word("or") {
                p.chain()?;
                left = Expr::Binary(BinOp::Or, Box::new(left), Box::new(p.and()?));
            }
            p.depth = base;
            Ok(left)
        })
    }

    fn and(&mut self) -> Result<Expr, Error> {
        let base = self.depth;
        let mut left = self.not()?;
        while self.eat_word("and") {
            self.chain()?;
            left = Expr::Binary(BinOp::And, Box::new(left), Box::new(self.not()?));
        }
        self.depth = base;
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, Error> {
        match self.eat_word("not") {
            true => Ok(Expr::Not(Box::new(self.nested(Self::not)?))),
            false => self.comparison(),
        }
    }

    fn comparison(&mut self) -> Result<Expr, Error> {
        let left = self.additive()?;
        const OPS: [(&str, BinOp); 8] = [
            ("=", BinOp::Eq),
            ("!=", BinOp::Ne),
            ("<>", BinOp::Ne),
            ("<=", BinOp::Le),
            (">=", BinOp::Ge),
            ("<", BinOp::Lt),
            (">", BinOp::Gt),
            ("=~", BinOp::Match),
        ];
        for (sym, op) in OPS {
            if self.eat_sym(sym) {
                return Ok(Expr::Binary(op, Box::new(left), Box::new(self.additive()?)));
            }
        }
        let negated = self.is_word("not")
            && matches!(self.toks.get(self.pos + 1), Some(Token { tok: Tok::Word(w), .. }) if w.eq_ignore_ascii_case("in"));
        if negated {
            self.pos += 1;
        }
        if self.eat_word("in") {
            self.expect_sym("(")?;
            let list = self.list(")")?;
            return Ok(Expr::In {
                expr: Box::new(left),
                list,
                negated,
            });
        }
        Ok(left)
    }

    /// Comma-separated expressions up to `close` (consumed).
    fn list(&mut self, close: &str) -> Result<Vec<Expr>, Error> {
        let mut items = Vec::new();
        if self.eat_sym(close) {
            return Ok(items);
        }
        loop {
            items.push(self.expr()?);
            if self.eat_sym(close) {
                return Ok(items);
            }
            self.expect_sym(",")?;
        }
    }

    fn additive(&mut self) -> Result<Expr, Error> {
        let base = self.depth;
        let mut left = self.multiplicative()?;
        loop {
            let op = if self.eat_sym("+") {
                BinOp::Add
            } else if self.eat_sym("-") {
                BinOp::Sub
            } else {
                self.depth = base;
                return Ok(left);
            };
            self.chain()?;
            left = Expr::Binary(op, Box::new(left), Box::new(self.multiplicative()?));
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, Error> {
        let base = self.depth;
        let mut left = self.unary()?;
        loop {
            let op = if self.eat_sym("*") {
                BinOp::Mul
            } else if self.eat_sym("/") {
                BinOp::Div
            } else if self.eat_word("div") {
                BinOp::IntDiv
            } else if self.eat_word("mod") {
                BinOp::Mod
            } else {
                self.depth = base;
                return Ok(left);
            };
            self.chain()?;
            left = Expr::Binary(op, Box::new(left), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Expr, Error> {
        match self.eat_sym("-") {
            true => Ok(Expr::Neg(Box::new(self.nested(Self::unary)?))),
            false => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<Expr, Error> {
        let at = self.offset();
        let Some(tok) = self.peek().cloned() else {
            return Err(self.error("expected an expression"));
        };
        self.pos += 1;
        let expr = match tok {
            Tok::Int(n) => Expr::Lit(Lit::Int(n)),
            Tok::Float(x) => Expr::Lit(Lit::Float(x)),
            Tok::Str(s) => Expr::Lit(Lit::Str(s)),
            Tok::Sym("(") => {
                let e = self.expr()?;
                self.expect_sym(")")?;
                e
            }
            Tok::Sym("[") => Expr::Array(self.list("]")?),
            Tok::Quoted(name) => self.path(name)?,
            Tok::Word(w) => self.word(w, at)?,
            Tok::Sym(_) => {
                self.pos -= 1;
                return Err(self.error("expected an expression"));
            }
        };
        Ok(expr)
    }

    /// What a bare word starts: a literal, CASE, a call or a path.
    fn word(&mut self, w: String, at: usize) -> Result<Expr, Error> {
        let lower = w.to_ascii_lowercase();
        match lower.as_str() {
            "true" => return Ok(Expr::Lit(Lit::Bool(true))),
            "false" => return Ok(Expr::Lit(Lit::Bool(false))),
            "null" => return Ok(Expr::Lit(Lit::Null)),
            "case" => return self.case(),
            _ if is_keyword(&lower) => {
                self.pos -= 1;
                return Err(self.error("expected an expression"));
            }
            _ => {}
        }
        if self.eat_sym("(") {
            let args = self.list(")")?;
            return Ok(Expr::Call {
                name: lower,
                args,
                at,
            });
        }
        self.path(w)
    }

    fn path(&mut self, name: String) -> Result<Expr, Error> {
        let mut segs = Vec::new();
        loop {
            if self.eat_sym(".") {
                match self.peek().cloned() {
                    Some(Tok::Word(k) | Tok::Str(k) | Tok::Quoted(k)) => {
                        self.pos += 1;
                        segs.push(Seg::Key(k));
                    }
                    Some(Tok::Int(n)) => {
                        self.pos += 1;
                        segs.push(Seg::Key(n.to_string()));
                    }
                    _ => return Err(self.error("expected a field name after `.`")),
                }
            } else if self.eat_sym("[") {
                let index = self.expr()?;
                self.expect_sym("]")?;
                segs.push(Seg::Index(Box::new(index)));
            } else {
                return Ok(Expr::Path(name, segs));
            }
        }
    }

    fn case(&mut self) -> Result<Expr, Error> {
        let operand = match self.is_word("when") {
            true => None,
            false => Some(Box::new(self.expr()?)),
        };
        let mut whens = Vec::new();
        while self.eat_word("when") {
            let cond = self.expr()?;
            self.expect_word("then")?;
            whens.push((cond, self.expr()?));
        }
        if whens.is_empty() {
            return Err(self.error("expected WHEN"));
        }
        let otherwise = match self.eat_word("else") {
            true => Some(Box::new(self.expr()?)),
            false => None,
        };
        self.expect_word("end")?;
        Ok(Expr::Case {
            operand,
            whens,
            otherwise,
        })
    }
}
