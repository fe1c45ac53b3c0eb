//! Resolving secret references. A resolved secret never prints itself.

use std::fmt;
use std::process::{Command, Stdio};

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::plan::SecretRef;

/// A secret value. `Debug` and `Display` show nothing of it; its memory (the whole
/// allocation) is overwritten with zeros when it is dropped, clones included.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A secret from a value the program holds (a URL written in the plan, say).
    pub fn from_string(s: String) -> Secret {
        Secret(Zeroizing::new(s))
    }
}

impl Secret {
    /// A secret from a literal, for tests of this crate.
    #[cfg(test)]
    pub fn for_test(s: &str) -> Secret {
        Secret(Zeroizing::new(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

fn strip_one_newline(mut s: String) -> String {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    s
}

/// Reads the secret a reference points to. Errors name the reference, never the value.
pub fn resolve(r: &SecretRef) -> Result<Secret> {
    let value = match r {
        SecretRef::Env(name) => std::env::var(name).map_err(|_| {
            Error::secret(format!(
                "the secret {} is not set: export {name} in the environment that runs dtr-backup",
                r.describe()
            ))
        })?,
        SecretRef::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::secret(format!(
                    "cannot read the secret {}: {e}; check that the file exists and is readable",
                    r.describe()
                ))
            })?;
            strip_one_newline(text)
        }
        SecretRef::Command(argv) => {
            let (program, args) = argv
                .split_first()
                .ok_or_else(|| Error::secret("an empty secret command"))?;
            let out = Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| {
                    Error::secret(format!(
                        "cannot run the secret command {}: {e}",
                        r.describe()
                    ))
                })?;
            if !out.status.success() {
                return Err(Error::secret(format!(
                    "the secret command {} failed ({})",
                    r.describe(),
                    out.status
                )));
            }
            let text = String::from_utf8(out.stdout).map_err(|e| {
                zeroize::Zeroize::zeroize(&mut e.into_bytes());
                Error::secret(format!(
                    "the secret command {} printed non-UTF-8 output",
                    r.describe()
                ))
            })?;
            strip_one_newline(text)
        }
    };
    if value.is_empty() {
        return Err(Error::secret(format!(
            "the secret {} is empty; give it a value",
            r.describe()
        )));
    }
    Ok(Secret(Zeroizing::new(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_and_file_secrets() {
        let s = resolve(&SecretRef::Command(vec!["printf".into(), "pw\\n".into()])).unwrap();
        assert_eq!(s.expose(), "pw");
        assert_eq!(format!("{s:?}"), "<secret>");
        let err = resolve(&SecretRef::File("/nonexistent/x".into())).unwrap_err();
        assert!(matches!(err, Error::Secret(_)), "{err:?}");
        // The reference is named, never the value.
        assert!(err.to_string().contains("file:/nonexistent/x"));
        let err = resolve(&SecretRef::Command(vec!["false".into()])).unwrap_err();
        assert!(matches!(err, Error::Secret(_)), "{err:?}");
    }
}
