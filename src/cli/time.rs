//! Times on the command line: a duration (`90s`, `15m`, `24h`, `30d`, `1w`,
//! or in words `1 week`, `3 days`), an RFC 3339 time, and for times in the
//! past the WOPR CLI's `1 week ago`.

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::CliError;

/// `value` as a duration: a whole number and one unit of s, m, h, d or w.
pub fn parse_duration(value: &str) -> Result<SignedDuration, CliError> {
    let invalid = || {
        CliError::Usage(format!(
            "{value:?} is not a duration: use a number and a unit of s, m, h, d or w (90s, 15m, 24h, 30d, 1w)"
        ))
    };
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = value.split_at(split);
    let (_, _, unit_seconds) = UNITS
        .iter()
        .find(|(letter, _, _)| *letter == unit)
        .ok_or_else(invalid)?;
    seconds(number, *unit_seconds).ok_or_else(invalid)
}

/// `number` of a unit of `unit_seconds`, when positive and in range.
fn seconds(number: &str, unit_seconds: i64) -> Option<SignedDuration> {
    number
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_seconds))
        .filter(|seconds| *seconds > 0)
        .map(SignedDuration::from_secs)
}

/// The units of a duration: the letter of its compact form (`24h`), its
/// name in words, singular (`1 week`; a plural adds `s`), and its seconds.
const UNITS: [(&str, &str, i64); 5] = [
    ("s", "second", 1),
    ("m", "minute", 60),
    ("h", "hour", 3_600),
    ("d", "day", 86_400),
    ("w", "week", 604_800),
];

/// `words` (of `value`) as a duration in words: a whole number and a unit
/// (`1 week`, `3 days`, `90 seconds`), `None` when they are not two.
fn parse_words(value: &str, words: &[&str]) -> Option<Result<SignedDuration, CliError>> {
    let [number, unit] = words else {
        return None;
    };
    let unit = unit.to_ascii_lowercase();
    let singular = unit.strip_suffix('s').unwrap_or(&unit);
    let Some((_, _, unit_seconds)) = UNITS.iter().find(|(_, name, _)| *name == singular) else {
        return Some(Err(CliError::Usage(format!(
            "{value:?}: unknown unit {unit:?}: use second, minute, hour, day or week (singular or plural, as in \"1 week\" or \"3 days\")"
        ))));
    };
    Some(seconds(number, *unit_seconds).ok_or_else(|| {
        CliError::Usage(format!(
            "{value:?}: {number:?} is not a whole number above 0"
        ))
    }))
}

/// `value` as a point in time: an RFC 3339 time, or a duration (compact or
/// in words) `direction` of `now` (-1: back, for `--since`, where `… ago`
/// reads as the WOPR CLI writes it; +1: ahead, for `--expires`).
pub fn parse_time(value: &str, now: Timestamp, direction: i32) -> Result<Timestamp, CliError> {
    if let Ok(time) = value.parse::<Timestamp>() {
        return Ok(time);
    }
    let words: Vec<&str> = value.split_whitespace().collect();
    let (words, ago) = match words.split_last() {
        Some((last, before)) if last.eq_ignore_ascii_case("ago") && !before.is_empty() => {
            (before, true)
        }
        _ => (words.as_slice(), false),
    };
    if ago && direction > 0 {
        return Err(CliError::Usage(format!(
            "{value:?} is in the past: give how far ahead, as 30d or \"1 week\", or an RFC 3339 time"
        )));
    }
    let duration = match (parse_words(value, words), words) {
        (Some(parsed), _) => parsed?,
        (None, [compact]) => parse_duration(compact).map_err(|_| neither(value, direction))?,
        (None, _) => return Err(neither(value, direction)),
    };
    now.checked_add(duration * direction)
        .map_err(|_| CliError::Usage(format!("{value:?} is out of range")))
}

/// `value` is no time `parse_time` reads: the forms it does.
fn neither(value: &str, direction: i32) -> CliError {
    CliError::Usage(format!(
        "{value:?} is neither a duration (1w, 24h, 30m, \"1 week\", \"3 days\"{}) nor an RFC 3339 time (2026-11-29T12:00:00Z)",
        if direction < 0 {
            ", \"1 week ago\""
        } else {
            ""
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-11-29T12:00:00Z".parse().unwrap()
    }

    fn at(time: &str) -> Timestamp {
        time.parse().unwrap()
    }

    #[test]
    fn durations_and_times() {
        assert_eq!(
            parse_time("1w", now(), -1).unwrap(),
            at("2026-11-22T12:00:00Z")
        );
        assert_eq!(
            parse_time("24h", now(), 1).unwrap(),
            at("2026-11-30T12:00:00Z")
        );
        assert_eq!(
            parse_time("2026-01-02T03:04:05Z", now(), -1).unwrap(),
            at("2026-01-02T03:04:05Z")
        );
        for bad in [
            "",
            "w",
            "5",
            "5y",
            "-5m",
            "0s",
            "yesterday",
            "99999999999999999w",
        ] {
            assert!(parse_time(bad, now(), -1).is_err(), "{bad:?}");
        }
    }

    /// The WOPR CLI's words: `--since "1 week ago"`, each unit singular and
    /// plural, with or without `ago`.
    #[test]
    fn durations_in_words() {
        for (value, expected) in [
            ("1 week ago", "2026-11-22T12:00:00Z"),
            ("1 week", "2026-11-22T12:00:00Z"),
            ("2 weeks ago", "2026-11-15T12:00:00Z"),
            ("1 day ago", "2026-11-28T12:00:00Z"),
            ("3 days ago", "2026-11-26T12:00:00Z"),
            ("1 hour ago", "2026-11-29T11:00:00Z"),
            ("6 hours", "2026-11-29T06:00:00Z"),
            ("1 minute ago", "2026-11-29T11:59:00Z"),
            ("30 minutes ago", "2026-11-29T11:30:00Z"),
            ("1 second ago", "2026-11-29T11:59:59Z"),
            ("90 seconds ago", "2026-11-29T11:58:30Z"),
            ("1 Week Ago", "2026-11-22T12:00:00Z"),
            ("  1   week   ago ", "2026-11-22T12:00:00Z"),
            ("1w ago", "2026-11-22T12:00:00Z"),
        ] {
            assert_eq!(
                parse_time(value, now(), -1).unwrap(),
                at(expected),
                "{value:?}"
            );
        }
        assert_eq!(
            parse_time("1 week", now(), 1).unwrap(),
            at("2026-12-06T12:00:00Z")
        );
    }

    #[test]
    fn words_that_are_not_a_duration_say_why() {
        let error = |value: &str, direction| match parse_time(value, now(), direction) {
            Err(CliError::Usage(message)) => message,
            other => panic!("{value:?}: {other:?}"),
        };
        assert!(
            error("1 fortnight ago", -1)
                .contains("unknown unit \"fortnight\": use second, minute, hour, day or week"),
            "{}",
            error("1 fortnight ago", -1)
        );
        assert!(error("a week ago", -1).contains("\"a\" is not a whole number above 0"));
        assert!(error("0 weeks ago", -1).contains("\"0\" is not a whole number above 0"));
        assert!(error("-1 weeks ago", -1).contains("not a whole number above 0"));
        assert!(error("1.5 weeks ago", -1).contains("not a whole number above 0"));
        assert!(error("last week", -1).contains("\"last\" is not a whole number above 0"));
        assert!(error("99999999999999999 weeks ago", -1).contains("not a whole number above 0"));
        assert!(error("1 week ago", 1).contains("is in the past"));
        for bad in ["ago", "1 week from now", "week ago", "1weeks ago"] {
            assert!(
                error(bad, -1).contains("is neither a duration"),
                "{bad:?}: {}",
                error(bad, -1)
            );
        }
    }
}
