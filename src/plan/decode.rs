//! From the YAML tree to [`RawPlan`], collecting every problem on the way.
//!
//! Each section has one function. A [`Fields`] value hands out the keys of a mapping; the
//! keys that no function asked for are reported as unknown, with the closest known key as a
//! suggestion. Checks that concern one value (a replica id, a URL, a secret reference) happen
//! here, next to the value's position; checks across sections are in `check.rs`.

use std::path::PathBuf;
use std::str::FromStr;

use super::addresses::{EndpointUrl, Invalid};
use super::diag::{Diag, did_you_mean};
use super::names::{PlanName, ReplicaSel, SecretRef, VolumeName, check_env_name};
use super::raw::*;
use super::yaml::{Entry, Node, Span, Value};

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
                        super::diag::LITERAL_SECRET,
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

impl Decoder<'_> {
    /// Decodes a whole plan. `None` when something is missing or wrong; `self.diags` says what.
    pub fn plan(&mut self, root: &Node) -> Option<RawPlan> {
        let top = At {
            path: "",
            key_span: Span {
                offset: 0,
                len: 0,
                line: 1,
                column: 1,
            },
            node: root,
        };
        if matches!(root.value, Value::Null) {
            self.push(
                Diag::error("plan::empty", top.key_span, "the plan file is empty")
                    .label("nothing here")
                    .help("start from plans/quickstart.yaml; a plan needs at least `version`, `name` and `destination`"),
            );
            return None;
        }
        let mut f = self.fields(top)?;
        let present = |key: &str| f.entries.iter().any(|e| e.key == key);
        let (has_parts, has_ucp, has_dtr, has_images, has_encryption) = (
            present("parts"),
            present("ucp"),
            present("dtr"),
            present("images"),
            present("encryption"),
        );
        let version = req!(self, f, "version", version);
        let name = req!(self, f, "name", plan_name);
        let parts = opt!(self, f, "parts", parts);
        let ucp = opt!(self, f, "ucp", ucp);
        let docker = opt!(self, f, "docker", docker);
        let dtr = opt!(self, f, "dtr", dtr);
        let images = opt!(self, f, "images", images);
        let destination = req!(self, f, "destination", destination);
        let encryption = opt!(self, f, "encryption", encryption);
        let retention = opt!(self, f, "retention", retention);
        let state = opt!(self, f, "state", state);
        let preflight = opt!(self, f, "preflight", preflight);
        let verify = opt!(self, f, "verify", verify);
        let order = opt!(self, f, "order", order);
        self.finish(f);
        // Checks across sections run on what could be decoded, so that one pass reports all.
        // A section that is present but invalid already has its own diagnostic.
        super::check::cross(
            &super::check::CrossView {
                parts: if has_parts {
                    parts.as_ref().map(Some)
                } else {
                    Some(None)
                },
                ucp: if has_ucp {
                    ucp.as_ref().map(Some)
                } else {
                    Some(None)
                },
                dtr: if has_dtr {
                    dtr.as_ref().map(Some)
                } else {
                    Some(None)
                },
                images: if has_images {
                    images.as_ref().map(Some)
                } else {
                    Some(None)
                },
                encryption: if has_encryption {
                    encryption.as_ref().map(Some)
                } else {
                    Some(None)
                },
                destination: destination.as_ref(),
                order: order.as_ref(),
                state: state.as_ref(),
            },
            &mut self.diags,
        );
        Some(RawPlan {
            version: version?,
            name: name?,
            parts,
            ucp,
            docker,
            dtr,
            images,
            destination: destination?,
            encryption,
            retention,
            state,
            preflight,
            verify,
            order,
        })
    }

    fn version(&mut self, at: At) -> Option<Sp<u32>> {
        let v = self.count(at)?;
        if v.value != 1 {
            self.push(
                Diag::error(
                    "plan::unsupported-version",
                    v.span,
                    format!("plan version {} is not supported", v.value),
                )
                .label("this dtr-backup reads version 1")
                .help("write `version: 1`, or upgrade dtr-backup if the plan was written for a newer one"),
            );
            return None;
        }
        Some(v)
    }

    fn plan_name(&mut self, at: At) -> Option<Sp<String>> {
        let name = self.parsed::<PlanName>(
            at,
            "plan::bad-name",
            "use lowercase letters, digits and '-', at most 63 characters, e.g. `dtr-prod`",
        )?;
        Some(Sp {
            value: name.value.to_string(),
            span: name.span,
        })
    }

    fn volume_name(&mut self, at: At) -> Option<Sp<String>> {
        let name = self.parsed::<VolumeName>(
            at,
            "plan::bad-volume-name",
            "give the name of the volume as `docker volume ls` shows it, e.g. `dtr-registry-a1640e1c15b6`",
        )?;
        Some(Sp {
            value: name.value.as_str().to_owned(),
            span: name.span,
        })
    }

    fn parts(&mut self, at: At) -> Option<Sp<Vec<Sp<Part>>>> {
        let parts = self.list(at, |d, at| {
            d.choice(
                at,
                &[("metadata", Part::Metadata), ("images", Part::Images)],
            )
        })?;
        if parts.value.is_empty() {
            self.push(
                Diag::error(
                    "plan::no-parts",
                    parts.span,
                    "`parts` is empty: nothing to back up",
                )
                .label("empty list")
                .help("list `metadata`, `images` or both, or remove `parts` to back up both"),
            );
            return None;
        }
        for (i, p) in parts.value.iter().enumerate() {
            if parts.value[..i].iter().any(|q| q.value == p.value) {
                self.push(
                    Diag::error("plan::duplicate-part", p.span, "this part is listed twice")
                        .label("duplicate")
                        .help("list each part once"),
                );
                return None;
            }
        }
        Some(parts)
    }

    fn ucp(&mut self, at: At) -> Option<Sp<Ucp>> {
        let mut f = self.fields(at)?;
        let url = req!(self, f, "url", valid);
        let username = req!(self, f, "username", string);
        let password = req!(self, f, "password", secret);
        let ca_file = opt!(self, f, "ca_file", path);
        let tls_given = f.entries.iter().any(|e| e.key == "insecure_tls");
        let insecure_tls = opt!(self, f, "insecure_tls", boolean);
        let span = f.at;
        self.finish(f);
        if tls_given == insecure_tls.is_some() {
            super::check::ucp_tls(
                ca_file.as_ref(),
                insecure_tls.as_ref(),
                span,
                &mut self.diags,
            );
        }
        Some(Sp {
            value: Ucp {
                url: url?,
                username: username?,
                password: password?,
                ca_file,
                insecure_tls,
            },
            span,
        })
    }

    fn docker(&mut self, at: At) -> Option<Sp<Docker>> {
        let mut f = self.fields(at)?;
        let host = opt!(self, f, "host", valid);
        let bundle = opt!(self, f, "bundle", path);
        let span = f.at;
        self.finish(f);
        Some(Sp {
            value: Docker { host, bundle },
            span,
        })
    }

    fn dtr(&mut self, at: At) -> Option<Sp<Dtr>> {
        let mut f = self.fields(at)?;
        let image = opt!(self, f, "image", dtr_image);
        let replica = opt!(self, f, "replica", replica);
        let offline = opt!(self, f, "offline", boolean);
        let span = f.at;
        self.finish(f);
        Some(Sp {
            value: Dtr {
                image,
                replica,
                offline,
            },
            span,
        })
    }

    fn replica(&mut self, at: At) -> Option<Sp<ReplicaSel>> {
        self.parsed::<ReplicaSel>(
            at,
            "plan::bad-replica-id",
            "write `auto` or the 12-hex-digit id from a container name such as dtr-rethinkdb-a1640e1c15b6",
        )
    }

    fn dtr_image(&mut self, at: At) -> Option<Sp<String>> {
        let image = self.string(at)?;
        match super::image_version(&image.value) {
            Ok(_) => Some(image),
            Err(why) => {
                self.push(
                    Diag::error(
                        "plan::image-tag",
                        image.span,
                        format!("the DTR image {:?} {why}", image.value),
                    )
                    .label("tag must be the DTR version")
                    .help("restore needs the same DTR version: write the running version, e.g. `docker/dtr:2.9.4`"),
                );
                None
            }
        }
    }

    fn images(&mut self, at: At) -> Option<Sp<ImageSource>> {
        let mut f = self.fields(at)?;
        let span = f.at;
        let kind = self.tag(&mut f, &["volume", "path", "nfs", "s3"]);
        let value = match kind {
            Some("volume") => {
                let name = opt!(self, f, "name", volume_name);
                let helper_image = opt!(self, f, "helper_image", string);
                Some(ImageSource::Volume { name, helper_image })
            }
            Some("path") => {
                let path = req!(self, f, "path", path);
                let name = opt!(self, f, "name", volume_name);
                let allow_empty = opt!(self, f, "allow_empty", boolean);
                path.map(|path| ImageSource::Path {
                    path,
                    name,
                    allow_empty,
                })
            }
            Some("nfs") => {
                let path = req!(self, f, "path", path);
                let server = req!(self, f, "server", valid);
                let name = opt!(self, f, "name", volume_name);
                match (path, server) {
                    (Some(path), Some(server)) => Some(ImageSource::Nfs { path, server, name }),
                    _ => None,
                }
            }
            Some("s3") => self.s3(&mut f).map(|s| ImageSource::S3(Box::new(s))),
            _ => None,
        };
        if kind.is_some() {
            self.finish(f);
        }
        value.map(|value| Sp { value, span })
    }

    fn s3(&mut self, f: &mut Fields) -> Option<S3> {
        let bucket = req!(self, *f, "bucket", valid);
        let prefix = opt!(self, *f, "prefix", valid);
        let region = opt!(self, *f, "region", string);
        let endpoint: Option<Sp<EndpointUrl>> = opt!(self, *f, "endpoint", valid);
        let access_key_id = opt!(self, *f, "access_key_id", secret);
        let secret_access_key = opt!(self, *f, "secret_access_key", secret);
        let allow_http = opt!(self, *f, "allow_http", boolean);
        let path_style = opt!(self, *f, "path_style", boolean);
        let parallel = opt!(self, *f, "parallel", count);
        let allow_empty = opt!(self, *f, "allow_empty", boolean);
        if let Some(p) = &parallel
            && !(1..=64).contains(&p.value)
        {
            self.push(
                Diag::error(
                    "plan::bad-parallel",
                    p.span,
                    "`parallel` must be between 1 and 64",
                )
                .label("out of range")
                .help("copy 4 to 16 objects at once; more rarely helps"),
            );
        }
        if access_key_id.is_some() != secret_access_key.is_some() {
            self.push(
                Diag::error(
                    "plan::s3-credentials",
                    f.at,
                    format!("{} has only one of `access_key_id` and `secret_access_key`", section(&f.path)),
                )
                .label("give both or neither")
                .help("give both as secret references, or neither to use the standard AWS chain (env, profile, instance role)"),
            );
        }
        if let (Some(ep), allow) = (&endpoint, &allow_http)
            && ep.value.is_http()
            && !allow.as_ref().is_some_and(|a| a.value)
        {
            self.push(
                Diag::error(
                    "plan::http-endpoint",
                    ep.span,
                    "this S3 endpoint is plain http, which `allow_http` does not permit",
                )
                .label("http://")
                .help("use https, or add `allow_http: true` (test servers only)"),
            );
        }
        Some(S3 {
            bucket: bucket?,
            prefix,
            region,
            endpoint,
            access_key_id,
            secret_access_key,
            allow_http,
            path_style,
            parallel,
            allow_empty,
        })
    }

    fn destination(&mut self, at: At) -> Option<Sp<Destination>> {
        let mut f = self.fields(at)?;
        let span = f.at;
        let kind = self.tag(&mut f, &["local", "s3"]);
        let value = match kind {
            Some("local") => req!(self, f, "path", path).map(|path| Destination::Local { path }),
            Some("s3") => self.s3(&mut f).map(|s| Destination::S3(Box::new(s))),
            _ => None,
        };
        if kind.is_some() {
            self.finish(f);
        }
        value.map(|value| Sp { value, span })
    }

    fn encryption(&mut self, at: At) -> Option<Sp<Encryption>> {
        let mut f = self.fields(at)?;
        let span = f.at;
        let kind = self.tag(&mut f, &["passphrase", "recipients", "none"]);
        let value = match kind {
            Some("passphrase") => req!(self, f, "passphrase", secret)
                .map(|passphrase| Encryption::Passphrase { passphrase }),
            Some("recipients") => req!(self, f, "recipients", recipients)
                .map(|recipients| Encryption::Recipients { recipients }),
            Some("none") => Some(Encryption::None {}),
            _ => None,
        };
        if kind.is_some() {
            self.finish(f);
        }
        value.map(|value| Sp { value, span })
    }

    fn recipients(&mut self, at: At) -> Option<Sp<Vec<Sp<PathBuf>>>> {
        let list = self.list(at, |d, at| d.path(at))?;
        if list.value.is_empty() {
            self.push(
                Diag::error("plan::no-recipients", list.span, "`recipients` is empty")
                    .label("no key files")
                    .help(
                        "list at least one OpenPGP public key file, e.g. `[keys/backup-ops.asc]`",
                    ),
            );
            return None;
        }
        Some(list)
    }

    fn retention(&mut self, at: At) -> Option<Sp<Retention>> {
        let before = self.diags.len();
        let mut f = self.fields(at)?;
        let r = Retention {
            keep_last: opt!(self, f, "keep_last", count),
            keep_daily: opt!(self, f, "keep_daily", count),
            keep_weekly: opt!(self, f, "keep_weekly", count),
            keep_monthly: opt!(self, f, "keep_monthly", count),
        };
        let span = f.at;
        self.finish(f);
        let keeps = [&r.keep_last, &r.keep_daily, &r.keep_weekly, &r.keep_monthly]
            .iter()
            .any(|k| k.as_ref().is_some_and(|k| k.value > 0));
        if !keeps && self.diags.len() == before {
            self.push(
                Diag::error(
                    "plan::retention-keeps-nothing",
                    span,
                    "this retention keeps no backup: every backup would be deleted",
                )
                .label("no keep rule above 0")
                .help("set at least one of keep_last, keep_daily, keep_weekly, keep_monthly above 0, or remove `retention` to keep everything"),
            );
            return None;
        }
        Some(Sp { value: r, span })
    }

    fn state(&mut self, at: At) -> Option<Sp<StateCfg>> {
        let mut f = self.fields(at)?;
        let path = opt!(self, f, "path", path);
        let span = f.at;
        self.finish(f);
        Some(Sp {
            value: StateCfg { path },
            span,
        })
    }

    fn preflight(&mut self, at: At) -> Option<Sp<Preflight>> {
        let mut f = self.fields(at)?;
        let check_ucp_login = opt!(self, f, "check_ucp_login", boolean);
        let span = f.at;
        self.finish(f);
        Some(Sp {
            value: Preflight { check_ucp_login },
            span,
        })
    }

    fn verify(&mut self, at: At) -> Option<Sp<VerifyCfg>> {
        let mut f = self.fields(at)?;
        let after_apply = opt!(self, f, "after_apply", boolean);
        let key = opt!(self, f, "key", secret);
        let key_passphrase = opt!(self, f, "key_passphrase", secret);
        let span = f.at;
        self.finish(f);
        Some(Sp {
            value: VerifyCfg {
                after_apply,
                key,
                key_passphrase,
            },
            span,
        })
    }

    fn order(&mut self, at: At) -> Option<Sp<Order>> {
        self.choice(
            at,
            &[
                ("metadata-first", Order::MetadataFirst),
                ("images-first", Order::ImagesFirst),
            ],
        )
    }
}
