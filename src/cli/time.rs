//! Times on the command line: a duration (`90s`, `15m`, `24h`, `30d`, `1w`)
//! or an RFC 3339 time.

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
    let number: i64 = number.parse().map_err(|_| invalid())?;
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(unit_seconds)
        .filter(|seconds| *seconds > 0)
        .map(SignedDuration::from_secs)
        .ok_or_else(invalid)
}

/// `value` as a point in time: an RFC 3339 time, or a duration `direction`
/// of `now` (-1: ago, for `--since`; +1: ahead, for `--expires`).
pub fn parse_time(value: &str, now: Timestamp, direction: i32) -> Result<Timestamp, CliError> {
    if let Ok(time) = value.parse::<Timestamp>() {
        return Ok(time);
    }
    let duration = parse_duration(value).map_err(|_| {
        CliError::Usage(format!(
            "{value:?} is neither a duration (1w, 24h, 30m) nor an RFC 3339 time (2026-11-29T12:00:00Z)"
        ))
    })?;
    now.checked_add(duration * direction)
        .map_err(|_| CliError::Usage(format!("{value:?} is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times() {
        let now: Timestamp = "2026-11-29T12:00:00Z".parse().unwrap();
        assert_eq!(
            parse_time("1w", now, -1).unwrap(),
            "2026-11-22T12:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            parse_time("24h", now, 1).unwrap(),
            "2026-11-30T12:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            parse_time("2026-01-02T03:04:05Z", now, -1).unwrap(),
            "2026-01-02T03:04:05Z".parse::<Timestamp>().unwrap()
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
            assert!(parse_time(bad, now, -1).is_err(), "{bad:?}");
        }
    }
}
