//! How the benchmark reports print: numbers with thousands separators, sizes in MiB, and
//! comfy tables with one look (condensed UTF-8 borders, long cells wrapped to a width).

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, ContentArrangement, Table};

/// `n` with a comma between groups of three digits: `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A measured count or rate, rounded to a whole number and written like [`thousands`].
pub fn thousands_f64(v: f64) -> String {
    thousands(v.round() as u64)
}

/// A size in KiB as MiB with one decimal: `12.5 MiB`.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// An empty table with `header`, whose cells wrap so that it fits in `width` columns.
pub fn new_table(header: Vec<&str>, width: u16) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_content_arrangement(ContentArrangement::Dynamic);
    t.set_width(width);
    t.set_header(header);
    t
}

/// Aligns the first `left` columns of `t` to the left and the others (the figures) to the
/// right.
pub fn align(t: &mut Table, left: usize) {
    for i in 0..t.column_count() {
        if let Some(col) = t.column_mut(i) {
            col.set_cell_alignment(if i < left {
                CellAlignment::Left
            } else {
                CellAlignment::Right
            });
        }
    }
}

/// A verdict such as `n/a (judged at 1000 sessions)` split into the verdict and its reason, for
/// a table's value and notes cells.
pub fn verdict_cells(verdict: &str) -> (String, String) {
    match verdict.split_once(" (") {
        Some((v, why)) => (v.to_string(), why.trim_end_matches(')').to_string()),
        None => (verdict.to_string(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands_f64(999.6), "1,000");
        assert_eq!(mib(1536), "1.5 MiB");
        assert_eq!(
            verdict_cells("n/a (no webhook rounds)"),
            ("n/a".to_string(), "no webhook rounds".to_string())
        );
        assert_eq!(verdict_cells("PASS"), ("PASS".to_string(), String::new()));
    }
}
