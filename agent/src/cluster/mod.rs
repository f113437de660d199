//! Where cluster state comes from. Every source produces the same
//! [`Snapshot`]: validated objects for the compiler, and the errors of the
//! objects it could not use.

pub mod files;
pub mod objects;

use crate::policy::Input;

/// One object (or file) the agent could not use as written.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct InputError {
    /// Where it came from: a file path, or the API.
    pub source: String,
    /// `Kind namespace/name`, or empty when the file itself is unreadable.
    pub object: String,
    /// Field path, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    pub message: String,
    /// What the agent does instead, e.g. "keeping the last valid version".
    pub action: String,
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.source)?;
        if !self.object.is_empty() {
            write!(f, ": {}", self.object)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)?;
        if !self.action.is_empty() {
            write!(f, " ({})", self.action)?;
        }
        Ok(())
    }
}

/// The state a source currently holds.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub input: Input,
    pub errors: Vec<InputError>,
}
