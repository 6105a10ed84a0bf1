//! What a client asks to compute, validated and normalised: the program, the time range
//! (epoch ms, RFC 3339, or relative to now such as `-15m`), durations (ms or `10s`), and the
//! key under which identical live requests share one upstream job.

use crate::upstream::ExecuteSpec;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The service's limit on `maxDelay`.
pub const MAX_DELAY_LIMIT_MS: i64 = 900_000;
/// The finest resolution accepted: one second.
pub const MIN_RESOLUTION_MS: i64 = 1_000;
/// The coarsest resolution accepted: one day.
pub const MAX_RESOLUTION_MS: i64 = 86_400_000;
/// How far from now `start` and `stop` may lie, either way: ten years.
pub const MAX_TIME_OFFSET_MS: i64 = 10 * 366 * 86_400_000;

/// A point in time as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeSpec {
    /// Epoch milliseconds.
    Absolute(i64),
    /// Milliseconds from "now" at the time the computation starts (negative = past).
    Relative(i64),
}

impl TimeSpec {
    /// `1700000000000`, `"2023-11-14T22:13:20Z"`, `"now"`, `"-1h"`, `"now-15m"`, `"+5m"`.
    pub fn parse(value: &Value) -> Result<Self, String> {
        match value {
            Value::Number(n) => {
                n.as_i64().map(TimeSpec::Absolute).ok_or_else(|| format!("{n} is not epoch milliseconds"))
            }
            Value::String(s) => Self::parse_str(s),
            other => Err(format!("{other} is not a time (epoch ms, RFC 3339, or relative like -15m)")),
        }
    }

    pub fn parse_str(text: &str) -> Result<Self, String> {
        let s = text.trim();
        if let Ok(ms) = s.parse::<i64>() {
            return Ok(TimeSpec::Absolute(ms));
        }
        let relative = s.strip_prefix("now").map(str::trim);
        match relative {
            Some("") => return Ok(TimeSpec::Relative(0)),
            Some(rest) => return signed_duration(rest).map(TimeSpec::Relative),
            None => {}
        }
        if s.starts_with('-') || s.starts_with('+') {
            return signed_duration(s).map(TimeSpec::Relative);
        }
        OffsetDateTime::parse(s, &Rfc3339)
            .map(|t| TimeSpec::Absolute((t.unix_timestamp_nanos() / 1_000_000) as i64))
            .map_err(|_| format!("{text:?} is not a time (epoch ms, RFC 3339, or relative like -15m)"))
    }

    pub fn resolve(self, now_ms: i64) -> i64 {
        match self {
            TimeSpec::Absolute(ms) => ms,
            TimeSpec::Relative(offset) => now_ms.saturating_add(offset),
        }
    }
}

fn signed_duration(s: &str) -> Result<i64, String> {
    let (sign, body) = match s.as_bytes().first() {
        Some(b'-') => (-1, &s[1..]),
        Some(b'+') => (1, &s[1..]),
        _ => return Err(format!("{s:?}: a relative time starts with - or +")),
    };
    let d = humantime::parse_duration(body.trim()).map_err(|e| format!("{s:?}: {e}"))?;
    i64::try_from(d.as_millis()).map(|ms| sign * ms).map_err(|_| format!("{s:?} is too long"))
}

/// A duration as milliseconds (a number) or human-readable (`"10s"`, `"1m30s"`).
pub fn parse_duration_ms(value: &Value) -> Result<i64, String> {
    match value {
        Value::Number(n) => {
            n.as_i64().filter(|ms| *ms >= 0).ok_or_else(|| format!("{n} is not a number of milliseconds"))
        }
        Value::String(s) => {
            if let Ok(ms) = s.trim().parse::<i64>() {
                return if ms >= 0 { Ok(ms) } else { Err(format!("{s:?} is negative")) };
            }
            let d = humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?}: {e}"))?;
            i64::try_from(d.as_millis()).map_err(|_| format!("{s:?} is too long"))
        }
        other => Err(format!("{other} is not a duration (ms or like \"10s\")")),
    }
}

/// A validated computation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputationSpec {
    /// Normalised: line endings `\n`, trailing spaces and surrounding blank lines removed.
    pub program: String,
    pub start: Option<TimeSpec>,
    pub stop: Option<TimeSpec>,
    pub resolution_ms: Option<i64>,
    pub max_delay_ms: Option<i64>,
    pub immediate: bool,
    pub timezone: Option<String>,
}

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SpecError {
    pub field: &'static str,
    pub problem: String,
    pub kind: SpecErrorKind,
}

/// What is wrong with the field, for the answer's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecErrorKind {
    /// Missing, malformed or out of range.
    Invalid,
    /// The program is over the size limit.
    ProgramTooLarge,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> SpecError {
    SpecError { field, problem: problem.into(), kind: SpecErrorKind::Invalid }
}

/// The raw fields of a request, however they arrived (JSON body or query string).
#[derive(Debug, Clone, Default)]
pub struct RawSpec {
    pub program: Option<String>,
    pub start: Option<Value>,
    pub stop: Option<Value>,
    pub resolution: Option<Value>,
    pub max_delay: Option<Value>,
    pub immediate: Option<bool>,
    pub timezone: Option<String>,
}

impl ComputationSpec {
    /// Validates every field; the first problem wins. `max_program_bytes` bounds the program.
    pub fn from_raw(raw: RawSpec, max_program_bytes: usize, now_ms: i64) -> Result<Self, SpecError> {
        let program = normalize_program(raw.program.as_deref().unwrap_or(""));
        if program.is_empty() {
            return Err(invalid("program", "is required and must not be empty"));
        }
        if program.len() > max_program_bytes {
            let problem = format!("is {} bytes; the limit is {max_program_bytes}", program.len());
            return Err(SpecError { kind: SpecErrorKind::ProgramTooLarge, ..invalid("program", problem) });
        }
        let time = |field, v: Option<Value>| {
            v.filter(|v| !v.is_null()).map(|v| TimeSpec::parse(&v).map_err(|p| invalid(field, p))).transpose()
        };
        let start = time("start", raw.start)?;
        let stop = time("stop", raw.stop)?;
        for (field, t) in [("start", start), ("stop", stop)] {
            if let Some(t) = t
                && t.resolve(now_ms).abs_diff(now_ms) > MAX_TIME_OFFSET_MS as u64
            {
                return Err(invalid(field, "must be within 10 years of now"));
            }
        }
        if let (Some(a), Some(b)) = (start, stop)
            && a.resolve(now_ms) >= b.resolve(now_ms)
        {
            return Err(invalid("stop", "must be after start"));
        }
        let duration = |field, v: Option<Value>| {
            v.filter(|v| !v.is_null()).map(|v| parse_duration_ms(&v).map_err(|p| invalid(field, p))).transpose()
        };
        let resolution_ms = duration("resolution", raw.resolution)?;
        if resolution_ms.is_some_and(|ms| !(MIN_RESOLUTION_MS..=MAX_RESOLUTION_MS).contains(&ms)) {
            return Err(invalid(
                "resolution",
                format!("must be from {MIN_RESOLUTION_MS} ms (1s) to {MAX_RESOLUTION_MS} ms (1d)"),
            ));
        }
        let max_delay_ms = duration("maxDelay", raw.max_delay)?;
        if max_delay_ms.is_some_and(|ms| ms > MAX_DELAY_LIMIT_MS) {
            return Err(invalid("maxDelay", format!("must be from 0 to {MAX_DELAY_LIMIT_MS} ms (15m)")));
        }
        let timezone = raw.timezone.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
        if let Some(tz) = &timezone
            && (tz.len() > 64 || jiff::tz::TimeZone::get(tz).is_err())
        {
            return Err(invalid("timezone", format!("{tz:?} is not a time zone of the IANA database")));
        }
        Ok(ComputationSpec {
            program,
            start,
            stop,
            resolution_ms,
            max_delay_ms,
            immediate: raw.immediate.unwrap_or(false),
            timezone,
        })
    }

    /// A live computation runs until stopped.
    pub fn is_live(&self) -> bool {
        self.stop.is_none()
    }

    /// The upstream request, with relative times resolved against `now_ms`.
    pub fn to_execute(&self, now_ms: i64) -> ExecuteSpec {
        ExecuteSpec {
            program: self.program.clone(),
            start: self.start.map(|t| t.resolve(now_ms)),
            stop: self.stop.map(|t| t.resolve(now_ms)),
            resolution_ms: self.resolution_ms,
            max_delay_ms: self.max_delay_ms,
            immediate: self.immediate,
            timezone: self.timezone.clone(),
        }
    }

    /// The sharing key. A bounded query is keyed by its absolute range; a live one keeps a
    /// relative start relative, so "the last 15 minutes and onwards" asked twice is shared.
    pub fn key(&self, tenant: &str, now_ms: i64) -> SpecKey {
        let time = |t: Option<TimeSpec>| match (t, self.is_live()) {
            (Some(TimeSpec::Relative(r)), true) => format!("r{r}"),
            (Some(t), _) => format!("a{}", t.resolve(now_ms)),
            (None, _) => "-".to_owned(),
        };
        SpecKey(format!(
            "{tenant}\u{0}{}\u{0}{}\u{0}{}\u{0}{:?}\u{0}{:?}\u{0}{}\u{0}{}",
            self.program,
            time(self.start),
            time(self.stop),
            self.resolution_ms,
            self.max_delay_ms,
            self.immediate,
            self.timezone.as_deref().unwrap_or("")
        ))
    }
}

/// The normalised identity of a request, for sharing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpecKey(String);

impl SpecKey {
    /// The key's text (tenant first), for deriving fleet-wide ids.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `\r\n` → `\n`, trailing whitespace per line removed, surrounding blank lines removed.
pub fn normalize_program(program: &str) -> String {
    let lines: Vec<&str> = program.split('\n').map(|l| l.trim_end()).collect();
    lines.join("\n").trim_matches('\n').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_in_every_documented_form() {
        assert_eq!(TimeSpec::parse(&json!(1_700_000_000_000i64)), Ok(TimeSpec::Absolute(1_700_000_000_000)));
        assert_eq!(TimeSpec::parse(&json!("2023-11-14T22:13:20Z")), Ok(TimeSpec::Absolute(1_700_000_000_000)));
        assert_eq!(TimeSpec::parse(&json!("2023-11-14T23:13:20.5+01:00")), Ok(TimeSpec::Absolute(1_700_000_000_500)));
        assert_eq!(TimeSpec::parse(&json!("-1h")), Ok(TimeSpec::Relative(-3_600_000)));
        assert_eq!(TimeSpec::parse(&json!("now-15m")), Ok(TimeSpec::Relative(-900_000)));
        assert_eq!(TimeSpec::parse(&json!("now")), Ok(TimeSpec::Relative(0)));
        assert_eq!(TimeSpec::parse(&json!("+5m")), Ok(TimeSpec::Relative(300_000)));
        for bad in [json!("yesterday"), json!("-1x"), json!(true), json!("2023-13-01T00:00:00Z")] {
            assert!(TimeSpec::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_as_ms_or_text() {
        assert_eq!(parse_duration_ms(&json!(1000)), Ok(1000));
        assert_eq!(parse_duration_ms(&json!("10s")), Ok(10_000));
        assert_eq!(parse_duration_ms(&json!("1m30s")), Ok(90_000));
        assert_eq!(parse_duration_ms(&json!("250")), Ok(250));
        assert!(parse_duration_ms(&json!(-5)).is_err());
        assert!(parse_duration_ms(&json!("soon")).is_err());
    }

    fn raw(program: &str) -> RawSpec {
        RawSpec { program: Some(program.into()), ..Default::default() }
    }

    #[test]
    fn validation_names_the_field() {
        let err = |r: RawSpec| ComputationSpec::from_raw(r, 100, 0).unwrap_err().field;
        assert_eq!(err(raw("  \n ")), "program");
        assert_eq!(err(raw(&"x".repeat(101))), "program");
        assert_eq!(err(RawSpec { start: Some(json!("bad")), ..raw("p") }), "start");
        assert_eq!(err(RawSpec { start: Some(json!(10)), stop: Some(json!(5)), ..raw("p") }), "stop");
        assert_eq!(err(RawSpec { resolution: Some(json!("fast")), ..raw("p") }), "resolution");
        assert_eq!(err(RawSpec { max_delay: Some(json!("1h")), ..raw("p") }), "maxDelay");
        assert_eq!(err(RawSpec { timezone: Some("Europe/Paris; DROP".into()), ..raw("p") }), "timezone");
        assert_eq!(err(RawSpec { timezone: Some("Mars/Olympus".into()), ..raw("p") }), "timezone");
        assert_eq!(err(RawSpec { resolution: Some(json!(1e15)), ..raw("p") }), "resolution");
        assert_eq!(err(RawSpec { resolution: Some(json!(999)), ..raw("p") }), "resolution");
        assert_eq!(err(RawSpec { resolution: Some(json!("2d")), ..raw("p") }), "resolution");
        assert_eq!(err(RawSpec { start: Some(json!("-11y")), ..raw("p") }), "start");
        assert_eq!(err(RawSpec { stop: Some(json!(i64::MAX)), ..raw("p") }), "stop");
    }

    #[test]
    fn bounds_are_inclusive_and_real_time_zones_pass() {
        let ok = |r: RawSpec| ComputationSpec::from_raw(r, 100, 1_700_000_000_000).unwrap();
        assert_eq!(ok(RawSpec { resolution: Some(json!("1s")), ..raw("p") }).resolution_ms, Some(1_000));
        assert_eq!(ok(RawSpec { resolution: Some(json!("1d")), ..raw("p") }).resolution_ms, Some(86_400_000));
        assert_eq!(ok(RawSpec { max_delay: Some(json!(0)), ..raw("p") }).max_delay_ms, Some(0));
        assert_eq!(ok(RawSpec { max_delay: Some(json!("15m")), ..raw("p") }).max_delay_ms, Some(900_000));
        for tz in ["UTC", "Europe/Paris", "America/Argentina/Buenos_Aires", "Etc/GMT+5"] {
            assert_eq!(ok(RawSpec { timezone: Some(tz.into()), ..raw("p") }).timezone.as_deref(), Some(tz));
        }
        assert!(ok(RawSpec { start: Some(json!("-9y")), stop: Some(json!("+9y")), ..raw("p") }).start.is_some());
    }

    #[test]
    fn identical_live_requests_share_a_key_and_bounded_ones_key_by_absolute_range() {
        let live =
            |p: &str| ComputationSpec::from_raw(RawSpec { start: Some(json!("-15m")), ..raw(p) }, 100, 0).unwrap();
        assert_eq!(live("data('x').publish()\r\n").key("t", 0), live("data('x').publish()   ").key("t", 60_000));
        assert_ne!(live("data('x').publish()").key("t", 0), live("data('x').publish()").key("u", 0));
        let bounded = ComputationSpec::from_raw(
            RawSpec { start: Some(json!("-1h")), stop: Some(json!("now")), ..raw("p") },
            100,
            0,
        )
        .unwrap();
        assert_ne!(bounded.key("t", 0), bounded.key("t", 60_000));
        assert_eq!(bounded.to_execute(3_600_000).start, Some(0));
    }
}
