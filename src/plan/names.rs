//! Validating newtypes for the names a plan uses. `FromStr` is the one check for each.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;

/// A plan name: lowercase letters, digits and `-`, 1 to 63 characters, no `-` at either end.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlanName(String);

impl PlanName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PlanName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 63 {
            return Err(format!(
                "is {} characters long; a name has 1 to 63",
                s.len()
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(format!("contains {c:?}; only a-z, 0-9 and '-' are allowed"));
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err("starts or ends with '-'".to_owned());
        }
        Ok(PlanName(s.to_owned()))
    }
}

impl fmt::Display for PlanName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Docker volume name (Docker's own rule, `[a-zA-Z0-9][a-zA-Z0-9_.-]+`): also the folder
/// name under `/var/lib/docker/volumes` that image content restores to, so nothing that
/// could leave that folder (`/`, `..`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeName(String);

impl VolumeName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for VolumeName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut chars = s.chars();
        match chars.next() {
            None => return Err("is empty".to_owned()),
            Some(c) if !c.is_ascii_alphanumeric() => {
                return Err(format!(
                    "starts with {c:?}; a volume name starts with a letter or digit"
                ));
            }
            _ => {}
        }
        if s.len() < 2 {
            return Err("has 1 character; a volume name has at least 2".to_owned());
        }
        if let Some(c) = chars.find(|c| !(c.is_ascii_alphanumeric() || "_.-".contains(*c))) {
            return Err(format!(
                "contains {c:?}; only a-z, A-Z, 0-9, '_', '.' and '-' are allowed"
            ));
        }
        Ok(VolumeName(s.to_owned()))
    }
}

/// A DTR replica id: 12 lowercase hexadecimal digits, e.g. `a1640e1c15b6`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplicaId(String);

impl ReplicaId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ReplicaId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() == 12
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(ReplicaId(s.to_owned()))
        } else if s.len() == 12 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Err("has uppercase letters; replica ids are lowercase".to_owned())
        } else {
            Err(format!(
                "is not 12 lowercase hexadecimal digits (got {} characters)",
                s.chars().count()
            ))
        }
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the plan picks the replica to back up.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum ReplicaSel {
    /// The replica of the last complete backup if it still exists, else the only one.
    #[default]
    Auto,
    /// This replica and no other.
    Pinned(ReplicaId),
}

impl FromStr for ReplicaSel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            Ok(ReplicaSel::Auto)
        } else {
            s.parse().map(ReplicaSel::Pinned)
        }
    }
}

impl fmt::Display for ReplicaSel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaSel::Auto => f.write_str("auto"),
            ReplicaSel::Pinned(id) => id.fmt(f),
        }
    }
}

/// A secret, by reference. The plan never holds the secret itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretRef {
    /// The value of an environment variable.
    Env(String),
    /// The content of a file (one trailing newline is dropped).
    File(std::path::PathBuf),
    /// The standard output of a command (argv, no shell; one trailing newline is dropped).
    Command(Vec<String>),
}

impl SecretRef {
    /// What may be shown of the reference: where the secret comes from, never its value.
    pub fn describe(&self) -> String {
        match self {
            SecretRef::Env(name) => format!("env:{name}"),
            SecretRef::File(path) => format!("file:{}", path.display()),
            SecretRef::Command(argv) => format!("command:{}", argv.join(" ")),
        }
    }

    /// How dry-run output and logs show the secret.
    pub fn redacted(&self) -> String {
        format!("<redacted from {}>", self.describe())
    }
}

/// Checks the name of an environment variable as used in `{env: NAME}`.
pub fn check_env_name(s: &str) -> Result<(), String> {
    let mut chars = s.chars();
    match chars.next() {
        None => Err("is empty".to_owned()),
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => Err(format!(
            "starts with {c:?}; a variable name starts with a letter or '_'"
        )),
        _ => match chars.find(|c| !(c.is_ascii_alphanumeric() || *c == '_')) {
            Some(c) => Err(format!("contains {c:?}; use letters, digits and '_'")),
            None => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_names() {
        assert!("dtr-prod-1".parse::<PlanName>().is_ok());
        assert!("Prod".parse::<PlanName>().is_err());
        assert!("-x".parse::<PlanName>().is_err());
        assert!("".parse::<PlanName>().is_err());
        assert!("a".repeat(63).parse::<PlanName>().is_ok());
        assert!("a".repeat(64).parse::<PlanName>().is_err());
    }

    #[test]
    fn replica_ids() {
        assert!("a1640e1c15b6".parse::<ReplicaId>().is_ok());
        assert!("012345678901".parse::<ReplicaId>().is_ok());
        assert!(
            "A1640E1C15B6"
                .parse::<ReplicaId>()
                .unwrap_err()
                .contains("uppercase")
        );
        assert!("a1640e1c15b".parse::<ReplicaId>().is_err());
        assert!("g1640e1c15b6".parse::<ReplicaId>().is_err());
        assert_eq!("auto".parse::<ReplicaSel>(), Ok(ReplicaSel::Auto));
    }

    #[test]
    fn env_names() {
        assert!(check_env_name("UCP_PASSWORD").is_ok());
        assert!(check_env_name("1X").is_err());
        assert!(check_env_name("A-B").is_err());
        assert!(check_env_name("").is_err());
    }

    #[test]
    fn secrets_are_described_not_shown() {
        assert_eq!(
            SecretRef::Env("P".into()).redacted(),
            "<redacted from env:P>"
        );
    }
}
