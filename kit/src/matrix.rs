//! Who can reach whom: the matrix the upstream Kubernetes netpol suite
//! checks, every pod to every pod on one port and protocol, and its truth
//! tables as upstream prints them.

/// Rows are sources, columns destinations, pods in a fixed order; a cell
/// is `None` where the probe itself failed (no verdict).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    pub names: Vec<String>,
    cells: Vec<Option<bool>>,
}

impl Matrix {
    /// Every cell `value`.
    pub fn new(names: &[String], value: bool) -> Matrix {
        Matrix { names: names.to_vec(), cells: vec![Some(value); names.len() * names.len()] }
    }

    /// `allowed(from, to)` for every pair; a pod always reaches itself
    /// (traffic to its own address never leaves it, so no policy applies).
    pub fn expected(names: &[String], allowed: impl Fn(&str, &str) -> bool) -> Matrix {
        let allowed = &allowed;
        let cells =
            names.iter().flat_map(|from| names.iter().map(move |to| Some(from == to || allowed(from, to)))).collect();
        Matrix { names: names.to_vec(), cells }
    }

    /// From rows of cells (source by source).
    pub fn from_rows(names: &[String], rows: Vec<Vec<Option<bool>>>) -> Matrix {
        assert!(rows.len() == names.len() && rows.iter().all(|r| r.len() == names.len()), "a square matrix");
        Matrix { names: names.to_vec(), cells: rows.into_iter().flatten().collect() }
    }

    fn idx(&self, pod: &str) -> usize {
        self.names.iter().position(|n| n == pod).unwrap_or_else(|| panic!("no pod {pod}"))
    }

    /// The cell of sources[i] to destinations[j].
    pub fn at(&self, i: usize, j: usize) -> Option<bool> {
        self.cells[i * self.names.len() + j]
    }

    pub fn put(&mut self, i: usize, j: usize, v: Option<bool>) {
        let n = self.names.len();
        self.cells[i * n + j] = v;
    }

    /// Whether `from` reached `to` (a failed probe did not).
    pub fn get(&self, from: &str, to: &str) -> bool {
        self.at(self.idx(from), self.idx(to)) == Some(true)
    }

    pub fn set(&mut self, from: &str, to: &str, v: bool) -> &mut Self {
        let (f, t) = (self.idx(from), self.idx(to));
        self.put(f, t, Some(v));
        self
    }

    /// Everything to `to` is `v` (pods reaching themselves aside).
    pub fn to(&mut self, to: &str, v: bool) -> &mut Self {
        let t = self.idx(to);
        for f in (0..self.names.len()).filter(|&f| f != t) {
            self.put(f, t, Some(v));
        }
        self
    }

    /// Everything from `from` is `v` (pods reaching themselves aside).
    pub fn from(&mut self, from: &str, v: bool) -> &mut Self {
        let f = self.idx(from);
        for t in (0..self.names.len()).filter(|&t| t != f) {
            self.put(f, t, Some(v));
        }
        self
    }

    /// Applies `f(from, to)` to every pair of distinct pods.
    pub fn each(&mut self, f: impl Fn(&str, &str) -> Option<bool>) -> &mut Self {
        for i in 0..self.names.len() {
            for j in (0..self.names.len()).filter(|&j| j != i) {
                if let Some(v) = f(&self.names[i], &self.names[j]) {
                    self.put(i, j, Some(v));
                }
            }
        }
        self
    }

    /// The diagonal set: a pod always reaches itself.
    pub fn with_self_reachable(mut self) -> Matrix {
        for i in 0..self.names.len() {
            self.put(i, i, Some(true));
        }
        self
    }

    /// How many cells are `v`.
    pub fn count(&self, v: Option<bool>) -> usize {
        self.cells.iter().filter(|c| **c == v).count()
    }

    /// How many cells differ from `other`'s.
    pub fn mismatches(&self, other: &Matrix) -> usize {
        self.cells.iter().zip(&other.cells).filter(|(a, b)| a != b).count()
    }

    /// Upstream's truth table, one `mark(i, j)` per cell.
    pub fn table(&self, mark: impl Fn(usize, usize) -> String) -> String {
        let mut out = String::from("-");
        for name in &self.names {
            out.push('\t');
            out.push_str(name);
        }
        out.push('\n');
        for (i, from) in self.names.iter().enumerate() {
            out.push_str(from);
            for j in 0..self.names.len() {
                out.push('\t');
                out.push_str(&mark(i, j));
            }
            out.push('\n');
        }
        out
    }

    /// Upstream's cells: `.` reachable, `X` not, `?` no answer.
    pub fn truth_table(&self) -> String {
        self.table(|i, j| cell(self.at(i, j)).to_string())
    }
}

fn cell(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => ".",
        Some(false) => "X",
        None => "?",
    }
}

/// Expected and observed side by side, then the differences (upstream
/// prints the same three tables).
pub fn comparison(title: &str, expected: &Matrix, observed: &Matrix) -> String {
    let n = expected.mismatches(observed);
    let verdict = if n == 0 { "matches".to_string() } else { format!("{n} cells differ") };
    let mut out = format!("{title}: {verdict}\nexpected:\n");
    out.push_str(&expected.truth_table());
    out.push_str("observed:\n");
    out.push_str(&observed.truth_table());
    if n > 0 {
        out.push_str("comparison (. agrees, X differs):\n");
        out.push_str(
            &expected.table(|i, j| if expected.at(i, j) == observed.at(i, j) { "." } else { "X" }.to_string()),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn builders_leave_the_diagonal_alone() {
        let n = names(&["x/a", "x/b", "y/a"]);
        let mut m = Matrix::new(&n, true);
        m.to("x/a", false).set("x/b", "x/a", true);
        assert!(m.get("x/a", "x/a") && m.get("x/b", "x/a") && !m.get("y/a", "x/a"));
        m.from("y/a", false);
        assert!(m.get("y/a", "y/a") && !m.get("y/a", "x/b"));
        m.each(|from, to| (from == "x/a" && to == "y/a").then_some(false));
        assert!(!m.get("x/a", "y/a") && m.get("x/a", "x/b"));
        let e = Matrix::expected(&n, |_, to| !to.starts_with("x/"));
        assert_eq!(e.mismatches(&Matrix::new(&n, false).with_self_reachable()), 2, "x/a and x/b to y/a");
        assert_eq!(Matrix::new(&n, false).with_self_reachable().truth_table().matches('.').count(), 3);
    }

    #[test]
    fn rendering() {
        let n = names(&["x/a", "x/b"]);
        let expected = Matrix::expected(&n, |_, to| to != "x/b");
        assert_eq!(
            comparison("TCP/80", &expected, &expected),
            "TCP/80: matches\nexpected:\n-\tx/a\tx/b\nx/a\t.\tX\nx/b\t.\t.\nobserved:\n-\tx/a\tx/b\nx/a\t.\tX\nx/b\t.\t.\n"
        );
        let observed = Matrix::from_rows(&n, vec![vec![Some(true), Some(true)], vec![None, Some(true)]]);
        let diff = comparison("TCP/80", &expected, &observed);
        assert!(diff.starts_with("TCP/80: 2 cells differ\n"), "{diff}");
        assert!(diff.ends_with("comparison (. agrees, X differs):\n-\tx/a\tx/b\nx/a\t.\tX\nx/b\tX\t.\n"), "{diff}");
        assert!(diff.contains("x/b\t?\t.\n"), "{diff}");
        assert!(!observed.get("x/b", "x/a"), "no answer is not reachable");
    }
}
