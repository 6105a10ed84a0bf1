//! The syntax tree the parser builds: statements and expressions, each carrying the position of
//! the token an error about it should point at.
//!
//! Invariant: every expression's `depth` (1 + its deepest child) is at most
//! [`MAX_AST_DEPTH`], so recursive walks and drops of the tree are bounded whatever the input.

pub(crate) use super::lexer::Pos;

/// The deepest expression tree accepted (method chains and operator chains count one level per
/// call or operator).
pub(crate) const MAX_AST_DEPTH: u32 = 100;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Expr {
    pub kind: ExprKind,
    /// Names, literals, calls: where they start; operators: the operator token.
    pub pos: Pos,
    pub depth: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnaryOp {
    Neg,
    Plus,
    Not,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BoolOp {
    And,
    Or,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Kwarg {
    pub name: String,
    pub pos: Pos,
    pub value: Expr,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ExprKind {
    Name(String),
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    None,
    /// `[a, b]`; `(a, b)` tuples are lists too.
    List(Vec<Expr>),
    Attr {
        object: Box<Expr>,
        name: String,
        name_pos: Pos,
    },
    Call {
        function: Box<Expr>,
        args: Vec<Expr>,
        kwargs: Vec<Kwarg>,
    },
    Unary {
        op: UnaryOp,
        operand: Box<Expr>,
    },
    Arith {
        op: ArithOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    Compare {
        op: CmpOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    Logic {
        op: BoolOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
}

impl ExprKind {
    /// The direct children, for depth accounting.
    fn children(&self) -> Vec<&Expr> {
        match self {
            ExprKind::List(items) => items.iter().collect(),
            ExprKind::Attr { object, .. } => vec![object],
            ExprKind::Call { function, args, kwargs } => {
                std::iter::once(&**function).chain(args).chain(kwargs.iter().map(|k| &k.value)).collect()
            }
            ExprKind::Unary { operand, .. } => vec![operand],
            ExprKind::Arith { left, right, .. }
            | ExprKind::Compare { left, right, .. }
            | ExprKind::Logic { left, right, .. } => vec![left, right],
            _ => Vec::new(),
        }
    }
}

impl Expr {
    /// Builds a node, or `None` when it would exceed [`MAX_AST_DEPTH`].
    pub(crate) fn new(kind: ExprKind, pos: Pos) -> Option<Expr> {
        let depth = 1 + kind.children().iter().map(|c| c.depth).max().unwrap_or(0);
        (depth <= MAX_AST_DEPTH).then_some(Expr { kind, pos, depth })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Stmt {
    /// `A = B = expr`: the targets and their positions.
    Assign {
        targets: Vec<(String, Pos)>,
        value: Expr,
    },
    Expr(Expr),
    /// `import x` / `from x import y`: the names bound (accepted and ignored; calling one is
    /// unsupported).
    Import {
        names: Vec<String>,
    },
}
