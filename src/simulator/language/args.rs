//! Compile-time values and call arguments: what an expression evaluates to while the program is
//! compiled (constants, filters, streams), binding positional/keyword arguments to a function's
//! parameters, and converting arguments (strings, numbers, durations, `by=` lists) with
//! `TYPE_ERROR`s that name the function and the argument.

use super::ast::Pos;
use super::filter::Filter;
use super::plan::NodeId;
use super::{NAME_ERROR, ProgramError, TYPE_ERROR};
use std::sync::Arc;

/// The longest duration accepted (about ten years), so time arithmetic cannot overflow.
pub(crate) const MAX_DURATION_MS: i64 = 10 * 366 * 86_400_000;

/// A stream: a node of the plan; `detect` streams only publish events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stream {
    pub node: NodeId,
    pub detect: bool,
}

/// What an expression evaluates to at compile time. Lists hold constants only, so values stay
/// small however they are copied between variables.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Num(f64),
    Str(Arc<str>),
    List(Arc<[Value]>),
    Duration(i64),
    Filter(Arc<Filter>),
    Stream(Stream),
}

impl Value {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Num(n) if n.fract() == 0.0 => "int",
            Value::Num(_) => "float",
            Value::Str(_) => "string",
            Value::List(_) => "list",
            Value::Duration(_) => "duration",
            Value::Filter(_) => "filter",
            Value::Stream(s) if s.detect => "detector stream",
            Value::Stream(_) => "stream",
        }
    }

    /// A plain number, booleans included (`True` is 1, as in Python).
    pub(crate) fn number(&self) -> Option<f64> {
        match self {
            Value::Num(n) => Some(*n),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        }
    }
}

pub(crate) fn error_at(error_type: &'static str, pos: Pos, message: String, reference: Option<&str>) -> ProgramError {
    ProgramError { error_type, message, line: pos.line, column: pos.column, reference: reference.map(str::to_owned) }
}

pub(crate) fn type_error(pos: Pos, message: String, reference: &str) -> ProgramError {
    error_at(TYPE_ERROR, pos, message, Some(reference))
}

pub(crate) fn name_error(pos: Pos, message: String, reference: &str) -> ProgramError {
    error_at(NAME_ERROR, pos, message, Some(reference))
}

/// An evaluated argument and where it was written.
#[derive(Debug, Clone)]
pub(crate) struct Arg {
    pub value: Value,
    pub pos: Pos,
}

/// Evaluated arguments of one call, before binding.
#[derive(Debug, Clone, Default)]
pub(crate) struct Args {
    pub positional: Vec<Arg>,
    pub keyword: Vec<(String, Arg)>,
}

/// Arguments bound to a function's parameters.
#[derive(Debug)]
pub(crate) struct Bound {
    function: String,
    pos: Pos,
    params: &'static [&'static str],
    slots: Vec<Option<Arg>>,
}

/// Binds `args` to `params` as Python would (no `*args`): too many positionals, unknown or
/// repeated keywords are `TYPE_ERROR`s.
pub(crate) fn bind(
    function: &str,
    pos: Pos,
    params: &'static [&'static str],
    args: Args,
) -> Result<Bound, ProgramError> {
    let mut slots: Vec<Option<Arg>> = vec![None; params.len()];
    for (i, arg) in args.positional.into_iter().enumerate() {
        let Some(slot) = slots.get_mut(i) else {
            let msg = format!("{function}() takes at most {} positional argument(s)", params.len());
            return Err(type_error(arg.pos, msg, function));
        };
        *slot = Some(arg);
    }
    for (name, arg) in args.keyword {
        let Some(index) = params.iter().position(|p| *p == name) else {
            let msg = format!("{function}() got an unexpected keyword argument '{name}'");
            return Err(type_error(arg.pos, msg, &name));
        };
        if slots[index].is_some() {
            let msg = format!("{function}() got multiple values for argument '{name}'");
            return Err(type_error(arg.pos, msg, &name));
        }
        slots[index] = Some(arg);
    }
    Ok(Bound { function: function.to_owned(), pos, params, slots })
}

impl Bound {
    /// The argument, unless absent or `None`.
    pub(crate) fn take(&mut self, param: &str) -> Option<Arg> {
        let index = self.params.iter().position(|p| *p == param)?;
        self.slots[index].take().filter(|a| a.value != Value::None)
    }

    pub(crate) fn required(&mut self, param: &str) -> Result<Arg, ProgramError> {
        self.take(param).ok_or_else(|| self.missing(param))
    }

    /// The error for a required argument that was not given, at the call.
    pub(crate) fn missing(&self, param: &str) -> ProgramError {
        type_error(self.pos, format!("{}() missing required argument '{param}'", self.function), param)
    }

    pub(crate) fn wrong(&self, param: &str, arg: &Arg, expected: &str) -> ProgramError {
        let msg = format!("{}() argument '{param}' must be {expected}, not {}", self.function, arg.value.type_name());
        type_error(arg.pos, msg, param)
    }

    pub(crate) fn string(&mut self, param: &str) -> Result<Option<String>, ProgramError> {
        let Some(arg) = self.take(param) else { return Ok(None) };
        match &arg.value {
            Value::Str(s) => Ok(Some(s.to_string())),
            _ => Err(self.wrong(param, &arg, "a string")),
        }
    }

    pub(crate) fn number(&mut self, param: &str) -> Result<Option<f64>, ProgramError> {
        let Some(arg) = self.take(param) else { return Ok(None) };
        match arg.value.number() {
            Some(n) if n.is_finite() => Ok(Some(n)),
            _ => Err(self.wrong(param, &arg, "a finite number")),
        }
    }

    pub(crate) fn boolean(&mut self, param: &str) -> Result<Option<bool>, ProgramError> {
        let Some(arg) = self.take(param) else { return Ok(None) };
        match arg.value {
            Value::Bool(b) => Ok(Some(b)),
            _ => Err(self.wrong(param, &arg, "True or False")),
        }
    }

    /// A non-negative integer.
    pub(crate) fn count(&mut self, param: &str) -> Result<Option<usize>, ProgramError> {
        let Some(arg) = self.take(param) else { return Ok(None) };
        match arg.value.number() {
            Some(n) if n.fract() == 0.0 && (0.0..=1e9).contains(&n) => Ok(Some(n as usize)),
            _ => Err(self.wrong(param, &arg, "a non-negative integer")),
        }
    }

    /// `'5m'`, `duration('5m')` or integer milliseconds.
    pub(crate) fn duration(&mut self, param: &str) -> Result<Option<i64>, ProgramError> {
        let Some(arg) = self.take(param) else { return Ok(None) };
        let ms = match &arg.value {
            Value::Str(s) => parse_duration(s),
            Value::Duration(ms) => Some(*ms),
            Value::Num(n) if n.fract() == 0.0 && (0.0..=MAX_DURATION_MS as f64).contains(n) => Some(*n as i64),
            _ => None,
        };
        let ms = ms.ok_or_else(|| self.wrong(param, &arg, "a duration such as '30s', '5m' or '1h'"))?;
        Ok(Some(ms))
    }

    /// A duration that must be longer than zero.
    pub(crate) fn positive_duration(&mut self, param: &str) -> Result<Option<i64>, ProgramError> {
        let pos = self.slot_pos(param);
        match self.duration(param)? {
            Some(0) => {
                Err(type_error(pos, format!("{}() argument '{param}' must be longer than 0", self.function), param))
            }
            other => Ok(other),
        }
    }

    /// Where an argument was written (the call when it was not).
    pub(crate) fn slot_pos(&self, param: &str) -> Pos {
        let index = self.params.iter().position(|p| *p == param);
        index.and_then(|i| self.slots[i].as_ref()).map_or(self.pos, |a| a.pos)
    }

    /// `by='host'` or `by=['host', 'service']`.
    pub(crate) fn by(&mut self, param: &str) -> Result<Option<Arc<[String]>>, ProgramError> {
        let Some(arg) = self.take(param) else { return Ok(None) };
        let names: Option<Vec<String>> = match &arg.value {
            Value::Str(s) => Some(vec![s.to_string()]),
            Value::List(items) => {
                items.iter().map(|v| if let Value::Str(s) = v { Some(s.to_string()) } else { None }).collect()
            }
            _ => None,
        };
        let mut names = names.ok_or_else(|| self.wrong(param, &arg, "a dimension name or a list of them"))?;
        names.sort();
        names.dedup();
        Ok(Some(names.into()))
    }
}

/// `'100ms'`, `'30s'`, `'5m'`, `'1h'`, `'1d'`, `'1w'`, or a sum such as `'1h30m'`.
pub(crate) fn parse_duration(text: &str) -> Option<i64> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let amount: i64 = rest[..digits].parse().ok()?;
        rest = rest[digits..].trim_start();
        let unit_len = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        let unit: i64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            _ => return None,
        };
        rest = rest[unit_len..].trim_start();
        total = total.checked_add(amount.checked_mul(unit)?)?;
    }
    (total <= MAX_DURATION_MS).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_every_unit_and_reject_garbage() {
        assert_eq!(parse_duration("100ms"), Some(100));
        assert_eq!(parse_duration("30s"), Some(30_000));
        assert_eq!(parse_duration("5m"), Some(300_000));
        assert_eq!(parse_duration("1h"), Some(3_600_000));
        assert_eq!(parse_duration("1d"), Some(86_400_000));
        assert_eq!(parse_duration("1w"), Some(604_800_000));
        assert_eq!(parse_duration("1h30m"), Some(5_400_000));
        for bad in ["", "5", "m", "5x", "-5m", "99999999999999999999s", "1000000w"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn binding_reports_unknown_and_repeated_keywords() {
        let p = Pos { line: 1, column: 1 };
        let arg = |v: Value| Arg { value: v, pos: p };
        let args = Args { positional: vec![arg(Value::Num(1.0))], keyword: vec![("x".into(), arg(Value::Num(2.0)))] };
        let err = bind("f", p, &["x"], args).unwrap_err();
        assert!(err.message.contains("multiple values"), "{}", err.message);
        let args = Args { positional: vec![], keyword: vec![("nope".into(), arg(Value::None))] };
        let err = bind("f", p, &["x"], args).unwrap_err();
        assert_eq!(err.reference.as_deref(), Some("nope"));
    }
}
