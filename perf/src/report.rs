//! Tables for humans (aligned text) and for perf/RESULTS.md (Markdown).

/// A table of strings with a header row.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Self { headers: headers.into_iter().map(Into::into).collect(), rows: Vec::new() }
    }

    /// Appends a row.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }

    fn widths(&self) -> Vec<usize> {
        let mut w: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < w.len() {
                    w[i] = w[i].max(c.chars().count());
                }
            }
        }
        w
    }

    /// GitHub-flavoured Markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!("| {} |\n", self.headers.join(" | "));
        s += &format!(
            "|{}\n",
            self.headers.iter().enumerate().map(|(i, _)| if i == 0 { "---|" } else { "---:|" }).collect::<String>()
        );
        for r in &self.rows {
            s += &format!("| {} |\n", r.join(" | "));
        }
        s
    }

    /// Aligned plain text.
    pub fn text(&self) -> String {
        let w = self.widths();
        let line =
            |cells: &[String]| -> String {
                cells
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        if i == 0 { format!("{c:<width$}", width = w[i]) } else { format!("{c:>width$}", width = w[i]) }
                    })
                    .collect::<Vec<_>>()
                    .join("  ")
            };
        let mut s = line(&self.headers) + "\n";
        for r in &self.rows {
            s += &(line(r) + "\n");
        }
        s
    }
}

/// Nanoseconds as microseconds with two decimals.
pub fn us(ns: u64) -> String {
    format!("{:.2} µs", ns as f64 / 1e3)
}

/// `a / b` with two decimals.
pub fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 { "n/a".into() } else { format!("{:.2}", a / b) }
}

/// The median of some values (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_render() {
        let mut t = Table::new(["what", "p50"]);
        t.row(["raw", "2.50 µs"]).row(["kernel TCP", "10.00 µs"]);
        assert!(t.markdown().starts_with("| what | p50 |\n|---|---:|\n| raw | 2.50 µs |"));
        assert!(t.text().lines().nth(2).unwrap().starts_with("kernel TCP"));
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(us(2_614), "2.61 µs");
        assert_eq!(ratio(1.0, 4.0), "0.25");
    }
}
