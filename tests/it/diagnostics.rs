//! Each plan mistake gives a diagnostic with a stable code, the exact line and column, and a
//! rendering (miette, no colour, 80 columns) kept as a snapshot.

use std::path::Path;

use dtr_backup::plan::{self, Severity};

struct Case {
    name: &'static str,
    yaml: &'static str,
    code: &'static str,
    line: usize,
    column: usize,
    severity: Severity,
}

const fn err(
    name: &'static str,
    yaml: &'static str,
    code: &'static str,
    line: usize,
    column: usize,
) -> Case {
    Case {
        name,
        yaml,
        code,
        line,
        column,
        severity: Severity::Error,
    }
}

const fn warn(
    name: &'static str,
    yaml: &'static str,
    code: &'static str,
    line: usize,
    column: usize,
) -> Case {
    Case {
        name,
        yaml,
        code,
        line,
        column,
        severity: Severity::Warning,
    }
}

const CASES: &[Case] = &[
    err(
        "syntax_bad_indent",
        "version: 1\nname: p\ndestination:\n  type: local\n path: /b\n",
        "plan::syntax",
        5,
        2,
    ),
    err(
        "duplicate_key",
        "version: 1\nname: p\nname: q\n",
        "plan::duplicate-key",
        3,
        1,
    ),
    err(
        "empty_file",
        "# nothing but a comment\n",
        "plan::empty",
        1,
        1,
    ),
    err(
        "unknown_top_key",
        "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /r}\ndestinaton:\n  type: local\n",
        "plan::unknown-key",
        5,
        1,
    ),
    err(
        "unknown_nested_key",
        "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /r}\ndestination: {type: local, path: /b}\nretention:\n  keep_lsat: 7\n",
        "plan::unknown-key",
        7,
        3,
    ),
    err(
        "wrong_type_count",
        "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /r}\ndestination: {type: local, path: /b}\nretention:\n  keep_last: seven\n",
        "plan::wrong-type",
        7,
        14,
    ),
    err(
        "missing_destination",
        "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /r}\n",
        "plan::missing-key",
        1,
        1,
    ),
    err(
        "unsupported_version",
        "version: 2\nname: p\nparts: [images]\nimages: {type: path, path: /r}\ndestination: {type: local, path: /b}\n",
        "plan::unsupported-version",
        1,
        10,
    ),
    err(
        "bad_name",
        "version: 1\nname: Prod_DTR\nparts: [images]\nimages: {type: path, path: /r}\ndestination: {type: local, path: /b}\n",
        "plan::bad-name",
        2,
        7,
    ),
    err(
        "unknown_part",
        "version: 1\nname: p\nparts: [images, metdata]\nimages: {type: path, path: /r}\ndestination: {type: local, path: /b}\n",
        "plan::unknown-value",
        3,
        17,
    ),
    err(
        "bad_replica_id",
        "version: 1\nname: p\nparts: [images]\ndtr:\n  replica: a1640e1c15\nimages: {type: volume}\ndestination: {type: local, path: /b}\n",
        "plan::bad-replica-id",
        5,
        12,
    ),
    err(
        "http_ucp_url",
        "version: 1\nname: p\nparts: [metadata]\nucp:\n  url: http://ucp.example.com\n  username: admin\n  password: {env: UCP_PASSWORD}\n  ca_file: ca.pem\ndtr: {image: docker/dtr:2.9.4}\ndestination: {type: local, path: /b}\nencryption: {type: passphrase, passphrase: {env: P}}\n",
        "plan::insecure-url",
        5,
        8,
    ),
    err(
        "tls_conflict",
        "version: 1\nname: p\nparts: [metadata]\nucp:\n  url: https://ucp.example.com\n  username: admin\n  password: {env: UCP_PASSWORD}\n  ca_file: ca.pem\n  insecure_tls: true\ndtr: {image: docker/dtr:2.9.4}\ndestination: {type: local, path: /b}\nencryption: {type: passphrase, passphrase: {env: P}}\n",
        "plan::tls-conflict",
        9,
        17,
    ),
    err(
        "tls_missing",
        "version: 1\nname: p\nparts: [metadata]\nucp:\n  url: https://ucp.example.com\n  username: admin\n  password: {env: UCP_PASSWORD}\ndtr: {image: docker/dtr:2.9.4}\ndestination: {type: local, path: /b}\nencryption: {type: passphrase, passphrase: {env: P}}\n",
        "plan::tls-missing",
        4,
        1,
    ),
    err(
        "literal_secret",
        "version: 1\nname: p\nparts: [metadata]\nucp:\n  url: https://ucp.example.com\n  username: admin\n  password: hunter2\n  ca_file: ca.pem\ndtr: {image: docker/dtr:2.9.4}\ndestination: {type: local, path: /b}\nencryption: {type: passphrase, passphrase: {env: P}}\n",
        "plan::literal-secret",
        7,
        13,
    ),
    err(
        "bad_env_name",
        "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /r}\ndestination: {type: local, path: /b}\nencryption:\n  type: passphrase\n  passphrase: {env: 1PASS}\n",
        "plan::bad-secret-ref",
        8,
        21,
    ),
    err(
        "unknown_secret_kind",
        "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /r}\ndestination: {type: local, path: /b}\nencryption:\n  type: passphrase\n  passphrase: {envv: PASS}\n",
        "plan::bad-secret-ref",
        8,
        16,
    ),
    err(
        "s3_images_without_bucket",
        "version: 1\nname: p\nparts: [images]\nimages:\n  type: s3\n  region: eu-west-1\ndestination: {type: local, path: /b}\n",
        "plan::missing-key",
        4,
        1,
    ),
    err(
        "unknown_destination_type",
        "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /r}\ndestination:\n  type: s4\n  bucket: b\n",
        "plan::unknown-type",
        6,
        9,
    ),
    err(
        "encryption_required",
        "version: 1\nname: p\nparts: [metadata]\nucp:\n  url: https://ucp.example.com\n  username: admin\n  password: {env: UCP_PASSWORD}\n  ca_file: ca.pem\ndtr: {image: docker/dtr:2.9.4}\ndestination: {type: local, path: /b}\n",
        "plan::encryption-required",
        3,
        1,
    ),
    err(
        "ucp_image_missing",
        "version: 1\nname: p\nparts: [ucp]\nucp:\n  url: https://ucp.example.com\n  username: admin\n  password: {env: UCP_PASSWORD}\n  ca_file: ca.pem\ndestination: {type: local, path: /b}\nencryption: {type: passphrase, passphrase: {env: P}}\n",
        "plan::missing-key",
        4,
        1,
    ),
    err(
        "ucp_image_tag",
        "version: 1\nname: p\nparts: [ucp]\nucp:\n  url: https://ucp.example.com\n  username: admin\n  password: {env: UCP_PASSWORD}\n  ca_file: ca.pem\n  image: mirantis/ucp:stable\ndestination: {type: local, path: /b}\nencryption: {type: passphrase, passphrase: {env: P}}\n",
        "plan::image-tag",
        9,
        10,
    ),
    err(
        "ucp_encryption_required",
        "version: 1\nname: p\nparts: [ucp]\nucp:\n  url: https://ucp.example.com\n  username: admin\n  password: {env: UCP_PASSWORD}\n  ca_file: ca.pem\n  image: docker/ucp:3.2.6\ndestination: {type: local, path: /b}\n",
        "plan::encryption-required",
        3,
        1,
    ),
    warn(
        "ucp_image_unused",
        "version: 1\nname: p\nparts: [metadata]\nucp:\n  url: https://ucp.example.com\n  username: admin\n  password: {env: UCP_PASSWORD}\n  ca_file: ca.pem\n  image: docker/ucp:3.2.6\ndtr: {image: docker/dtr:2.9.4}\ndestination: {type: local, path: /b}\nencryption: {type: passphrase, passphrase: {env: P}}\n",
        "plan::unused-key",
        9,
        10,
    ),
    err(
        "image_tag_latest",
        "version: 1\nname: p\nparts: [metadata]\nucp:\n  url: https://ucp.example.com\n  username: admin\n  password: {env: UCP_PASSWORD}\n  ca_file: ca.pem\ndtr:\n  image: docker/dtr:latest\ndestination: {type: local, path: /b}\nencryption: {type: passphrase, passphrase: {env: P}}\n",
        "plan::image-tag",
        10,
        10,
    ),
    err(
        "bad_docker_host",
        "version: 1\nname: p\nparts: [images]\ndocker:\n  host: /var/run/docker.sock\nimages: {type: volume}\ndestination: {type: local, path: /b}\n",
        "plan::bad-docker-host",
        5,
        9,
    ),
    err(
        "http_s3_endpoint",
        "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /r}\ndestination:\n  type: s3\n  bucket: backups\n  endpoint: http://127.0.0.1:9000\n",
        "plan::http-endpoint",
        8,
        13,
    ),
    err(
        "volume_name_escapes",
        "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /r, name: ../../../escaped}\ndestination: {type: local, path: /b}\n",
        "plan::bad-volume-name",
        4,
        38,
    ),
    err(
        "s3_prefix_escaped",
        "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /r}\ndestination:\n  type: s3\n  bucket: backups\n  prefix: team~dtr/backups\n",
        "plan::bad-prefix",
        8,
        11,
    ),
    warn(
        "local_state_with_s3",
        "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /r}\ndestination:\n  type: s3\n  bucket: backups\nstate:\n  path: /var/lib/dtr-backup\n",
        "plan::local-state",
        9,
        9,
    ),
    err(
        "retention_keeps_nothing",
        "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /r}\ndestination: {type: local, path: /b}\nretention:\n  keep_last: 0\n",
        "plan::retention-keeps-nothing",
        6,
        1,
    ),
    err(
        "destination_inside_source",
        "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /srv/registry}\ndestination:\n  type: local\n  path: /srv/registry/backups\n",
        "plan::destination-overlaps-source",
        7,
        9,
    ),
    err(
        "bool_expected",
        "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /r, allow_empty: maybe}\ndestination: {type: local, path: /b}\n",
        "plan::wrong-type",
        4,
        45,
    ),
    err(
        "images_section_missing",
        "version: 1\nname: p\nparts: [images]\ndestination: {type: local, path: /b}\n",
        "plan::missing-section",
        3,
        1,
    ),
    warn(
        "insecure_tls_warning",
        "version: 1\nname: p\nparts: [metadata]\nucp:\n  url: https://ucp.example.com\n  username: admin\n  password: {env: UCP_PASSWORD}\n  insecure_tls: true\ndtr: {image: docker/dtr:2.9.4}\ndestination: {type: local, path: /b}\nencryption: {type: passphrase, passphrase: {env: P}}\n",
        "plan::insecure-tls",
        8,
        17,
    ),
    warn(
        "unencrypted_metadata",
        "version: 1\nname: p\nparts: [metadata]\nucp:\n  url: https://ucp.example.com\n  username: admin\n  password: {env: UCP_PASSWORD}\n  ca_file: ca.pem\ndtr: {image: docker/dtr:2.9.4}\ndestination: {type: local, path: /b}\nencryption:\n  type: none\n",
        "plan::unencrypted",
        11,
        1,
    ),
    warn(
        "images_first",
        "version: 1\nname: p\nucp:\n  url: https://ucp.example.com\n  username: admin\n  password: {env: UCP_PASSWORD}\n  ca_file: ca.pem\ndtr: {image: docker/dtr:2.9.4}\nimages: {type: volume}\ndestination: {type: local, path: /b}\nencryption: {type: passphrase, passphrase: {env: P}}\norder: images-first\n",
        "plan::images-first",
        12,
        8,
    ),
    err(
        "hook_not_argv",
        "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /r}\ndestination: {type: local, path: /b}\nencryption: {type: none}\nhooks:\n  before: [/usr/local/bin/lb-drain]\n",
        "plan::hook-not-argv",
        8,
        12,
    ),
    err(
        "hook_timeout_not_a_duration",
        "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /r}\ndestination: {type: local, path: /b}\nencryption: {type: none}\nhooks: {timeout: 5 minutes}\n",
        "plan::bad-duration",
        7,
        18,
    ),
    err(
        "notify_url_not_http",
        "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /r}\ndestination: {type: local, path: /b}\nencryption: {type: none}\nnotify: [{type: webhook, url: 'ftp://x.example/t0ken'}]\n",
        "plan::bad-url",
        7,
        31,
    ),
    err(
        "notify_on_nothing",
        "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /r}\ndestination: {type: local, path: /b}\nencryption: {type: none}\nnotify: [{type: healthchecks, url: {env: U}, on: []}]\n",
        "plan::no-outcomes",
        7,
        46,
    ),
    err(
        "read_only_without_external_url",
        "version: 1\nname: p\nucp:\n  url: https://ucp.example.com\n  username: admin\n  password: {env: UCP_PASSWORD}\n  ca_file: ca.pem\ndtr: {image: docker/dtr:2.9.4, read_only_during_backup: true}\nimages: {type: volume}\ndestination: {type: local, path: /b}\nencryption: {type: passphrase, passphrase: {env: P}}\n",
        "plan::missing-key",
        8,
        57,
    ),
    err(
        "read_only_without_metadata",
        "version: 1\nname: p\nparts: [images]\ndtr: {external_url: https://dtr.example.com, read_only_during_backup: true}\nimages: {type: path, path: /r}\ndestination: {type: local, path: /b}\nencryption: {type: none}\n",
        "plan::read-only-without-metadata",
        4,
        71,
    ),
];

fn render(report: &plan::FileReport) -> String {
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(80);
    plan::diag::render_all(report, &handler)
}

#[test]
fn every_mistake_has_code_position_and_snapshot() {
    assert!(CASES.len() >= 15);
    for case in CASES {
        let loaded = plan::load_str(Path::new("plan.yaml"), case.yaml);
        let found = loaded
            .report
            .diags
            .iter()
            .find(|d| d.code == case.code)
            .unwrap_or_else(|| {
                panic!(
                    "{}: no {} among {:#?}",
                    case.name, case.code, loaded.report.diags
                )
            });
        assert_eq!(
            (found.line(), found.column(), found.severity),
            (case.line, case.column, case.severity),
            "{}: position or severity of {}",
            case.name,
            case.code
        );
        assert!(
            found.help.is_some(),
            "{}: a diagnostic must say what to do next",
            case.name
        );
        if case.severity == Severity::Error {
            assert!(
                loaded.plan.is_none(),
                "{}: an error must reject the plan",
                case.name
            );
        } else {
            assert!(
                loaded.plan.is_some(),
                "{}: a warning must not reject the plan",
                case.name
            );
        }
        insta::assert_snapshot!(case.name, render(&loaded.report));
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let yaml = "version: 1\nname: Bad_Name\nparts: [metadata, images]\nucp:\n  url: http://ucp\n  username: admin\n  password: secret\n  ca_file: ca.pem\n  insecure_tls: true\ndtr:\n  image: docker/dtr:latest\n  replica: nope\nimages:\n  type: s3\ndestination: {type: local, path: /b}\nretention: {keep_lsat: 3}\n";
    let loaded = plan::load_str(Path::new("plan.yaml"), yaml);
    let codes: Vec<&str> = loaded.report.diags.iter().map(|d| d.code).collect();
    for expected in [
        "plan::bad-name",
        "plan::insecure-url",
        "plan::literal-secret",
        "plan::tls-conflict",
        "plan::image-tag",
        "plan::bad-replica-id",
        "plan::missing-key",
        "plan::unknown-key",
    ] {
        assert!(
            codes.contains(&expected),
            "{expected} missing from {codes:?}"
        );
    }
}

#[test]
fn quoted_numeric_looking_replica_id_keeps_its_leading_zero() {
    let yaml = "version: 1\nname: p\nparts: [images]\ndtr: {replica: 012345678901}\nimages: {type: volume}\ndestination: {type: local, path: /b}\n";
    let loaded = plan::load_str(Path::new("plan.yaml"), yaml);
    let plan = loaded.plan.expect("valid plan");
    assert_eq!(plan.dtr.replica.to_string(), "012345678901");
}

#[test]
fn unknown_key_suggests_the_closest_key() {
    let yaml = "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /r}\ndestination: {type: local, path: /b}\nencryption: {type: passphrase, pasphrase: {env: P}}\n";
    let loaded = plan::load_str(Path::new("plan.yaml"), yaml);
    let unknown = loaded
        .report
        .diags
        .iter()
        .find(|d| d.code == "plan::unknown-key")
        .expect("unknown key reported");
    assert_eq!(unknown.help.as_deref(), Some("did you mean `passphrase`?"));
}
