//! How listings are printed: an aligned table, IDs only (`-q`), or one JSON
//! object per line (`--format json`, keys = the table's columns in lower case).

use clap::ValueEnum;
use comfy_table::{presets, ContentArrangement, Table};

#[derive(Debug, Clone, Copy, Default, ValueEnum, PartialEq, Eq)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// A listing: column names and one row of cells per object; the first column
/// is the ID.
pub struct Listing {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
    /// Full ids, for `-q` and JSON (the table shows them shortened).
    pub ids: Vec<String>,
}

/// IDs are shown as their first 12 characters in tables, as docker does.
pub const SHORT_ID: usize = 12;

pub fn short(id: &str) -> &str {
    &id[..id.len().min(SHORT_ID)]
}

impl Listing {
    pub fn new(columns: Vec<&'static str>) -> Listing {
        Listing {
            columns,
            rows: Vec::new(),
            ids: Vec::new(),
        }
    }

    pub fn push(&mut self, id: &str, rest: Vec<String>) {
        self.ids.push(id.to_string());
        let mut row = vec![id.to_string()];
        row.extend(rest);
        self.rows.push(row);
    }

    /// Forgets the rows (after they were printed).
    pub fn clear(&mut self) {
        self.rows.clear();
        self.ids.clear();
    }

    pub fn render(&self, quiet: bool, format: Format) -> String {
        let mut out = String::new();
        if quiet {
            for id in &self.ids {
                out.push_str(id);
                out.push('\n');
            }
            return out;
        }
        match format {
            Format::Json => {
                for row in &self.rows {
                    let mut object = serde_json::Map::new();
                    for (column, cell) in self.columns.iter().zip(row) {
                        object.insert(
                            column.to_ascii_lowercase().replace(' ', "_"),
                            serde_json::Value::String(cell.clone()),
                        );
                    }
                    out.push_str(&serde_json::Value::Object(object).to_string());
                    out.push('\n');
                }
            }
            Format::Table => {
                let mut table = Table::new();
                table
                    .load_preset(presets::NOTHING)
                    .set_content_arrangement(ContentArrangement::Disabled)
                    .set_header(self.columns.clone());
                for row in &self.rows {
                    let mut cells = row.clone();
                    cells[0] = short(&cells[0]).to_string();
                    table.add_row(cells);
                }
                for column in table.column_iter_mut() {
                    column.set_padding((0, 3));
                }
                for line in table.to_string().lines() {
                    out.push_str(line.trim_end());
                    out.push('\n');
                }
            }
        }
        out
    }
}

/// `2026-11-25T02:40:00.123Z` from milliseconds since the epoch.
pub fn rfc3339(ms: i64) -> String {
    shoal_api::log_time::format_rfc3339(ms.saturating_mul(1_000_000), 3)
}

/// "3 seconds ago", "5 minutes ago" …
pub fn ago(ms: i64, now_ms: i64) -> String {
    let secs = ((now_ms - ms) / 1000).max(0);
    let (n, unit) = match secs {
        0..=1 => return "Less than a second ago".into(),
        2..=59 => (secs, "second"),
        60..=3_599 => (secs / 60, "minute"),
        3_600..=86_399 => (secs / 3_600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    if n == 1 {
        format!("About a {unit} ago")
    } else {
        format!("{n} {unit}s ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
    }

    #[test]
    fn json_keys_are_lower_case_columns() {
        let mut l = Listing::new(vec!["ID", "NAME"]);
        l.push("abcdefghijklmnopq", vec!["web".into()]);
        assert_eq!(
            l.render(false, Format::Json),
            "{\"id\":\"abcdefghijklmnopq\",\"name\":\"web\"}\n"
        );
        assert_eq!(l.render(true, Format::Table), "abcdefghijklmnopq\n");
        let table = l.render(false, Format::Table);
        assert!(table.contains("abcdefghijkl "), "{table}");
        assert!(!table.contains("abcdefghijklm"), "{table}");
    }
}
