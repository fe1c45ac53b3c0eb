//! From the YAML tree to [`RawPlan`], collecting every problem on the way.
//!
//! This file holds the decoder and its primitives (strings, booleans, counts, paths, lists,
//! choices, secret references, validated values); `sections.rs` has one function per plan
//! section.
//!
//! Each section has one function. A [`Fields`] value hands out the keys of a mapping; the
//! keys that no function asked for are reported as unknown, with the closest known key as a
//! suggestion. Checks that concern one value (a replica id, a URL, a secret reference) happen
//! here, next to the value's position; checks across sections are in `check.rs`.

use std::path::PathBuf;
use std::str::FromStr;

use crate::plan::addresses::Invalid;
use crate::plan::diag::{Diag, did_you_mean};
use crate::plan::names::{SecretRef, check_env_name};
use crate::plan::raw::*;
use crate::plan::yaml::{Entry, Node, Span, Value};

/// Collects diagnostics while decoding one plan source.
pub struct Decoder<'s> {
    src: &'s str,
    pub diags: Vec<Diag>,
    /// Values where a secret reference was expected but something else stands (a literal
    /// secret, a map of another shape): masked wherever the source is shown.
    pub masked: Vec<Span>,
}

/// The spans of a value and of everything in it (a collection's span is its start only).
fn spans_within(node: &Node, out: &mut Vec<Span>) {
    out.push(node.span);
    match &node.value {
        Value::Map(entries) => {
            for e in entries {
                out.push(e.key_span);
                spans_within(&e.value, out);
            }
        }
        Value::Seq(items) => items.iter().for_each(|n| spans_within(n, out)),
        _ => {}
    }
}

/// A value and where it was found: its dotted path and the span of its key.
#[derive(Clone, Copy)]
struct At<'n, 'p> {
    path: &'p str,
    key_span: Span,
    node: &'n Node,
}

impl At<'_, '_> {
    /// Where to point for a problem with the value: the value itself, or its key when the
    /// value has no extent (an empty value, a block mapping).
    fn span(&self) -> Span {
        if self.node.span.len == 0 {
            self.key_span
        } else {
            self.node.span
        }
    }
}

/// The keys of one mapping, handed out one by one.
struct Fields<'n> {
    path: String,
    at: Span,
    entries: &'n [Entry],
    asked: Vec<&'static str>,
}

impl<'n> Fields<'n> {
    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }
}

fn section(path: &str) -> String {
    if path.is_empty() {
        "the plan".to_owned()
    } else {
        format!("`{path}`")
    }
}

impl<'s> Decoder<'s> {
    pub fn new(src: &'s str) -> Decoder<'s> {
        Decoder {
            src,
            diags: Vec::new(),
            masked: Vec::new(),
        }
    }

    fn push(&mut self, d: Diag) {
        self.diags.push(d);
    }

    /// The text of a scalar as written in the file (so `replica: 012345678901` keeps its
    /// leading zero even though YAML reads it as a number).
    fn raw_text(&self, node: &Node) -> Option<String> {
        let end = node.span.offset.checked_add(node.span.len)?;
        self.src
            .get(node.span.offset..end)
            .map(|s| s.trim().to_owned())
    }

    fn wrong_type(&mut self, at: At, expected: &str, help: Option<String>) {
        let help = help.unwrap_or_else(|| format!("give `{}` {expected}", at.path));
        let d = Diag::error(
            "plan::wrong-type",
            at.span(),
            format!(
                "`{}` must be {expected}, not {}",
                at.path,
                at.node.value.kind()
            ),
        )
        .label(format!("expected {expected}"))
        .help(help);
        self.push(d);
    }

    /// Opens a mapping. An empty value (`verify:`) counts as an empty mapping.
    fn fields<'n>(&mut self, at: At<'n, '_>) -> Option<Fields<'n>> {
        let entries: &'n [Entry] = match &at.node.value {
            Value::Map(entries) => entries,
            Value::Null => &[],
            _ => {
                self.wrong_type(
                    at,
                    "a mapping",
                    Some(format!("write the keys of `{}` indented below it", at.path)),
                );
                return None;
            }
        };
        Some(Fields {
            path: at.path.to_owned(),
            at: at.key_span,
            entries,
            asked: Vec::new(),
        })
    }

    fn take<'n>(&mut self, f: &mut Fields<'n>, key: &'static str) -> Option<&'n Entry> {
        f.asked.push(key);
        f.entries.iter().find(|e| e.key == key)
    }

    fn require<'n>(&mut self, f: &mut Fields<'n>, key: &'static str) -> Option<&'n Entry> {
        let found = self.take(f, key);
        if found.is_none() {
            self.push(
                Diag::error(
                    "plan::missing-key",
                    f.at,
                    format!("{} needs the key `{key}`", section(&f.path)),
                )
                .label(format!("`{key}` missing here"))
                .help(format!("add `{key}:` to {}", section(&f.path))),
            );
        }
        found
    }

    /// Reports every key that was never asked for.
    fn finish(&mut self, f: Fields) {
        for e in f.entries {
            if f.asked.contains(&e.key.as_str()) {
                continue;
            }
            let mut d = Diag::error(
                "plan::unknown-key",
                e.key_span,
                format!("unknown key `{}` in {}", e.key, section(&f.path)),
            )
            .label("not a key of this section");
            d = match did_you_mean(&e.key, &f.asked) {
                Some(k) => d.help(format!("did you mean `{k}`?")),
                None => d.help(format!("known keys here: {}", f.asked.join(", "))),
            };
            self.push(d);
        }
    }

    fn at<'n, 'p>(f: &Fields, e: &'n Entry, path: &'p str) -> At<'n, 'p> {
        let _ = f;
        At {
            path,
            key_span: e.key_span,
            node: &e.value,
        }
    }

    fn string(&mut self, at: At) -> Option<Sp<String>> {
        let value = match &at.node.value {
            Value::Str(s) => s.clone(),
            Value::Int(_) | Value::Float(_) => self.raw_text(at.node)?,
            _ => {
                self.wrong_type(
                    at,
                    "a string",
                    Some("write a single value; quote it if it contains `: ` or `#`".to_owned()),
                );
                return None;
            }
        };
        if value.trim().is_empty() {
            self.push(
                Diag::error(
                    "plan::empty-value",
                    at.span(),
                    format!("`{}` is empty", at.path),
                )
                .label("empty")
                .help(format!("give `{}` a value or remove the key", at.path)),
            );
            return None;
        }
        Some(Sp {
            value,
            span: at.span(),
        })
    }

    fn boolean(&mut self, at: At) -> Option<Sp<bool>> {
        match &at.node.value {
            Value::Bool(b) => Some(Sp {
                value: *b,
                span: at.span(),
            }),
            Value::Str(s) if matches!(s.as_str(), "yes" | "no" | "on" | "off") => {
                self.wrong_type(
                    at,
                    "true or false",
                    Some(format!(
                        "YAML 1.2 reads `{s}` as a string: write true or false"
                    )),
                );
                None
            }
            _ => {
                self.wrong_type(
                    at,
                    "true or false",
                    Some("write `true` or `false`".to_owned()),
                );
                None
            }
        }
    }

    fn count(&mut self, at: At) -> Option<Sp<u32>> {
        match &at.node.value {
            Value::Int(i) => match u32::try_from(*i) {
                Ok(v) => Some(Sp {
                    value: v,
                    span: at.span(),
                }),
                Err(_) => {
                    self.wrong_type(
                        at,
                        "a whole number from 0 to 4294967295",
                        Some("use a smaller, non-negative number".to_owned()),
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(
                    at,
                    "a whole number",
                    Some(format!(
                        "write digits without quotes, e.g. `{}: 7`",
                        at.path.rsplit('.').next().unwrap_or(at.path)
                    )),
                );
                None
            }
        }
    }

    fn path(&mut self, at: At) -> Option<Sp<PathBuf>> {
        self.string(at).map(|s| Sp {
            value: PathBuf::from(s.value),
            span: s.span,
        })
    }

    /// A string checked by a `FromStr` whose error says what is wrong.
    fn parsed<T: FromStr<Err = String>>(
        &mut self,
        at: At,
        code: &'static str,
        help: &str,
    ) -> Option<Sp<T>> {
        let s = self.string(at)?;
        match s.value.parse::<T>() {
            Ok(value) => Some(Sp {
                value,
                span: s.span,
            }),
            Err(why) => {
                self.push(
                    Diag::error(code, s.span, format!("`{}` {why}: {:?}", at.path, s.value))
                        .label("invalid")
                        .help(help),
                );
                None
            }
        }
    }

    /// A string checked by a validating newtype (`addresses.rs`), whose refusal carries the
    /// diagnostic's code, label and help.
    fn valid<T: FromStr<Err = Invalid>>(&mut self, at: At) -> Option<Sp<T>> {
        let s = self.string(at)?;
        match s.value.parse::<T>() {
            Ok(value) => Some(Sp {
                value,
                span: s.span,
            }),
            Err(why) => {
                self.push(
                    Diag::error(why.code, s.span, why.message)
                        .label(why.label)
                        .help(why.help),
                );
                None
            }
        }
    }

    fn list<'n, T>(
        &mut self,
        at: At<'n, '_>,
        mut item: impl FnMut(&mut Self, At<'n, '_>) -> Option<T>,
    ) -> Option<Sp<Vec<T>>> {
        let Value::Seq(nodes) = &at.node.value else {
            self.wrong_type(
                at,
                "a list",
                Some(format!(
                    "write `{}: [a, b]` or one `- item` per line",
                    at.path
                )),
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, node) in nodes.iter().enumerate() {
            let path = format!("{}[{i}]", at.path);
            let child = At {
                path: &path,
                key_span: node.span,
                node,
            };
            match item(self, child) {
                Some(v) => out.push(v),
                None => ok = false,
            }
        }
        // A problem with the list as a whole points at its key.
        ok.then_some(Sp {
            value: out,
            span: at.key_span,
        })
    }

    /// One word out of a closed set.
    fn choice<T: Copy>(&mut self, at: At, choices: &[(&'static str, T)]) -> Option<Sp<T>> {
        let s = self.string(at)?;
        if let Some((_, v)) = choices.iter().find(|(name, _)| *name == s.value) {
            return Some(Sp {
                value: *v,
                span: s.span,
            });
        }
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        let help = match did_you_mean(&s.value, &names) {
            Some(n) => format!("did you mean `{n}`?"),
            None => format!("use one of: {}", names.join(", ")),
        };
        self.push(
            Diag::error(
                "plan::unknown-value",
                s.span,
                format!("`{}` cannot be {:?}", at.path, s.value),
            )
            .label(format!("one of {}", names.join(", ")))
            .help(help),
        );
        None
    }

    /// A secret reference: `{env: NAME}`, `{file: PATH}` or `{command: [argv...]}`.
    fn secret(&mut self, at: At) -> Option<Sp<SecretRef>> {
        // Anything but `{env|file|command: ...}` may be the secret itself, in some shape.
        let reference = matches!(&at.node.value, Value::Map(e)
            if e.len() == 1 && ["env", "file", "command"].contains(&e[0].key.as_str()));
        if !reference {
            spans_within(at.node, &mut self.masked);
        }
        self.secret_ref(at)
    }

    fn secret_ref(&mut self, at: At) -> Option<Sp<SecretRef>> {
        const FORMS: &str = "write `{env: NAME}`, `{file: PATH}` or `{command: [program, arg...]}`";
        let entries = match &at.node.value {
            Value::Map(entries) => entries,
            Value::Str(_) | Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                self.push(
                    Diag::error(
                        crate::plan::diag::LITERAL_SECRET,
                        at.span(),
                        format!(
                            "`{}` holds a secret in the plan itself: secrets in plan files end up in git",
                            at.path
                        ),
                    )
                    .label("literal secret")
                    .help(format!("{FORMS}, and remove the secret from the file and from git history")),
                );
                return None;
            }
            _ => {
                self.wrong_type(at, "a secret reference", Some(FORMS.to_owned()));
                return None;
            }
        };
        let [entry] = entries.as_slice() else {
            self.push(
                Diag::error(
                    "plan::bad-secret-ref",
                    at.span(),
                    format!(
                        "`{}` must have exactly one of `env`, `file`, `command` (has {})",
                        at.path,
                        entries.len()
                    ),
                )
                .label("one key expected")
                .help(FORMS),
            );
            return None;
        };
        let path = format!("{}.{}", at.path, entry.key);
        let inner = At {
            path: &path,
            key_span: entry.key_span,
            node: &entry.value,
        };
        let value = match entry.key.as_str() {
            "env" => {
                let name = self.string(inner)?;
                if let Err(why) = check_env_name(&name.value) {
                    self.push(
                        Diag::error(
                            "plan::bad-secret-ref",
                            name.span,
                            format!("environment variable name {:?} {why}", name.value),
                        )
                        .label("not a variable name")
                        .help(
                            "name the variable that holds the secret, e.g. `{env: UCP_PASSWORD}`",
                        ),
                    );
                    return None;
                }
                SecretRef::Env(name.value)
            }
            "file" => SecretRef::File(self.path(inner)?.value),
            "command" => {
                let argv = self.list(inner, |d, at| d.string(at))?;
                if argv.value.is_empty() {
                    self.push(
                        Diag::error(
                            "plan::bad-secret-ref",
                            inner.span(),
                            format!("`{path}` is an empty command"),
                        )
                        .label("empty")
                        .help("give the program and its arguments, e.g. `{command: [pass, show, ucp]}`"),
                    );
                    return None;
                }
                SecretRef::Command(argv.value.into_iter().map(|s| s.value).collect())
            }
            other => {
                let help = match did_you_mean(other, &["env", "file", "command"]) {
                    Some(k) => format!("did you mean `{k}`? {FORMS}"),
                    None => FORMS.to_owned(),
                };
                self.push(
                    Diag::error(
                        "plan::bad-secret-ref",
                        entry.key_span,
                        format!("`{other}` is not a kind of secret reference"),
                    )
                    .label("expected env, file or command")
                    .help(help),
                );
                return None;
            }
        };
        Some(Sp {
            value,
            span: at.span(),
        })
    }

    /// The `type:` of a tagged section.
    fn tag(&mut self, f: &mut Fields, variants: &[&'static str]) -> Option<&'static str> {
        let entry = self.require(f, "type")?;
        let path = f.child_path("type");
        let at = Self::at(f, entry, &path);
        let s = self.string(at)?;
        if let Some(v) = variants.iter().find(|v| **v == s.value) {
            return Some(v);
        }
        let help = match did_you_mean(&s.value, variants) {
            Some(v) => format!("did you mean `{v}`?"),
            None => format!("use one of: {}", variants.join(", ")),
        };
        self.push(
            Diag::error(
                "plan::unknown-type",
                s.span,
                format!("{} cannot be of type {:?}", section(&f.path), s.value),
            )
            .label(format!("one of {}", variants.join(", ")))
            .help(help),
        );
        None
    }
}

/// Reads an optional key with `read`; `None` when absent or invalid (invalid is reported).
macro_rules! opt {
    ($d:expr, $f:expr, $key:literal, $read:ident) => {{
        match $d.take(&mut $f, $key) {
            Some(e) => {
                let path = $f.child_path($key);
                let at = Decoder::at(&$f, e, &path);
                $d.$read(at)
            }
            None => None,
        }
    }};
}

/// Reads a required key with `read`; `None` when missing or invalid (both reported).
macro_rules! req {
    ($d:expr, $f:expr, $key:literal, $read:ident) => {{
        match $d.require(&mut $f, $key) {
            Some(e) => {
                let path = $f.child_path($key);
                let at = Decoder::at(&$f, e, &path);
                $d.$read(at)
            }
            None => None,
        }
    }};
}

mod sections;
