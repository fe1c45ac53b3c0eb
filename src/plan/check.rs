//! Checks across sections, then resolution of [`RawPlan`] into [`Plan`].

use std::path::{Component, Path, PathBuf};

use super::diag::Diag;
use super::raw::{self, Part, RawPlan, Sp};
use super::yaml::Span;
use super::*;

const ENCRYPTION_EXAMPLE: &str = "add `encryption: {type: passphrase, passphrase: {env: DTR_BACKUP_PASSPHRASE}}` \
(or `type: recipients` with public key files); to store the keys in clear on purpose, write `encryption: {type: none}`";

/// What decoding produced of each section: `None` when the section is present but invalid
/// (it has its own diagnostic, so checks that need it are skipped), `Some(None)` when absent.
pub struct CrossView<'a> {
    pub parts: Option<Option<&'a Sp<Vec<Sp<Part>>>>>,
    pub ucp: Option<Option<&'a Sp<raw::Ucp>>>,
    pub dtr: Option<Option<&'a Sp<raw::Dtr>>>,
    pub images: Option<Option<&'a Sp<raw::ImageSource>>>,
    pub encryption: Option<Option<&'a Sp<raw::Encryption>>>,
    pub destination: Option<&'a Sp<raw::Destination>>,
    pub order: Option<&'a Sp<Order>>,
    pub state: Option<&'a Sp<raw::StateCfg>>,
}

/// Which parts a plan backs up: `parts`, or metadata and images by default.
#[derive(Clone, Copy)]
struct Parts {
    ucp: bool,
    metadata: bool,
    images: bool,
}

fn parts_of(parts: Option<&Sp<Vec<Sp<Part>>>>) -> Parts {
    match parts {
        None => Parts {
            ucp: false,
            metadata: true,
            images: true,
        },
        Some(p) => {
            let has = |part| p.value.iter().any(|p| p.value == part);
            Parts {
                ucp: has(Part::Ucp),
                metadata: has(Part::Metadata),
                images: has(Part::Images),
            }
        }
    }
}

/// Checks the sections against each other. Adds to `diags`.
pub fn cross(v: &CrossView, diags: &mut Vec<Diag>) {
    let top = Span {
        offset: 0,
        len: 0,
        line: 1,
        column: 1,
    };
    // Without a readable `parts`, which sections are needed is unknown.
    let Some(parts) = v.parts else { return };
    let parts_span = parts.map_or(top, |p| p.span);
    let Parts {
        ucp: ucp_part,
        metadata,
        images: images_part,
    } = parts_of(parts);
    let parts_note = if parts.is_some() {
        "`parts` lists"
    } else {
        "`parts` is not given, so it defaults to metadata and images; it includes"
    };

    if ucp_part {
        match v.ucp {
            Some(None) => diags.push(
                Diag::error(
                    "plan::missing-section",
                    parts_span,
                    "backing up UCP needs a `ucp` section with `image`",
                )
                .label("`parts` lists ucp")
                .help("add `ucp:` with `url`, `username`, `password`, `ca_file` and `image: docker/ucp:<running version>`, or remove `ucp` from `parts`"),
            ),
            Some(Some(u)) if u.value.image.is_none() => diags.push(
                Diag::error(
                    "plan::missing-key",
                    u.span,
                    "backing up UCP needs `ucp.image`, the UCP image of the running version",
                )
                .label("no ucp.image")
                .help("add `image: docker/ucp:<running version>` (or `mirantis/ucp:<version>`) to `ucp`; restore needs the same version"),
            ),
            _ => {}
        }
        if !metadata {
            match v.encryption {
                Some(None) => diags.push(
                    Diag::error(
                        "plan::encryption-required",
                        parts_span,
                        "UCP's backup holds the cluster's certificates and private keys, and this plan does not say how to encrypt it",
                    )
                    .label("`parts` lists ucp")
                    .help(ENCRYPTION_EXAMPLE),
                ),
                Some(Some(Sp {
                    value: raw::Encryption::None {},
                    span,
                })) => diags.push(
                    Diag::warning(
                        "plan::unencrypted",
                        *span,
                        "UCP's backup will be stored unencrypted, private keys included",
                    )
                    .label("type: none")
                    .help("use `type: passphrase` or `type: recipients` unless the destination is itself encrypted and access-controlled"),
                ),
                _ => {}
            }
        }
    } else if let Some(Some(u)) = v.ucp
        && let Some(image) = &u.value.image
    {
        diags.push(
            Diag::warning(
                "plan::unused-key",
                image.span,
                "`ucp.image` is not used: `parts` does not include ucp",
            )
            .label("unused")
            .help("add `ucp` to `parts` to back up UCP in the same run, or remove `ucp.image`"),
        );
    }

    if metadata {
        if matches!(v.ucp, Some(None)) {
            diags.push(
                Diag::error(
                    "plan::missing-section",
                    parts_span,
                    "backing up metadata needs a `ucp` section",
                )
                .label(format!("{parts_note} metadata"))
                .help("add `ucp:` with `url`, `username`, `password` and `ca_file`, or set `parts: [images]`"),
            );
        }
        if let Some(dtr) = v.dtr
            && dtr.is_none_or(|d| d.value.image.is_none())
        {
            let span = dtr.map_or(parts_span, |d| d.span);
            diags.push(
                Diag::error(
                    "plan::missing-key",
                    span,
                    "backing up metadata needs `dtr.image`, the DTR image of the running version",
                )
                .label("no dtr.image")
                .help("add `dtr: {image: docker/dtr:<running version>}`; restore needs the same version"),
            );
        }
        match v.encryption {
            Some(None) => diags.push(
                Diag::error(
                    "plan::encryption-required",
                    parts_span,
                    "the metadata archive holds DTR's private keys, and this plan does not say how to encrypt it",
                )
                .label(format!("{parts_note} metadata"))
                .help(ENCRYPTION_EXAMPLE),
            ),
            Some(Some(Sp {
                value: raw::Encryption::None {},
                span,
            })) => diags.push(
                Diag::warning(
                    "plan::unencrypted",
                    *span,
                    "metadata will be stored unencrypted, private keys included",
                )
                .label("type: none")
                .help("use `type: passphrase` or `type: recipients` unless the destination is itself encrypted and access-controlled"),
            ),
            _ => {}
        }
    } else if !ucp_part && let Some(Some(ucp)) = v.ucp {
        diags.push(
            Diag::warning(
                "plan::unused-section",
                ucp.span,
                "`ucp` is not used: `parts` includes neither metadata nor ucp",
            )
            .label("unused")
            .help("remove `ucp`, or add `metadata` or `ucp` to `parts`"),
        );
    }

    if let Some(Some(dtr)) = v.dtr
        && let Some(ro) = &dtr.value.read_only_during_backup
        && ro.value
    {
        if dtr.value.external_url.is_none() {
            diags.push(
                Diag::error(
                    "plan::missing-key",
                    ro.span,
                    "the read-only window is set through DTR's API, and `dtr.external_url` is not given",
                )
                .label("needs dtr.external_url")
                .help("add `external_url: https://<DTR's address>` to `dtr`, or remove `read_only_during_backup`"),
            );
        }
        if !metadata {
            diags.push(
                Diag::error(
                    "plan::read-only-without-metadata",
                    ro.span,
                    "the read-only window spans metadata and images, and this plan backs up no metadata",
                )
                .label("read_only_during_backup")
                .help("add `metadata` to `parts` (with its `ucp` section: DTR's API takes UCP's admin credentials), or remove `read_only_during_backup`"),
            );
        }
    }

    if images_part && matches!(v.images, Some(None)) {
        diags.push(
            Diag::error(
                "plan::missing-section",
                parts_span,
                "backing up images needs an `images` section saying where DTR keeps image content",
            )
            .label(format!("{parts_note} images"))
            .help("add `images: {type: volume}` for DTR's default local storage, or set `parts: [metadata]`"),
        );
    } else if !images_part && let Some(Some(images)) = v.images {
        diags.push(
            Diag::warning(
                "plan::unused-section",
                images.span,
                "`images` is not used: `parts` does not include images",
            )
            .label("unused")
            .help("remove `images`, or add `images` to `parts`"),
        );
    }

    if let Some(order) = v.order
        && order.value == Order::ImagesFirst
        && metadata
        && images_part
    {
        diags.push(
            Diag::warning(
                "plan::images-first",
                order.span,
                "copying images before metadata loses blobs pushed in between at restore",
            )
            .label("images-first")
            .help("keep the default `metadata-first` (the copy of images is then a superset), or make the registry read-only during the backup"),
        );
    }

    if let (Some(dest), Some(state)) = (v.destination, v.state)
        && matches!(dest.value, raw::Destination::S3(_))
        && let Some(path) = &state.value.path
    {
        diags.push(
            Diag::warning(
                "plan::local-state",
                path.span,
                "with `state.path`, the lock and journal are on this machine: runs of this plan on other machines do not see them",
            )
            .label("local to this machine")
            .help("remove `state.path` to keep them in the bucket beside the backups, or run this plan from one machine only"),
        );
    }

    if let (Some(Some(images)), Some(dest)) = (v.images, v.destination)
        && let (
            raw::ImageSource::Path { path: src, .. } | raw::ImageSource::Nfs { path: src, .. },
            raw::Destination::Local { path: dst },
        ) = (&images.value, &dest.value)
    {
        // Both are relative to the same plan folder, so a lexical comparison is enough.
        let base = Path::new("/plan");
        let (s, d) = (absolute(base, &src.value), absolute(base, &dst.value));
        if d.starts_with(&s) || s.starts_with(&d) {
            diags.push(
                Diag::error(
                    "plan::destination-overlaps-source",
                    dst.span,
                    "the destination and the image content contain one another",
                )
                .label("overlaps the images path")
                .help(
                    "back up to a folder outside the registry storage (a backup would copy itself)",
                ),
            );
        }
    }
}

/// Resolves a plan that decoded without errors: defaults, absolute paths, typed values.
pub fn resolve(raw: RawPlan, file: &Path, dir: &Path, digest: String) -> Option<Plan> {
    let Parts {
        ucp: ucp_part,
        metadata,
        images: images_part,
    } = parts_of(raw.parts.as_ref());
    let destination = match &raw.destination.value {
        raw::Destination::Local { path } => DestinationCfg::Local {
            path: absolute(dir, &path.value),
        },
        raw::Destination::S3(s3) => DestinationCfg::S3(s3_cfg(s3, dir)),
    };
    let images = raw
        .images
        .as_ref()
        .filter(|_| images_part)
        .map(|i| images_cfg(&i.value, dir));
    let dtr = raw.dtr.as_ref().map(|d| &d.value);
    let image = dtr.and_then(|d| d.image.as_ref()).map(|i| i.value.clone());
    let version = image.as_deref().and_then(|i| image_version(i).ok());
    let encryption = match raw.encryption.as_ref().map(|e| &e.value) {
        None | Some(raw::Encryption::None {}) => EncryptionCfg::None,
        Some(raw::Encryption::Passphrase { passphrase }) => {
            EncryptionCfg::Passphrase(secret(&passphrase.value, dir))
        }
        Some(raw::Encryption::Recipients { recipients }) => EncryptionCfg::Recipients(
            recipients
                .value
                .iter()
                .map(|r| absolute(dir, &r.value))
                .collect(),
        ),
    };
    let docker = raw.docker.as_ref().map(|d| &d.value);
    Some(Plan {
        name: raw.name.value.parse().ok()?,
        file: file.to_path_buf(),
        digest,
        metadata,
        ucp_backup: ucp_part,
        images,
        order: raw.order.map_or(Order::MetadataFirst, |o| o.value),
        ucp: raw
            .ucp
            .as_ref()
            .filter(|_| metadata || ucp_part)
            .map(|u| UcpCfg {
                url: u.value.url.value.clone(),
                username: u.value.username.value.clone(),
                password: secret(&u.value.password.value, dir),
                tls: match &u.value.ca_file {
                    Some(ca) => UcpTls::Ca(absolute(dir, &ca.value)),
                    None => UcpTls::Insecure,
                },
                image: u.value.image.as_ref().map(|i| i.value.clone()),
                docker_socket: u
                    .value
                    .docker_socket
                    .as_ref()
                    .map_or_else(|| "/var/run/docker.sock".to_owned(), |s| s.value.clone()),
                version: u
                    .value
                    .image
                    .as_ref()
                    .and_then(|i| image_version(&i.value).ok()),
            }),
        docker: DockerCfg {
            host: docker
                .and_then(|d| d.host.as_ref())
                .map(|h| h.value.clone()),
            bundle: docker
                .and_then(|d| d.bundle.as_ref())
                .map(|b| absolute(dir, &b.value)),
        },
        dtr: DtrCfg {
            image,
            version,
            replica: dtr
                .and_then(|d| d.replica.as_ref())
                .map(|r| r.value.clone())
                .unwrap_or_default(),
            offline: dtr
                .and_then(|d| d.offline.as_ref())
                .is_some_and(|o| o.value),
            external_url: dtr
                .and_then(|d| d.external_url.as_ref())
                .map(|u| u.value.clone()),
            read_only_window: metadata
                && dtr
                    .and_then(|d| d.read_only_during_backup.as_ref())
                    .is_some_and(|r| r.value),
            ca_file: dtr
                .and_then(|d| d.ca_file.as_ref())
                .map(|p| absolute(dir, &p.value)),
        },
        destination,
        encryption,
        retention: raw.retention.as_ref().map(|r| {
            let get = |k: &Option<Sp<u32>>| k.as_ref().map_or(0, |k| k.value);
            RetentionCfg {
                keep_last: get(&r.value.keep_last),
                keep_daily: get(&r.value.keep_daily),
                keep_weekly: get(&r.value.keep_weekly),
                keep_monthly: get(&r.value.keep_monthly),
            }
        }),
        state_path: raw
            .state
            .as_ref()
            .and_then(|s| s.value.path.as_ref())
            .map(|p| absolute(dir, &p.value)),
        lock_lease: raw
            .state
            .as_ref()
            .and_then(|s| s.value.lock_lease.as_ref())
            .map_or(DEFAULT_LOCK_LEASE, |l| l.value),
        check_ucp_login: raw
            .preflight
            .as_ref()
            .and_then(|p| p.value.check_ucp_login.as_ref())
            .is_none_or(|c| c.value),
        verify_after_apply: raw
            .verify
            .as_ref()
            .and_then(|v| v.value.after_apply.as_ref())
            .is_none_or(|a| a.value),
        verify_key: raw
            .verify
            .as_ref()
            .and_then(|v| v.value.key.as_ref())
            .map(|k| secret(&k.value, dir)),
        verify_key_passphrase: raw
            .verify
            .as_ref()
            .and_then(|v| v.value.key_passphrase.as_ref())
            .map(|k| secret(&k.value, dir)),
        hooks: raw.hooks.as_ref().map_or_else(HooksCfg::default, |h| {
            let argvs = |c: &Option<Sp<raw::Commands>>| {
                c.as_ref().map_or_else(Vec::new, |c| {
                    c.value
                        .iter()
                        .map(|argv| argv.value.iter().map(|a| a.value.clone()).collect())
                        .collect()
                })
            };
            HooksCfg {
                before: argvs(&h.value.before),
                after: argvs(&h.value.after),
                on_error: argvs(&h.value.on_error),
                timeout: h
                    .value
                    .timeout
                    .as_ref()
                    .map_or(HooksCfg::default().timeout, |t| t.value),
            }
        }),
        notify: raw.notify.as_ref().map_or_else(Vec::new, |n| {
            n.value.iter().map(|n| notify_cfg(&n.value, dir)).collect()
        }),
        metrics_textfile: raw
            .metrics
            .as_ref()
            .map(|m| absolute(dir, &m.value.textfile.value)),
    })
}

fn notify_cfg(n: &raw::Notifier, dir: &Path) -> NotifyCfg {
    let (kind, url, on) = match n {
        raw::Notifier::Healthchecks { url, on } => (NotifyKind::Healthchecks, url, on),
        raw::Notifier::Webhook { url, on } => (NotifyKind::Webhook, url, on),
    };
    let has = |o| {
        on.as_ref()
            .is_none_or(|on| on.value.iter().any(|x| x.value == o))
    };
    NotifyCfg {
        kind,
        url: match &url.value {
            raw::UrlRef::Url(u) => UrlSource::Literal(u.clone()),
            raw::UrlRef::Secret(r) => UrlSource::Secret(secret(r, dir)),
        },
        on_success: has(raw::NotifyOn::Success),
        on_failure: has(raw::NotifyOn::Failure),
    }
}

/// Exactly one of `ca_file` and `insecure_tls: true` (a check within the `ucp` section).
pub fn ucp_tls(
    ca_file: Option<&Sp<PathBuf>>,
    insecure_tls: Option<&Sp<bool>>,
    span: Span,
    diags: &mut Vec<Diag>,
) -> Option<UcpTls> {
    let insecure = insecure_tls.filter(|i| i.value);
    match (ca_file, insecure) {
        (Some(ca), Some(insecure)) => {
            diags.push(
                Diag::error(
                    "plan::tls-conflict",
                    insecure.span,
                    "`ucp` has both `ca_file` and `insecure_tls: true`",
                )
                .label("conflicts with ca_file")
                .help(format!(
                    "remove `insecure_tls`: with `ca_file: {}` UCP is verified properly",
                    ca.value.display()
                )),
            );
            None
        }
        (Some(ca), None) => Some(UcpTls::Ca(ca.value.clone())),
        (None, Some(insecure)) => {
            diags.push(
                Diag::warning(
                    "plan::insecure-tls",
                    insecure.span,
                    "UCP's certificate will not be verified: a man in the middle could take the password",
                )
                .label("insecure_tls: true")
                .help("download UCP's CA (`curl -k https://<ucp>/ca > ucp-ca.pem`), check it, and set `ca_file: ucp-ca.pem`"),
            );
            Some(UcpTls::Insecure)
        }
        (None, None) => {
            diags.push(
                Diag::error(
                    "plan::tls-missing",
                    span,
                    "`ucp` must say how to verify UCP's certificate",
                )
                .label("no ca_file")
                .help("add `ca_file: ucp-ca.pem` (from https://<ucp>/ca), or `insecure_tls: true` knowingly"),
            );
            None
        }
    }
}

fn images_cfg(images: &raw::ImageSource, dir: &Path) -> ImagesCfg {
    let name = |n: &Option<Sp<String>>| n.as_ref().map(|n| n.value.clone());
    let mode = |m: &Option<Sp<ImagesMode>>| m.as_ref().map_or(ImagesMode::Incremental, |m| m.value);
    match images {
        raw::ImageSource::Volume {
            name: n,
            helper_image,
            mode: m,
        } => ImagesCfg::Volume {
            name: name(n),
            helper_image: name(helper_image),
            mode: mode(m),
        },
        raw::ImageSource::Path {
            path,
            name: n,
            allow_empty,
            mode: m,
        } => ImagesCfg::Path {
            path: absolute(dir, &path.value),
            name: name(n),
            allow_empty: allow_empty.as_ref().is_some_and(|a| a.value),
            mode: mode(m),
        },
        raw::ImageSource::Nfs {
            path,
            server,
            name: n,
            mode: m,
        } => ImagesCfg::Nfs {
            path: absolute(dir, &path.value),
            server: server.value.clone(),
            name: name(n),
            mode: mode(m),
        },
        raw::ImageSource::S3(s3) => ImagesCfg::S3(s3_cfg(s3, dir)),
    }
}

fn s3_cfg(s3: &raw::S3, dir: &Path) -> S3Cfg {
    S3Cfg {
        bucket: s3.bucket.value.clone(),
        prefix: s3
            .prefix
            .as_ref()
            .map(|p| p.value.clone())
            .unwrap_or_default(),
        region: s3.region.as_ref().map(|r| r.value.clone()),
        endpoint: s3.endpoint.as_ref().map(|e| e.value.clone()),
        access_key_id: s3.access_key_id.as_ref().map(|s| secret(&s.value, dir)),
        secret_access_key: s3.secret_access_key.as_ref().map(|s| secret(&s.value, dir)),
        allow_http: s3.allow_http.as_ref().is_some_and(|a| a.value),
        path_style: s3.path_style.as_ref().is_some_and(|a| a.value),
        parallel: s3.parallel.as_ref().map(|p| p.value),
        allow_empty: s3.allow_empty.as_ref().is_some_and(|a| a.value),
    }
}

fn secret(s: &SecretRef, dir: &Path) -> SecretRef {
    match s {
        SecretRef::File(p) => SecretRef::File(absolute(dir, p)),
        other => other.clone(),
    }
}

/// `path` relative to the plan's folder, with `.` and `..` folded lexically.
fn absolute(dir: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        let base = if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|cwd| cwd.join(dir))
                .unwrap_or_else(|_| dir.to_path_buf())
        };
        base.join(path)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
