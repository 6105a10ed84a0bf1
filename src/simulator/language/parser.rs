//! The parser: tokens → statements (assignments, expression statements, imports), plus the
//! token cursor the expression parser (`expressions.rs`) shares.
//!
//! Recursion is bounded: bracket/unary nesting by [`MAX_NESTING`] and tree depth by
//! [`MAX_AST_DEPTH`](super::ast::MAX_AST_DEPTH), so hostile input gets an error, not a stack
//! overflow. Statements outside the subset (`def`, `if`, `for`, `return`, augmented assignment,
//! …) are reported as `UNSUPPORTED` at their token, not as syntax errors.

use super::ast::{Expr, ExprKind, Pos, Stmt};
use super::lexer::{Tok, Token, syntax_error};
use super::{ProgramError, UNSUPPORTED};

/// Deepest nesting of brackets, calls and unary operators.
pub(crate) const MAX_NESTING: u32 = 32;

/// Statement keywords outside the subset.
pub(super) const STATEMENT_KEYWORDS: &[&str] = &[
    "def", "if", "elif", "else", "for", "while", "return", "assert", "class", "try", "except", "finally", "with",
    "pass", "break", "continue", "raise", "del", "global", "nonlocal", "yield", "async", "await",
];

/// Other Python keywords that cannot start an expression.
pub(super) const KEYWORDS: &[&str] = &["and", "or", "not", "in", "is", "as", "from", "import"];

pub(crate) fn unsupported(pos: Pos, message: impl Into<String>, reference: &str) -> ProgramError {
    ProgramError {
        error_type: UNSUPPORTED,
        message: message.into(),
        line: pos.line,
        column: pos.column,
        reference: Some(reference.to_owned()),
    }
}

/// Parses a token stream ending in `Eof` (as [`tokenize`](super::lexer::tokenize) makes it).
pub(crate) fn parse(tokens: &[Token]) -> Result<Vec<Stmt>, ProgramError> {
    let mut parser = Parser { tokens, at: 0, nesting: 0 };
    parser.program()
}

pub(super) struct Parser<'a> {
    tokens: &'a [Token],
    at: usize,
    /// Current depth of brackets, calls and unary operators.
    pub(super) nesting: u32,
}

const EOF: Token = Token { tok: Tok::Eof, pos: Pos { line: 1, column: 1 } };

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Name(n) => format!("'{n}'"),
        Tok::Int(_) | Tok::Float(_) => "number".into(),
        Tok::Str(_) => "string".into(),
        Tok::Op(op) => format!("'{op}'"),
        Tok::Newline => "end of line".into(),
        Tok::Eof => "end of program".into(),
    }
}

impl<'a> Parser<'a> {
    pub(super) fn peek(&self) -> &'a Token {
        self.tokens.get(self.at).or(self.tokens.last()).unwrap_or(&EOF)
    }

    pub(super) fn peek_at(&self, ahead: usize) -> &'a Token {
        self.tokens.get(self.at + ahead).or(self.tokens.last()).unwrap_or(&EOF)
    }

    pub(super) fn advance(&mut self) -> &'a Token {
        let token = self.peek();
        if self.at < self.tokens.len() {
            self.at += 1;
        }
        token
    }

    pub(super) fn is_op(&self, op: &str) -> bool {
        matches!(&self.peek().tok, Tok::Op(o) if *o == op)
    }

    pub(super) fn is_name(&self, name: &str) -> bool {
        matches!(&self.peek().tok, Tok::Name(n) if n == name)
    }

    pub(super) fn eat_op(&mut self, op: &str) -> bool {
        let found = self.is_op(op);
        if found {
            self.advance();
        }
        found
    }

    pub(super) fn unexpected(&self) -> ProgramError {
        let token = self.peek();
        let mut err = syntax_error(token.pos, format!("unexpected {}", describe(&token.tok)));
        if let Tok::Name(n) | Tok::Str(n) = &token.tok {
            err.reference = Some(n.clone());
        } else if let Tok::Op(op) = &token.tok {
            err.reference = Some((*op).to_owned());
        }
        err
    }

    pub(super) fn expect_op(&mut self, op: &str) -> Result<Pos, ProgramError> {
        if self.is_op(op) { Ok(self.advance().pos) } else { Err(self.unexpected()) }
    }

    pub(super) fn node(&self, kind: ExprKind, pos: Pos) -> Result<Expr, ProgramError> {
        Expr::new(kind, pos).ok_or_else(|| syntax_error(pos, "expression nested too deeply"))
    }

    pub(super) fn enter(&mut self, pos: Pos) -> Result<(), ProgramError> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(syntax_error(pos, format!("expression nested too deeply (more than {MAX_NESTING} levels)")));
        }
        Ok(())
    }

    fn program(&mut self) -> Result<Vec<Stmt>, ProgramError> {
        let mut statements = Vec::new();
        loop {
            match self.peek().tok {
                Tok::Eof => return Ok(statements),
                Tok::Newline => {
                    self.advance();
                }
                _ => self.statement_line(&mut statements)?,
            }
        }
    }

    /// `simple (';' simple)* [';']` and the end of the line.
    fn statement_line(&mut self, out: &mut Vec<Stmt>) -> Result<(), ProgramError> {
        out.push(self.simple_statement()?);
        while self.eat_op(";") {
            if matches!(self.peek().tok, Tok::Newline | Tok::Eof) {
                break;
            }
            out.push(self.simple_statement()?);
        }
        match self.peek().tok {
            Tok::Newline | Tok::Eof => Ok(()),
            _ => Err(self.unexpected()),
        }
    }

    fn simple_statement(&mut self) -> Result<Stmt, ProgramError> {
        let token = self.peek();
        if let Tok::Name(word) = &token.tok {
            if STATEMENT_KEYWORDS.contains(&word.as_str()) {
                let msg = format!("'{word}' statements are not supported by the simulator");
                return Err(unsupported(token.pos, msg, word));
            }
            match word.as_str() {
                "import" => return self.import(),
                "from" => return self.import_from(),
                _ => {}
            }
        }
        let first = self.expr()?;
        if !self.is_op("=") {
            return self.expression_statement(first);
        }
        let mut targets = Vec::new();
        let mut value = first;
        while self.eat_op("=") {
            let ExprKind::Name(name) = &value.kind else {
                return Err(syntax_error(value.pos, "cannot assign to this expression"));
            };
            targets.push((name.clone(), value.pos));
            value = self.expr()?;
        }
        Ok(Stmt::Assign { targets, value })
    }

    fn expression_statement(&mut self, expr: Expr) -> Result<Stmt, ProgramError> {
        let token = self.peek();
        if let Tok::Op(op) = token.tok {
            if op.len() >= 2 && op.ends_with('=') && !matches!(op, "==" | "<=" | ">=" | "!=") {
                return Err(unsupported(token.pos, format!("augmented assignment '{op}' is not supported"), op));
            }
            if op == "," {
                return Err(unsupported(token.pos, "tuple assignment and bare tuples are not supported", op));
            }
        }
        Ok(Stmt::Expr(expr))
    }

    fn dotted_name(&mut self) -> Result<String, ProgramError> {
        let mut name = self.identifier()?;
        while self.eat_op(".") {
            name.push('.');
            name.push_str(&self.identifier()?);
        }
        Ok(name)
    }

    pub(super) fn identifier(&mut self) -> Result<String, ProgramError> {
        match &self.peek().tok {
            Tok::Name(n) => {
                self.advance();
                Ok(n.clone())
            }
            _ => Err(self.unexpected()),
        }
    }

    /// `import a.b [as c], …`: binds `c`, or `a`.
    fn import(&mut self) -> Result<Stmt, ProgramError> {
        self.advance();
        let mut names = Vec::new();
        loop {
            let dotted = self.dotted_name()?;
            let bound = dotted.split('.').next().unwrap_or_default().to_owned();
            names.push(if self.is_name("as") { self.alias()? } else { bound });
            if !self.eat_op(",") {
                return Ok(Stmt::Import { names });
            }
        }
    }

    fn alias(&mut self) -> Result<String, ProgramError> {
        self.advance();
        self.identifier()
    }

    /// `from a.b import x [as y], …`, `from a import (x, y)`, `from a import *`.
    fn import_from(&mut self) -> Result<Stmt, ProgramError> {
        self.advance();
        while self.eat_op(".") {}
        if !self.is_name("import") {
            self.dotted_name()?;
        }
        if !self.is_name("import") {
            return Err(self.unexpected());
        }
        self.advance();
        if self.eat_op("*") {
            return Ok(Stmt::Import { names: Vec::new() });
        }
        let parenthesized = self.eat_op("(");
        let mut names = Vec::new();
        loop {
            let name = self.identifier()?;
            names.push(if self.is_name("as") { self.alias()? } else { name });
            if !self.eat_op(",") || (parenthesized && self.is_op(")")) {
                break;
            }
        }
        if parenthesized {
            self.expect_op(")")?;
        }
        Ok(Stmt::Import { names })
    }
}
