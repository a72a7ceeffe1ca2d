//! Tokens of rule SQL. Double quotes name (a topic filter, an identifier), single quotes are
//! strings, `--` starts a comment; keywords are case-insensitive.

use crate::Error;

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// A bare word: a keyword or an identifier (the parser decides).
    Word(String),
    /// `"..."`.
    Quoted(String),
    /// `'...'`.
    Str(String),
    Int(i64),
    Float(f64),
    /// An operator or punctuation: `= != <> < > <= >= =~ + - * / , . ( ) [ ]`.
    Sym(&'static str),
}

/// A token and the byte offset it starts at.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub tok: Tok,
    pub at: usize,
}

const SYMBOLS: [&str; 18] = [
    "!=", "<>", "<=", ">=", "=~", "=", "<", ">", "+", "-", "*", "/", ",", ".", "(", ")", "[", "]",
];

/// Splits `sql` into tokens.
pub fn tokens(sql: &str) -> Result<Vec<Token>, Error> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if sql[i..].starts_with("--") {
            i = sql[i..].find('\n').map_or(bytes.len(), |n| i + n);
        } else if c == b'"' || c == b'\'' {
            let (text, next) = quoted(sql, i)?;
            let tok = if c == b'"' {
                Tok::Quoted(text)
            } else {
                Tok::Str(text)
            };
            out.push(Token { tok, at: i });
            i = next;
        } else if c.is_ascii_digit() {
            let (tok, next) = number(sql, i)?;
            out.push(Token { tok, at: i });
            i = next;
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b'$' {
            let end = sql[i..]
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '$'))
                .map_or(bytes.len(), |n| i + n);
            out.push(Token {
                tok: Tok::Word(sql[i..end].to_string()),
                at: i,
            });
            i = end;
        } else if let Some(sym) = SYMBOLS.iter().find(|s| sql[i..].starts_with(**s)) {
            out.push(Token {
                tok: Tok::Sym(sym),
                at: i,
            });
            i += sym.len();
        } else {
            let ch = sql[i..].chars().next().unwrap_or('?');
            return Err(Error::at(sql, i, format!("unexpected character {ch:?}")));
        }
    }
    Ok(out)
}

/// A quoted text starting at `start` (its quote doubled inside stands for itself, and a
/// backslash escapes the next character); the text and the offset after the closing quote.
fn quoted(sql: &str, start: usize) -> Result<(String, usize), Error> {
    let quote = sql.as_bytes()[start] as char;
    let mut text = String::new();
    let mut chars = sql[start + 1..].char_indices().peekable();
    while let Some((n, ch)) = chars.next() {
        if ch == '\\' {
            match chars.next() {
                Some((_, 'n')) => text.push('\n'),
                Some((_, 't')) => text.push('\t'),
                Some((_, other)) => text.push(other),
                None => break,
            }
        } else if ch == quote {
            if chars.peek().is_some_and(|(_, c)| *c == quote) {
                chars.next();
                text.push(quote);
            } else {
                return Ok((text, start + 1 + n + 1));
            }
        } else {
            text.push(ch);
        }
    }
    Err(Error::at(sql, start, format!("unterminated {quote}")))
}

fn number(sql: &str, start: usize) -> Result<(Tok, usize), Error> {
    let rest = &sql[start..];
    let mut end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let fraction =
        rest[end..].starts_with('.') && rest[end + 1..].starts_with(|c: char| c.is_ascii_digit());
    if fraction {
        end += 1 + rest[end + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len() - end - 1);
    }
    let text = &rest[..end];
    let tok = match fraction {
        true => text.parse().map(Tok::Float).ok(),
        false => text.parse().map(Tok::Int).ok(),
    };
    match tok {
        Some(tok) => Ok((tok, start + end)),
        None => Err(Error::at(sql, start, format!("number {text} out of range"))),
    }
}
