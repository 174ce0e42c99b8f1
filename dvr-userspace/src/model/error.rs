//! Why a state is refused: one [`FieldError`] per problem, all of them in one [`StateError`].

use std::fmt;
use std::path::PathBuf;

/// One problem with one field of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// `network`, `subnet`, `port`, `router`, `floatingip` or `host`.
    pub kind: &'static str,
    /// The object's id (a host's name), or `ports[3]` when it has none.
    pub id: String,
    /// Field path, e.g. `fixed_ips[0].ip_address`; empty when about the whole object.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{} {}: {}", self.kind, self.id, self.message)
        } else {
            write!(
                f,
                "{} {}: field `{}`: {}",
                self.kind, self.id, self.field, self.message
            )
        }
    }
}

/// Why a state could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The top level is not an object, or one of its lists is not a list.
    #[error("state: {0}")]
    Shape(String),
    /// Every problem found, one per line.
    #[error("{}", display_lines(.0))]
    Invalid(Vec<FieldError>),
}

impl StateError {
    /// The field errors (empty for the other variants).
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            StateError::Invalid(errors) => errors,
            _ => &[],
        }
    }
}

pub(crate) fn display_lines(errors: &[FieldError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("\n")
}
