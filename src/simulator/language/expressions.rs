//! Expression parsing with Python's precedence (`or` < `and` < `not` <
//! comparisons < `+ -` < `* /` < unary `- +` < `**` < calls and attributes).
//!
//! Every recursive step goes through [`Parser::enter`] (brackets, calls, unary operators) or
//! builds a node whose depth is checked, so recursion stays bounded. Python constructs outside
//! the subset (`lambda`, comprehensions, subscripts, dicts, `%`, `x if c else y`, `in`, …) are
//! `UNSUPPORTED` at their token.

use super::ProgramError;
use super::ast::{ArithOp, BoolOp, CmpOp, Expr, ExprKind, Kwarg, Pos, UnaryOp};
use super::lexer::{Tok, syntax_error};
use super::parser::{KEYWORDS, Parser, STATEMENT_KEYWORDS, unsupported};

type ExprResult = Result<Expr, ProgramError>;

/// A binary operator and its binding strength.
#[derive(Debug, Clone, Copy)]
enum Binary {
    Logic(BoolOp),
    Compare(CmpOp),
    Arith(ArithOp),
}

/// Binding strengths (higher binds tighter); prefix `not` sits between `and` and comparisons.
const OR: u8 = 1;
const AND: u8 = 2;
const NOT: u8 = 3;
const COMPARE: u8 = 4;
const SUM: u8 = 5;
const PRODUCT: u8 = 6;

impl Parser<'_> {
    pub(crate) fn expr(&mut self) -> Result<Expr, ProgramError> {
        self.enter(self.peek().pos)?;
        let expr = self.binary(OR)?;
        if self.is_name("if") {
            let pos = self.peek().pos;
            return Err(unsupported(pos, "conditional expressions (x if c else y) are not supported", "if"));
        }
        self.nesting -= 1;
        Ok(expr)
    }

    /// The binary operator at the cursor, if any; operators outside the subset are errors.
    fn binary_op(&self) -> Result<Option<(Binary, u8)>, ProgramError> {
        let token = self.peek();
        let found = match &token.tok {
            Tok::Name(w) if w == "or" => (Binary::Logic(BoolOp::Or), OR),
            Tok::Name(w) if w == "and" => (Binary::Logic(BoolOp::And), AND),
            Tok::Op("<") => (Binary::Compare(CmpOp::Lt), COMPARE),
            Tok::Op("<=") => (Binary::Compare(CmpOp::Le), COMPARE),
            Tok::Op(">") => (Binary::Compare(CmpOp::Gt), COMPARE),
            Tok::Op(">=") => (Binary::Compare(CmpOp::Ge), COMPARE),
            Tok::Op("==") => (Binary::Compare(CmpOp::Eq), COMPARE),
            Tok::Op("!=") => (Binary::Compare(CmpOp::Ne), COMPARE),
            Tok::Op("+") => (Binary::Arith(ArithOp::Add), SUM),
            Tok::Op("-") => (Binary::Arith(ArithOp::Sub), SUM),
            Tok::Op("*") => (Binary::Arith(ArithOp::Mul), PRODUCT),
            Tok::Op("/") => (Binary::Arith(ArithOp::Div), PRODUCT),
            Tok::Name(w) if w == "in" || w == "is" || (w == "not" && self.peek_at(1).tok == Tok::Name("in".into())) => {
                return Err(unsupported(token.pos, format!("the '{w}' operator is not supported"), w));
            }
            Tok::Op(op @ ("//" | "%" | "@" | "&" | "|" | "^" | "<<" | ">>")) => {
                return Err(unsupported(token.pos, format!("the '{op}' operator is not supported"), op));
            }
            _ => return Ok(None),
        };
        Ok(Some(found))
    }

    /// Precedence climbing over the binary operators binding at least as tightly as `min`
    /// (left-associative); `a < b < c` means `a < b and b < c`, as in Python.
    fn binary(&mut self, min: u8) -> ExprResult {
        let mut left = self.prefix(min)?;
        // The right operand of the previous comparison, while a comparison chain continues.
        let mut compared: Option<Expr> = None;
        while let Some((op, level)) = self.binary_op()? {
            if level < min {
                break;
            }
            let pos = self.advance().pos;
            let right = self.binary(level + 1)?;
            let previous = compared.take();
            left = match op {
                Binary::Logic(op) => {
                    self.node(ExprKind::Logic { op, left: Box::new(left), right: Box::new(right) }, pos)?
                }
                Binary::Arith(op) => {
                    self.node(ExprKind::Arith { op, left: Box::new(left), right: Box::new(right) }, pos)?
                }
                Binary::Compare(op) => {
                    compared = Some(right.clone());
                    self.comparison(op, left, previous, right, pos)?
                }
            };
        }
        Ok(left)
    }

    /// `left OP right`, or with a chain in progress, `left and (previous OP right)`.
    fn comparison(&self, op: CmpOp, left: Expr, previous: Option<Expr>, right: Expr, pos: Pos) -> ExprResult {
        let Some(previous) = previous else {
            return self.node(ExprKind::Compare { op, left: Box::new(left), right: Box::new(right) }, pos);
        };
        let next = self.node(ExprKind::Compare { op, left: Box::new(previous), right: Box::new(right) }, pos)?;
        self.node(ExprKind::Logic { op: BoolOp::And, left: Box::new(left), right: Box::new(next) }, pos)
    }

    /// `not x` (where the context allows it: `a + not b` is not Python) or a unary expression.
    fn prefix(&mut self, min: u8) -> ExprResult {
        if !self.is_name("not") {
            return self.unary();
        }
        if min > NOT {
            return Err(self.unexpected());
        }
        let pos = self.advance().pos;
        self.enter(pos)?;
        let operand = self.binary(NOT)?;
        self.nesting -= 1;
        self.node(ExprKind::Unary { op: UnaryOp::Not, operand: Box::new(operand) }, pos)
    }

    fn unary(&mut self) -> ExprResult {
        let token = self.peek();
        let op = match token.tok {
            Tok::Op("-") => UnaryOp::Neg,
            Tok::Op("+") => UnaryOp::Plus,
            Tok::Op("~") => return Err(unsupported(token.pos, "the '~' operator is not supported", "~")),
            _ => return self.power(),
        };
        self.advance();
        self.enter(token.pos)?;
        let operand = self.unary()?;
        self.nesting -= 1;
        self.node(ExprKind::Unary { op, operand: Box::new(operand) }, token.pos)
    }

    /// `a ** -b`: the exponent may carry a sign; `-a ** b` is `-(a ** b)`.
    fn power(&mut self) -> ExprResult {
        let base = self.primary()?;
        if !self.is_op("**") {
            return Ok(base);
        }
        let pos = self.advance().pos;
        self.enter(pos)?;
        let exponent = self.unary()?;
        self.nesting -= 1;
        self.node(ExprKind::Arith { op: ArithOp::Pow, left: Box::new(base), right: Box::new(exponent) }, pos)
    }

    fn primary(&mut self) -> ExprResult {
        let mut expr = self.atom()?;
        loop {
            let token = self.peek();
            match token.tok {
                Tok::Op(".") => {
                    self.advance();
                    let name_pos = self.peek().pos;
                    let name = self.identifier()?;
                    let kind = ExprKind::Attr { object: Box::new(expr), name, name_pos };
                    expr = self.node(kind, name_pos)?;
                }
                Tok::Op("(") => {
                    self.advance();
                    self.enter(token.pos)?;
                    let (args, kwargs) = self.arguments()?;
                    self.nesting -= 1;
                    let pos = expr.pos;
                    expr = self.node(ExprKind::Call { function: Box::new(expr), args, kwargs }, pos)?;
                }
                Tok::Op("[") => return Err(unsupported(token.pos, "subscripts ([...]) are not supported", "[")),
                _ => return Ok(expr),
            }
        }
    }

    /// After `(`: positional then keyword arguments, up to and including `)`.
    fn arguments(&mut self) -> Result<(Vec<Expr>, Vec<Kwarg>), ProgramError> {
        let mut args = Vec::new();
        let mut kwargs: Vec<Kwarg> = Vec::new();
        while !self.eat_op(")") {
            let token = self.peek();
            if let Tok::Op(star @ ("*" | "**")) = token.tok {
                let what = if star == "*" { "*args" } else { "**kwargs" };
                return Err(unsupported(token.pos, format!("{what} in calls is not supported"), star));
            }
            let keyword = matches!((&token.tok, &self.peek_at(1).tok), (Tok::Name(_), Tok::Op("=")));
            if keyword {
                let name = self.identifier()?;
                self.advance();
                kwargs.push(Kwarg { name, pos: token.pos, value: self.expr()? });
            } else if !kwargs.is_empty() {
                return Err(syntax_error(token.pos, "positional argument follows keyword argument"));
            } else {
                args.push(self.expr()?);
            }
            self.reject_comprehension()?;
            if !self.eat_op(",") {
                self.expect_op(")")?;
                break;
            }
        }
        Ok((args, kwargs))
    }

    fn reject_comprehension(&self) -> Result<(), ProgramError> {
        if self.is_name("for") {
            return Err(unsupported(self.peek().pos, "comprehensions are not supported", "for"));
        }
        Ok(())
    }

    fn atom(&mut self) -> ExprResult {
        let token = self.peek();
        let kind = match &token.tok {
            Tok::Int(i) => ExprKind::Int(*i),
            Tok::Float(f) => ExprKind::Float(*f),
            Tok::Str(_) => return self.strings(),
            Tok::Name(name) => self.name_atom(name, token.pos)?,
            Tok::Op("(") => return self.parenthesized(),
            Tok::Op("[") => return self.list(),
            Tok::Op("{") => return Err(unsupported(token.pos, "dict and set literals are not supported", "{")),
            _ => return Err(self.unexpected()),
        };
        self.advance();
        self.node(kind, token.pos)
    }

    fn name_atom(&self, name: &str, pos: Pos) -> Result<ExprKind, ProgramError> {
        Ok(match name {
            "True" => ExprKind::Bool(true),
            "False" => ExprKind::Bool(false),
            "None" => ExprKind::None,
            "lambda" | "yield" | "await" => {
                return Err(unsupported(pos, format!("'{name}' expressions are not supported"), name));
            }
            _ if STATEMENT_KEYWORDS.contains(&name) || KEYWORDS.contains(&name) => return Err(self.unexpected()),
            _ => ExprKind::Name(name.to_owned()),
        })
    }

    /// Adjacent string literals concatenate, as in Python.
    fn strings(&mut self) -> ExprResult {
        let pos = self.peek().pos;
        let mut text = String::new();
        while let Tok::Str(s) = &self.peek().tok {
            text.push_str(s);
            self.advance();
        }
        self.node(ExprKind::Str(text), pos)
    }

    /// `(expr)`, `()` or a tuple `(a, b)` (a list for the evaluator).
    fn parenthesized(&mut self) -> ExprResult {
        let open = self.advance().pos;
        if self.eat_op(")") {
            return self.node(ExprKind::List(Vec::new()), open);
        }
        let first = self.expr()?;
        self.reject_comprehension()?;
        if self.eat_op(")") {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.eat_op(",") {
            if self.is_op(")") {
                break;
            }
            items.push(self.expr()?);
        }
        self.expect_op(")")?;
        self.node(ExprKind::List(items), open)
    }

    fn list(&mut self) -> ExprResult {
        let open = self.advance().pos;
        let mut items = Vec::new();
        while !self.eat_op("]") {
            items.push(self.expr()?);
            self.reject_comprehension()?;
            if !self.eat_op(",") {
                self.expect_op("]")?;
                break;
            }
        }
        self.node(ExprKind::List(items), open)
    }
}
