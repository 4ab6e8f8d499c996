//! A spec the operator cannot act on, naming the offending field.

use std::fmt;

/// Bad input: reported as a status condition (reason `InvalidSpec`) that names the field, never
/// only as an Event or a log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// JSON path of the field, e.g. `spec.storage.subPath`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl Invalid {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for Invalid {}

/// Checks a path inside a volume: relative, no `..`, not empty.
pub fn check_relative_path(field: &str, path: &str) -> Result<(), Invalid> {
    if path.is_empty() {
        return Err(Invalid::new(field, "must not be empty"));
    }
    if path.starts_with('/') {
        return Err(Invalid::new(field, format!("{path:?} must be relative to the volume root")));
    }
    if path.split('/').any(|p| p == "..") {
        return Err(Invalid::new(field, format!("{path:?} must not contain \"..\"")));
    }
    Ok(())
}

/// Checks a Kubernetes object name (RFC 1123 DNS subdomain).
pub fn check_object_name(field: &str, name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok { Ok(()) } else { Err(Invalid::new(field, format!("{name:?} is not a valid object name"))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_inside_the_volume() {
        assert!(check_relative_path("f", "runs/a").is_ok());
        assert_eq!(check_relative_path("f", "/etc").unwrap_err().field, "f");
        assert!(check_relative_path("f", "a/../../b").is_err());
        assert!(check_relative_path("f", "").is_err());
    }

    #[test]
    fn object_names_follow_rfc1123() {
        assert!(check_object_name("f", "sap-router.v1").is_ok());
        assert!(check_object_name("f", "Bad_Name").is_err());
        assert!(check_object_name("f", "-x").is_err());
    }
}
