//! The compiler: runs the statements once at compile time, binding variables to
//! [`Value`]s, so that every name resolves, every call is checked and every stream becomes a node
//! of the [`Plan`]. Recursion follows the syntax tree, whose depth the parser bounds.

use super::ProgramError;
use super::args::{Arg, Args, Value, name_error, type_error};
use super::ast::{Expr, ExprKind, Kwarg, Pos, Stmt};
use super::builtins;
use super::methods;
use super::ops;
use super::parser::unsupported;
use super::plan::Plan;
use std::collections::{HashMap, HashSet};

/// Compile-time state: the plan being built and the names in scope.
#[derive(Debug, Default)]
pub(crate) struct Compiler {
    pub plan: Plan,
    variables: HashMap<String, Value>,
    imported: HashSet<String>,
}

/// Compiles parsed statements into a plan.
pub(crate) fn compile_statements(statements: &[Stmt]) -> Result<Plan, ProgramError> {
    let mut compiler = Compiler::default();
    for statement in statements {
        compiler.statement(statement)?;
    }
    Ok(compiler.plan)
}

fn imported_error(pos: Pos, name: &str) -> ProgramError {
    let msg = format!("'{name}' comes from an imported SignalFlow library, which the simulator does not support");
    unsupported(pos, msg, name)
}

impl Compiler {
    fn statement(&mut self, statement: &Stmt) -> Result<(), ProgramError> {
        match statement {
            Stmt::Assign { targets, value } => {
                let value = self.eval(value)?;
                for (name, _) in targets {
                    self.imported.remove(name);
                    self.variables.insert(name.clone(), value.clone());
                }
            }
            Stmt::Expr(expr) => {
                self.eval(expr)?;
            }
            Stmt::Import { names } => {
                for name in names {
                    self.variables.remove(name);
                    self.imported.insert(name.clone());
                }
            }
        }
        Ok(())
    }

    /// Each kind is handled in its own function, so a recursion level costs little stack even
    /// in debug builds.
    pub(crate) fn eval(&mut self, expr: &Expr) -> Result<Value, ProgramError> {
        match &expr.kind {
            ExprKind::Name(name) => self.lookup(name, expr.pos),
            ExprKind::Int(i) => Ok(Value::Num(*i as f64)),
            ExprKind::Float(f) => Ok(Value::Num(*f)),
            ExprKind::Str(s) => Ok(Value::Str(s.as_str().into())),
            ExprKind::Bool(b) => Ok(Value::Bool(*b)),
            ExprKind::None => Ok(Value::None),
            ExprKind::List(items) => self.list(items),
            ExprKind::Attr { object, name, name_pos } => self.attribute(object, name, *name_pos),
            ExprKind::Call { function, args, kwargs } => self.call(function, args, kwargs),
            ExprKind::Unary { op, operand } => {
                let v = self.eval(operand)?;
                ops::unary(&mut self.plan, *op, v, expr.pos)
            }
            ExprKind::Arith { left, right, .. }
            | ExprKind::Compare { left, right, .. }
            | ExprKind::Logic { left, right, .. } => self.binary(&expr.kind, left, right, expr.pos),
        }
    }

    fn binary(&mut self, kind: &ExprKind, left: &Expr, right: &Expr, pos: Pos) -> Result<Value, ProgramError> {
        let (l, r) = (self.eval(left)?, self.eval(right)?);
        match kind {
            ExprKind::Arith { op, .. } => ops::arith(&mut self.plan, *op, l, r, pos),
            ExprKind::Compare { op, .. } => ops::compare(&mut self.plan, *op, l, r, pos),
            ExprKind::Logic { op, .. } => ops::boolean(&mut self.plan, *op, l, r, pos),
            _ => Err(type_error(pos, "not a binary operator".into(), "")),
        }
    }

    /// `object.name` without a call.
    fn attribute(&mut self, object: &Expr, name: &str, name_pos: Pos) -> Result<Value, ProgramError> {
        if let Some(module) = self.imported_name(object) {
            return Err(imported_error(object.pos, &format!("{module}.{name}")));
        }
        self.eval(object)?;
        Err(unsupported(name_pos, format!("'{name}' must be called, as in {name}(...)"), name))
    }

    fn lookup(&self, name: &str, pos: Pos) -> Result<Value, ProgramError> {
        if let Some(v) = self.variables.get(name) {
            return Ok(v.clone());
        }
        if self.imported.contains(name) {
            return Err(imported_error(pos, name));
        }
        if builtins::is_function(name) {
            let msg = format!("the function '{name}' must be called, as in {name}(...)");
            return Err(unsupported(pos, msg, name));
        }
        Err(name_error(pos, format!("Unknown variable '{name}'"), name))
    }

    /// An imported module name used as `module.attribute`.
    fn imported_name<'e>(&self, object: &'e Expr) -> Option<&'e str> {
        match &object.kind {
            ExprKind::Name(n) if self.imported.contains(n) && !self.variables.contains_key(n) => Some(n),
            _ => None,
        }
    }

    /// Lists hold constants only (`by=[...]`, filter values), which keeps values small.
    fn list(&mut self, items: &[Expr]) -> Result<Value, ProgramError> {
        let mut values = Vec::with_capacity(items.len());
        for item in items {
            let v = self.eval(item)?;
            if matches!(v, Value::Stream(_) | Value::Filter(_) | Value::List(_)) {
                let msg = format!("lists of {}s are not supported; lists may hold constants only", v.type_name());
                return Err(unsupported(item.pos, msg, "["));
            }
            values.push(v);
        }
        Ok(Value::List(values.into()))
    }

    fn arguments(&mut self, args: &[Expr], kwargs: &[Kwarg]) -> Result<Args, ProgramError> {
        let mut out = Args::default();
        for a in args {
            out.positional.push(Arg { value: self.eval(a)?, pos: a.pos });
        }
        for k in kwargs {
            out.keyword.push((k.name.clone(), Arg { value: self.eval(&k.value)?, pos: k.pos }));
        }
        Ok(out)
    }

    /// Functions are checked before their arguments are evaluated (Python reports an unknown
    /// name first); methods after their receiver.
    fn call(&mut self, function: &Expr, args: &[Expr], kwargs: &[Kwarg]) -> Result<Value, ProgramError> {
        match &function.kind {
            ExprKind::Name(name) if !self.variables.contains_key(name) => {
                if self.imported.contains(name) {
                    return Err(imported_error(function.pos, name));
                }
                builtins::check_function(name, function.pos)?;
                let args = self.arguments(args, kwargs)?;
                builtins::call_function(self, name, function.pos, args)
            }
            ExprKind::Attr { object, name, name_pos } => {
                if let Some(module) = self.imported_name(object) {
                    return Err(imported_error(object.pos, &format!("{module}.{name}")));
                }
                let receiver = self.eval(object)?;
                methods::check(&receiver, name, *name_pos)?;
                let args = self.arguments(args, kwargs)?;
                methods::call(self, receiver, name, *name_pos, args)
            }
            _ => {
                let v = self.eval(function)?;
                let msg = format!("a {} is not callable", v.type_name());
                Err(type_error(function.pos, msg, "("))
            }
        }
    }
}
