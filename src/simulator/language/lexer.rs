//! The lexer: program text → tokens, each with its 1-based line and column (in characters).
//!
//! Python-like: newlines end statements except inside brackets (implicit line joining) or after a
//! trailing backslash; `#` starts a comment; blank lines and indentation are ignored (blocks are
//! outside the subset, and lenient indentation lets clients send indented multi-line strings).
//! Every problem is a `SYNTAX_ERROR` at the offending character.

use super::{ProgramError, SYNTAX_ERROR};

/// A 1-based source position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    pub line: u32,
    pub column: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Name(String),
    Int(i64),
    Float(f64),
    Str(String),
    /// Operators and punctuation, longest match first.
    Op(&'static str),
    Newline,
    Eof,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub pos: Pos,
}

/// Longest first, so that `**=` wins over `**` and `*`.
const OPERATORS: &[&str] = &[
    "**=", "//=", ">>=", "<<=", "...", "**", "//", "<=", ">=", "==", "!=", "->", "+=", "-=", "*=", "/=", "%=", "&=",
    "|=", "^=", "@=", ":=", "<<", ">>", "+", "-", "*", "/", "%", "<", ">", "=", "(", ")", "[", "]", "{", "}", ",", ".",
    ":", ";", "@", "&", "|", "^", "~",
];

pub(crate) fn syntax_error(pos: Pos, message: impl Into<String>) -> ProgramError {
    ProgramError {
        error_type: SYNTAX_ERROR,
        message: message.into(),
        line: pos.line,
        column: pos.column,
        reference: None,
    }
}

/// Splits a program into tokens; the last token is always `Eof`, preceded by a `Newline`.
pub(crate) fn tokenize(source: &str) -> Result<Vec<Token>, ProgramError> {
    let mut lexer = Lexer { chars: source.chars().collect(), at: 0, line: 1, column: 1, depth: 0, tokens: Vec::new() };
    lexer.run()?;
    Ok(lexer.tokens)
}

struct Lexer {
    chars: Vec<char>,
    at: usize,
    line: u32,
    column: u32,
    /// Open brackets: newlines inside them do not end a statement.
    depth: usize,
    tokens: Vec<Token>,
}

impl Lexer {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.at + ahead).copied()
    }

    fn pos(&self) -> Pos {
        Pos { line: self.line, column: self.column }
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.at += 1;
        if c == '\n' {
            self.line = self.line.saturating_add(1);
            self.column = 1;
        } else {
            self.column = self.column.saturating_add(1);
        }
        Some(c)
    }

    fn push(&mut self, tok: Tok, pos: Pos) {
        self.tokens.push(Token { tok, pos });
    }

    fn newline(&mut self, pos: Pos) {
        let ends_statement = matches!(self.tokens.last(), Some(t) if t.tok != Tok::Newline);
        if self.depth == 0 && ends_statement {
            self.push(Tok::Newline, pos);
        }
    }

    fn run(&mut self) -> Result<(), ProgramError> {
        while let Some(c) = self.peek(0) {
            let pos = self.pos();
            match c {
                '\n' | '\r' => {
                    self.bump();
                    self.newline(pos);
                }
                ' ' | '\t' | '\x0c' => {
                    self.bump();
                }
                '#' => self.skip_comment(),
                '\\' => self.line_continuation(pos)?,
                '\'' | '"' => self.string(pos)?,
                c if c.is_ascii_digit() || (c == '.' && self.peek(1).is_some_and(|d| d.is_ascii_digit())) => {
                    self.number(pos)?
                }
                c if c == '_' || c.is_alphabetic() => self.name(pos),
                _ => self.operator(pos)?,
            }
        }
        let pos = self.pos();
        self.depth = 0;
        self.newline(pos);
        self.push(Tok::Eof, pos);
        Ok(())
    }

    fn skip_comment(&mut self) {
        while self.peek(0).is_some_and(|c| c != '\n' && c != '\r') {
            self.bump();
        }
    }

    fn line_continuation(&mut self, pos: Pos) -> Result<(), ProgramError> {
        self.bump();
        if self.peek(0) == Some('\r') {
            self.bump();
        }
        match self.bump() {
            Some('\n') => Ok(()),
            _ => Err(syntax_error(pos, "unexpected character after line continuation '\\'")),
        }
    }

    fn name(&mut self, pos: Pos) {
        let mut name = String::new();
        while let Some(c) = self.peek(0).filter(|c| *c == '_' || c.is_alphanumeric()) {
            name.push(c);
            self.bump();
        }
        self.push(Tok::Name(name), pos);
    }

    fn operator(&mut self, pos: Pos) -> Result<(), ProgramError> {
        let matched = OPERATORS.iter().find(|op| op.chars().enumerate().all(|(i, c)| self.peek(i) == Some(c)));
        let Some(&op) = matched else {
            let c = self.peek(0).unwrap_or(' ');
            let mut err = syntax_error(pos, format!("unexpected character {c:?}"));
            err.reference = Some(c.to_string());
            return Err(err);
        };
        for _ in op.chars() {
            self.bump();
        }
        match op {
            "(" | "[" | "{" => self.depth += 1,
            ")" | "]" | "}" => self.depth = self.depth.saturating_sub(1),
            _ => {}
        }
        self.push(Tok::Op(op), pos);
        Ok(())
    }

    fn digits(&mut self, text: &mut String) {
        while let Some(c) = self.peek(0).filter(|c| c.is_ascii_digit() || *c == '_') {
            if c != '_' {
                text.push(c);
            }
            self.bump();
        }
    }

    fn number(&mut self, pos: Pos) -> Result<(), ProgramError> {
        let mut text = String::new();
        let mut float = false;
        self.digits(&mut text);
        if self.peek(0) == Some('.') {
            float = true;
            text.push('.');
            self.bump();
            self.digits(&mut text);
        }
        if matches!(self.peek(0), Some('e' | 'E'))
            && (self.peek(1).is_some_and(|c| c.is_ascii_digit())
                || (matches!(self.peek(1), Some('+' | '-')) && self.peek(2).is_some_and(|c| c.is_ascii_digit())))
        {
            float = true;
            text.push('e');
            self.bump();
            if let Some(sign) = self.peek(0).filter(|c| *c == '+' || *c == '-') {
                text.push(sign);
                self.bump();
            }
            self.digits(&mut text);
        }
        if self.peek(0).is_some_and(|c| c == '_' || c.is_alphanumeric()) {
            return Err(syntax_error(pos, format!("invalid number literal starting {text:?}")));
        }
        let tok = match text.parse::<i64>() {
            Ok(i) if !float => Tok::Int(i),
            _ => Tok::Float(text.parse::<f64>().map_err(|_| syntax_error(pos, format!("invalid number {text:?}")))?),
        };
        self.push(tok, pos);
        Ok(())
    }

    fn string(&mut self, pos: Pos) -> Result<(), ProgramError> {
        let quote = self.peek(0).unwrap_or('\'');
        let triple = self.peek(1) == Some(quote) && self.peek(2) == Some(quote);
        for _ in 0..if triple { 3 } else { 1 } {
            self.bump();
        }
        let mut text = String::new();
        loop {
            let Some(c) = self.peek(0) else { return Err(syntax_error(pos, "unterminated string literal")) };
            if c == quote && (!triple || (self.peek(1) == Some(quote) && self.peek(2) == Some(quote))) {
                for _ in 0..if triple { 3 } else { 1 } {
                    self.bump();
                }
                break;
            }
            if (c == '\n' || c == '\r') && !triple {
                return Err(syntax_error(pos, "unterminated string literal"));
            }
            self.bump();
            if c == '\\' {
                self.escape(&mut text)?;
            } else {
                text.push(c);
            }
        }
        self.push(Tok::Str(text), pos);
        Ok(())
    }

    /// After a backslash inside a string; unknown escapes keep the backslash, as in Python.
    fn escape(&mut self, text: &mut String) -> Result<(), ProgramError> {
        let pos = self.pos();
        let Some(c) = self.bump() else { return Err(syntax_error(pos, "unterminated string literal")) };
        match c {
            'n' => text.push('\n'),
            't' => text.push('\t'),
            'r' => text.push('\r'),
            '0' => text.push('\0'),
            '\\' | '\'' | '"' => text.push(c),
            '\n' => {}
            'x' | 'u' => {
                let len = if c == 'x' { 2 } else { 4 };
                let mut code = 0u32;
                for _ in 0..len {
                    let digit = self.peek(0).and_then(|d| d.to_digit(16));
                    let Some(digit) = digit else { return Err(syntax_error(pos, "invalid escape in string")) };
                    code = code * 16 + digit;
                    self.bump();
                }
                text.push(char::from_u32(code).ok_or_else(|| syntax_error(pos, "invalid escape in string"))?);
            }
            other => {
                text.push('\\');
                text.push(other);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(src: &str) -> Vec<Tok> {
        tokenize(src).expect("lexes").into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn newlines_inside_brackets_do_not_end_statements() {
        let t = toks("A = data(\n 'x',\n)\n\n# c\nB = 1");
        let newlines = t.iter().filter(|t| **t == Tok::Newline).count();
        assert_eq!(newlines, 2, "{t:?}");
    }

    #[test]
    fn numbers_strings_and_operators_lex_with_positions() {
        let tokens = tokenize("x = 1.5e3 ** 2 <= 'a\\'b' # hi\n  \"q\"").expect("lexes");
        let kinds: Vec<&Tok> = tokens.iter().map(|t| &t.tok).collect();
        assert_eq!(kinds[2], &Tok::Float(1500.0));
        assert_eq!(kinds[3], &Tok::Op("**"));
        assert_eq!(kinds[4], &Tok::Int(2));
        assert_eq!(kinds[5], &Tok::Op("<="));
        assert_eq!(kinds[6], &Tok::Str("a'b".into()));
        assert_eq!(tokens[7].tok, Tok::Newline);
        assert_eq!(tokens[8].pos, Pos { line: 2, column: 3 });
        assert_eq!(tokens[8].tok, Tok::Str("q".into()));
    }

    #[test]
    fn escapes_and_triple_quotes_decode() {
        assert_eq!(toks("'\\x41\\u00e9\\n\\q'")[0], Tok::Str("Aé\n\\q".into()));
        assert_eq!(toks("'''a\n'b'''")[0], Tok::Str("a\n'b".into()));
    }

    #[test]
    fn lexing_problems_are_syntax_errors_with_positions() {
        let err = tokenize("A = 1\nB = 'open").unwrap_err();
        assert_eq!((err.error_type, err.line, err.column), (SYNTAX_ERROR, 2, 5));
        let err = tokenize("A = 1 $ 2").unwrap_err();
        assert_eq!((err.line, err.column), (1, 7));
        let err = tokenize("A = 5m").unwrap_err();
        assert_eq!((err.line, err.column), (1, 5));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let tokens = tokenize("'é' + x").expect("lexes");
        assert_eq!(tokens[2].pos, Pos { line: 1, column: 7 });
    }
}
