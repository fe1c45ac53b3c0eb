//! One function per plan section, each built from the decoder's primitives.

use std::path::PathBuf;

use crate::plan::addresses::EndpointUrl;
use crate::plan::diag::Diag;
use crate::plan::names::{PlanName, ReplicaSel, VolumeName};
use crate::plan::raw::*;
use crate::plan::yaml::{Node, Span, Value};

use super::{At, Decoder, Fields, section};

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
        let hooks = opt!(self, f, "hooks", hooks);
        let notify = opt!(self, f, "notify", notifiers);
        let metrics = opt!(self, f, "metrics", metrics);
        self.finish(f);
        // Checks across sections run on what could be decoded, so that one pass reports all.
        // A section that is present but invalid already has its own diagnostic.
        crate::plan::check::cross(
            &crate::plan::check::CrossView {
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
            hooks,
            notify,
            metrics,
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

    fn images_mode(&mut self, at: At) -> Option<Sp<ImagesMode>> {
        self.choice(
            at,
            &[
                ("incremental", ImagesMode::Incremental),
                ("archive", ImagesMode::Archive),
            ],
        )
    }

    fn parts(&mut self, at: At) -> Option<Sp<Vec<Sp<Part>>>> {
        let parts = self.list(at, |d, at| {
            d.choice(
                at,
                &[
                    ("ucp", Part::Ucp),
                    ("metadata", Part::Metadata),
                    ("images", Part::Images),
                ],
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
                .help("list `ucp`, `metadata`, `images` or several, or remove `parts` to back up metadata and images"),
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
        // A key given but invalid (it has its own diagnostic) makes the section invalid, so
        // that the checks across sections do not also call it missing.
        let given = |k: &str| f.entries.iter().any(|e| e.key == k);
        let (image_given, socket_given) = (given("image"), given("docker_socket"));
        let image = opt!(self, f, "image", ucp_image);
        let docker_socket = opt!(self, f, "docker_socket", node_path);
        let span = f.at;
        self.finish(f);
        if tls_given == insecure_tls.is_some() {
            crate::plan::check::ucp_tls(
                ca_file.as_ref(),
                insecure_tls.as_ref(),
                span,
                &mut self.diags,
            );
        }
        if (image_given && image.is_none()) || (socket_given && docker_socket.is_none()) {
            return None;
        }
        Some(Sp {
            value: Ucp {
                url: url?,
                username: username?,
                password: password?,
                ca_file,
                insecure_tls,
                image,
                docker_socket,
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
        // As for `ucp`: an invalid image is not also a missing one.
        let image_given = f.entries.iter().any(|e| e.key == "image");
        let image = opt!(self, f, "image", dtr_image);
        let replica = opt!(self, f, "replica", replica);
        let offline = opt!(self, f, "offline", boolean);
        let external_url = opt!(self, f, "external_url", valid);
        let read_only_during_backup = opt!(self, f, "read_only_during_backup", boolean);
        let ca_file = opt!(self, f, "ca_file", path);
        let span = f.at;
        self.finish(f);
        if image_given && image.is_none() {
            return None;
        }
        Some(Sp {
            value: Dtr {
                image,
                replica,
                offline,
                external_url,
                read_only_during_backup,
                ca_file,
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
        match crate::plan::image_version(&image.value) {
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

    /// An absolute path on a node (not the plan's machine: never made relative to the plan).
    fn node_path(&mut self, at: At) -> Option<Sp<String>> {
        let path = self.string(at)?;
        if path.value.starts_with('/') && !path.value.split('/').any(|c| c == "..") {
            return Some(path);
        }
        self.push(
            Diag::error(
                "plan::bad-path",
                path.span,
                format!("{:?} is not an absolute path", path.value),
            )
            .label("must start with /")
            .help(
                "write the socket's absolute path on the manager node, e.g. `/var/run/docker.sock`",
            ),
        );
        None
    }

    fn ucp_image(&mut self, at: At) -> Option<Sp<String>> {
        let image = self.string(at)?;
        match crate::plan::image_version(&image.value) {
            Ok(_) => Some(image),
            Err(why) => {
                self.push(
                    Diag::error(
                        "plan::image-tag",
                        image.span,
                        format!("the UCP image {:?} {why}", image.value),
                    )
                    .label("tag must be the UCP version")
                    .help("UCP backs up and restores only with its own version: write the running version, e.g. `docker/ucp:3.2.6` or `mirantis/ucp:3.3.16`"),
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
                let mode = opt!(self, f, "mode", images_mode);
                Some(ImageSource::Volume {
                    name,
                    helper_image,
                    mode,
                })
            }
            Some("path") => {
                let path = req!(self, f, "path", path);
                let name = opt!(self, f, "name", volume_name);
                let allow_empty = opt!(self, f, "allow_empty", boolean);
                let mode = opt!(self, f, "mode", images_mode);
                path.map(|path| ImageSource::Path {
                    path,
                    name,
                    allow_empty,
                    mode,
                })
            }
            Some("nfs") => {
                let path = req!(self, f, "path", path);
                let server = req!(self, f, "server", valid);
                let name = opt!(self, f, "name", volume_name);
                let mode = opt!(self, f, "mode", images_mode);
                match (path, server) {
                    (Some(path), Some(server)) => Some(ImageSource::Nfs {
                        path,
                        server,
                        name,
                        mode,
                    }),
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
        let lock_lease = opt!(self, f, "lock_lease", duration);
        let span = f.at;
        self.finish(f);
        if let Some(l) = &lock_lease
            && l.value < std::time::Duration::from_secs(10)
        {
            self.push(
                Diag::error(
                    "plan::bad-duration",
                    l.span,
                    "`state.lock_lease` is shorter than 10 s",
                )
                .label("too short")
                .help("give at least `10s`; the default `15m` suits nightly runs"),
            );
            return None;
        }
        Some(Sp {
            value: StateCfg { path, lock_lease },
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

    fn hooks(&mut self, at: At) -> Option<Sp<Hooks>> {
        let mut f = self.fields(at)?;
        let before = opt!(self, f, "before", commands);
        let after = opt!(self, f, "after", commands);
        let on_error = opt!(self, f, "on_error", commands);
        let timeout = opt!(self, f, "timeout", duration);
        let span = f.at;
        self.finish(f);
        Some(Sp {
            value: Hooks {
                before,
                after,
                on_error,
                timeout,
            },
            span,
        })
    }

    /// A list of commands, each an argv list: `[[/usr/local/bin/lb-drain, dtr-1]]`.
    fn commands(&mut self, at: At) -> Option<Sp<Commands>> {
        self.list(at, |d, at| {
            if matches!(at.node.value, Value::Str(_)) {
                d.push(
                    Diag::error(
                        "plan::hook-not-argv",
                        at.span(),
                        format!("`{}` is a string; a hook is a list of arguments", at.path),
                    )
                    .label("not a list")
                    .help("write the program and its arguments as a list, e.g. `[/usr/local/bin/lb-drain, dtr-1]`; hooks run without a shell"),
                );
                return None;
            }
            let argv = d.list(at, |d, at| d.string(at))?;
            if argv.value.is_empty() {
                d.push(
                    Diag::error(
                        "plan::hook-not-argv",
                        at.span(),
                        format!("`{}` is an empty command", at.path),
                    )
                    .label("empty")
                    .help("give the program and its arguments, e.g. `[/usr/local/bin/lb-drain, dtr-1]`"),
                );
                return None;
            }
            Some(Sp {
                value: argv.value,
                span: at.span(),
            })
        })
    }

    fn duration(&mut self, at: At) -> Option<Sp<std::time::Duration>> {
        let s = self.string(at)?;
        match crate::clock::parse_duration(&s.value) {
            Ok(d) if !d.is_zero() => Some(Sp {
                value: d,
                span: s.span,
            }),
            Ok(_) => {
                self.push(
                    Diag::error(
                        "plan::bad-duration",
                        s.span,
                        format!("`{}` is zero", at.path),
                    )
                    .label("zero")
                    .help("give a time above zero, e.g. `5m`"),
                );
                None
            }
            Err(why) => {
                self.push(
                    Diag::error("plan::bad-duration", s.span, why)
                        .label("not a duration")
                        .help("write a number with s, m, h or d, e.g. `90s` or `5m`"),
                );
                None
            }
        }
    }

    fn notifiers(&mut self, at: At) -> Option<Sp<Vec<Sp<Notifier>>>> {
        let list = self.list(at, |d, at| d.notifier(at))?;
        if list.value.is_empty() {
            self.push(
                Diag::error("plan::no-notifiers", list.span, "`notify` is empty")
                    .label("no notifier")
                    .help("list a `type: healthchecks` or `type: webhook` notifier, or remove `notify`"),
            );
            return None;
        }
        Some(list)
    }

    fn notifier(&mut self, at: At) -> Option<Sp<Notifier>> {
        let mut f = self.fields(at)?;
        let span = f.at;
        let kind = self.tag(&mut f, &["healthchecks", "webhook"]);
        let url = kind.and_then(|_| req!(self, f, "url", url_ref));
        let on = kind.and_then(|_| opt!(self, f, "on", notify_on));
        if kind.is_some() {
            self.finish(f);
        }
        let value = match kind? {
            "healthchecks" => Notifier::Healthchecks { url: url?, on },
            _ => Notifier::Webhook { url: url?, on },
        };
        Some(Sp { value, span })
    }

    /// A URL, written out or as a secret reference. Either way it is masked wherever the
    /// plan is shown: ping and webhook URLs carry their own credentials.
    fn url_ref(&mut self, at: At) -> Option<Sp<UrlRef>> {
        if matches!(at.node.value, Value::Map(_)) {
            let secret = self.secret_ref(at)?;
            return Some(Sp {
                value: UrlRef::Secret(secret.value),
                span: secret.span,
            });
        }
        super::spans_within(at.node, &mut self.masked);
        let url = self.string(at)?;
        let rest = url
            .value
            .strip_prefix("https://")
            .or_else(|| url.value.strip_prefix("http://"));
        let host_ok = rest.is_some_and(|r| {
            let host = r.split(['/', '?', '#']).next().unwrap_or("");
            !host.is_empty() && !host.contains(char::is_whitespace)
        });
        if !host_ok || url.value.contains(char::is_whitespace) {
            self.push(
                Diag::error(
                    "plan::bad-url",
                    url.span,
                    format!("`{}` is not an http:// or https:// URL", at.path),
                )
                .label("not a URL")
                .help("write the whole URL, e.g. `https://hc-ping.com/<uuid>`, or a secret reference `{env: HC_PING_URL}`"),
            );
            return None;
        }
        Some(Sp {
            value: UrlRef::Url(url.value),
            span: url.span,
        })
    }

    fn notify_on(&mut self, at: At) -> Option<Sp<Vec<Sp<NotifyOn>>>> {
        let list = self.list(at, |d, at| {
            d.choice(
                at,
                &[
                    ("success", NotifyOn::Success),
                    ("failure", NotifyOn::Failure),
                ],
            )
        })?;
        if list.value.is_empty() {
            self.push(
                Diag::error(
                    "plan::no-outcomes",
                    list.span,
                    "`on` is empty: this notifier would never be sent",
                )
                .label("empty list")
                .help("write `on: [failure]`, `on: [success]`, or remove `on` for both"),
            );
            return None;
        }
        Some(list)
    }

    fn metrics(&mut self, at: At) -> Option<Sp<Metrics>> {
        let mut f = self.fields(at)?;
        let textfile = req!(self, f, "textfile", path);
        let span = f.at;
        self.finish(f);
        Some(Sp {
            value: Metrics {
                textfile: textfile?,
            },
            span,
        })
    }
}
