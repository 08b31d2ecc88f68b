//! What a command shows: text for people (kubectl-style tables) and the
//! same result as data for `-o json|yaml`, made together so they cannot
//! disagree.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use super::CliError;
use super::args::Format;

/// A command's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    /// For people: a table or a few lines, ending with a newline.
    pub text: String,
    /// For scripts: API objects (a kubectl `List` of them for many).
    pub data: Value,
    /// The checks that failed (`security verify`): printed, then the exit
    /// code says so.
    pub failed_checks: Vec<String>,
}

impl Shown {
    /// `text` for people, `data` for scripts.
    pub fn new(text: String, data: &impl Serialize) -> Shown {
        Shown {
            text,
            data: serde_json::to_value(data).unwrap_or(Value::Null),
            failed_checks: Vec::new(),
        }
    }

    /// `text` for people, and the objects as a kubectl `List`.
    pub fn list(text: String, items: &[impl Serialize]) -> Shown {
        Shown::new(
            text,
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}),
        )
    }

    /// This result in `format`.
    pub fn render(&self, format: Format) -> Result<String, CliError> {
        match format {
            Format::Table => Ok(self.text.clone()),
            Format::Json => serde_json::to_string_pretty(&self.data)
                .map(|json| json + "\n")
                .map_err(|error| CliError::Usage(format!("cannot print JSON: {error}"))),
            Format::Yaml => serde_saphyr::to_string(&self.data)
                .map_err(|error| CliError::Usage(format!("cannot print YAML: {error}"))),
        }
    }
}

/// Columns aligned as kubectl aligns them: upper-case headers, three spaces
/// between columns.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these headers.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.len() == 1
    }

    /// The aligned text, or `empty` (a line such as "No grants found in
    /// namespace agents.") when there are no rows.
    pub fn render_or(&self, empty: &str) -> String {
        if self.is_empty() {
            return format!("{empty}\n");
        }
        let columns = self.rows[0].len();
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                self.rows
                    .iter()
                    .map(|row| row.get(column).map_or(0, |cell| cell.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut text = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                if column + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[column] - cell.chars().count();
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad + 3));
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// Lines of `label: value`, labels aligned, as `kubectl describe` prints.
pub fn fields<L: AsRef<str>>(pairs: &[(L, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(label, _)| label.as_ref().len())
        .max()
        .unwrap_or(0)
        + 1;
    pairs
        .iter()
        .map(|(label, value)| {
            let line = format!("{:width$} {value}", format!("{}:", label.as_ref()));
            format!("{}\n", line.trim_end())
        })
        .collect()
}

/// A list of values, or `<none>`.
pub fn joined<T: ToString>(values: &[T]) -> String {
    if values.is_empty() {
        "<none>".into()
    } else {
        values
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// An optional value, or `<none>`.
pub fn or_none(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "<none>".into(), |value| value.to_string())
}

/// How long ago `time` was, as kubectl shows ages: `45s`, `12m`, `5h`, `3d`.
pub fn age(time: Option<&Time>, now: Timestamp) -> String {
    let Some(time) = time else {
        return "<unknown>".into();
    };
    span(now.as_second() - time.0.as_second())
}

/// How long until `time`: `in 3d`, or `5h ago` once past.
pub fn until(time: &Time, now: Timestamp) -> String {
    let seconds = time.0.as_second() - now.as_second();
    if seconds >= 0 {
        format!("in {}", span(seconds))
    } else {
        format!("{} ago", span(-seconds))
    }
}

fn span(seconds: i64) -> String {
    let seconds = seconds.max(0);
    match seconds {
        0..120 => format!("{seconds}s"),
        120..7_200 => format!("{}m", seconds / 60),
        7_200..172_800 => format!("{}h", seconds / 3_600),
        _ => format!("{}d", seconds / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_like_kubectl() {
        let mut table = Table::new(&["NAME", "TRUST"]);
        table.row(vec!["research-agent".into(), "trusted".into()]);
        table.row(vec!["gw".into(), "untrusted".into()]);
        assert_eq!(
            table.render_or("none"),
            "NAME             TRUST\nresearch-agent   trusted\ngw               untrusted\n"
        );
        assert_eq!(
            Table::new(&["NAME"]).render_or("No sessions."),
            "No sessions.\n"
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now: Timestamp = "2026-11-29T12:00:00Z".parse().unwrap();
        let at = |s: &str| Time(s.parse().unwrap());
        assert_eq!(age(Some(&at("2026-11-29T11:59:15Z")), now), "45s");
        assert_eq!(age(Some(&at("2026-11-29T11:00:00Z")), now), "60m");
        assert_eq!(age(Some(&at("2026-11-29T07:00:00Z")), now), "5h");
        assert_eq!(age(Some(&at("2026-11-24T12:00:00Z")), now), "5d");
        assert_eq!(until(&at("2026-12-01T12:00:00Z"), now), "in 2d");
        assert_eq!(until(&at("2026-11-29T11:00:00Z"), now), "60m ago");
    }
}
