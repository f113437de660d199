//! A lint report: the findings, how many of each severity, and how they
//! print for people (text) and for CI (JSON).

use super::{Finding, Severity};
use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub errors: usize,
    pub warnings: usize,
    pub info: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub summary: Summary,
}

impl Report {
    pub fn new(findings: Vec<Finding>) -> Report {
        let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
        let summary =
            Summary { errors: count(Severity::Error), warnings: count(Severity::Warning), info: count(Severity::Info) };
        Report { findings, summary }
    }

    /// Whether any finding is at least as severe as `threshold`.
    pub fn fails(&self, threshold: Severity) -> bool {
        self.findings.iter().any(|f| f.severity <= threshold)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for x in &self.findings {
            write!(f, "{:<7} {}", x.severity, x.object)?;
            if !x.field.is_empty() {
                write!(f, ": {}", x.field)?;
            }
            writeln!(f, ": {} [{}]", x.message, x.check)?;
            if !x.source.is_empty() {
                writeln!(f, "        in {}", x.source)?;
            }
            writeln!(f, "        {}", x.why)?;
        }
        let s = &self.summary;
        writeln!(f, "{} errors, {} warnings, {} info", s.errors, s.warnings, s.info)
    }
}
