//! A Markdown table of results: a title, an introduction, rows (or a row saying why a
//! part has no numbers) and notes.

use std::fmt::Write as _;

#[derive(Debug, Default)]
pub struct Table {
    pub title: String,
    pub intro: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: &str, header: &[&str]) -> Table {
        Table { title: title.into(), header: header.iter().map(|s| s.to_string()).collect(), ..Table::default() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// A row whose first cell names it and whose second says why it has no numbers.
    pub fn skip(&mut self, name: &str, why: &str) {
        let mut cells = vec![name.to_string(), why.to_string()];
        cells.resize(self.header.len().max(2), String::new());
        self.rows.push(cells);
    }

    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    pub fn markdown(&self) -> String {
        let mut s = format!("### {}\n\n", self.title);
        if !self.intro.is_empty() {
            let _ = writeln!(s, "{}\n", self.intro);
        }
        let _ = writeln!(s, "| {} |", self.header.join(" | "));
        let _ = writeln!(s, "|{}", self.header.iter().map(|_| "---|").collect::<String>());
        for r in &self.rows {
            // A cell is one line, and a '|' in it would start another cell.
            let mut cells: Vec<String> =
                r.iter().map(|c| c.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|")).collect();
            cells.resize(self.header.len(), String::new());
            let _ = writeln!(s, "| {} |", cells.join(" | "));
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }
}
