//! `plan validate` as a user and a CI job see it: exit codes, text and JSON output.

use crate::common::*;

#[test]
fn every_shipped_plan_is_valid() {
    let root = root();
    for plan in shipped_plans() {
        let out = run(dtr_backup(&root)
            .args(["plan", "validate", "--deny-warnings"])
            .arg(&plan));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            plan.display(),
            stderr(&out)
        );
        assert!(
            stdout(&out).contains("valid (0 errors, 0 warnings)"),
            "{}",
            stdout(&out)
        );
    }
}

#[test]
fn invalid_plan_exits_3_with_positions_on_stderr() {
    let dir = TempDir::new("validate");
    let plan = dir.write(
        "bad.yaml",
        "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /r}\ndestination: {type: local, path: /b}\nretention: {keep_lsat: 3}\n",
    );
    let out = run(dtr_backup(dir.path()).args(["plan", "validate"]).arg(&plan));
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(err.contains("plan::unknown-key"), "{err}");
    assert!(err.contains("bad.yaml:6:13"), "{err}");
    assert!(err.contains("did you mean `keep_last`?"), "{err}");
    assert!(stdout(&out).contains("invalid (1 error, 0 warnings)"));
}

#[test]
fn warnings_pass_unless_denied() {
    let dir = TempDir::new("warn");
    let plan = dir.write(
        "warn.yaml",
        "version: 1\nname: p\nparts: [metadata]\nucp:\n  url: https://ucp\n  username: admin\n  password: {env: UCP_PASSWORD}\n  insecure_tls: true\ndtr: {image: docker/dtr:2.9.4}\ndestination: {type: local, path: /b}\nencryption: {type: passphrase, passphrase: {env: P}}\n",
    );
    let out = run(dtr_backup(dir.path()).args(["plan", "validate"]).arg(&plan));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("plan::insecure-tls"));
    let out = run(dtr_backup(dir.path())
        .args(["plan", "validate", "--deny-warnings"])
        .arg(&plan));
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn json_output_is_one_valid_document_in_every_outcome() {
    let dir = TempDir::new("json");
    let good = root().join("plans/quickstart.yaml");
    let bad = dir.write("bad.yaml", "version: 1\nname: p\n  broken: [\n");
    let missing = dir.path().join("missing.yaml");
    let cases: [(&[&std::path::Path], i32, bool); 3] = [
        (&[&good], 0, true),
        (&[&good, &bad], 3, false),
        (&[&missing], 2, false),
    ];
    for (plans, code, valid) in cases {
        let out = run(dtr_backup(dir.path())
            .args(["plan", "validate", "--output", "json"])
            .args(plans));
        assert_eq!(out.status.code(), Some(code), "{plans:?}");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{plans:?}: stdout is not JSON ({e}): {}", stdout(&out)));
        assert_eq!(doc["format_version"], 1);
        assert_eq!(doc["valid"], valid);
        let diags = doc["diagnostics"].as_array().expect("diagnostics array");
        assert_eq!(diags.is_empty(), valid);
        for d in diags {
            for key in [
                "severity", "code", "message", "file", "line", "column", "help",
            ] {
                assert!(d.get(key).is_some(), "{key} missing in {d}");
            }
        }
        assert!(
            stderr(&out).is_empty(),
            "json mode keeps stderr quiet: {}",
            stderr(&out)
        );
    }
}

#[test]
fn json_diagnostic_carries_file_line_column() {
    let dir = TempDir::new("jsonpos");
    let bad = dir.write(
        "p.yaml",
        "version: 1\nname: p\nparts: [images]\ndtr: {replica: xyz}\nimages: {type: volume}\ndestination: {type: local, path: /b}\n",
    );
    let out = run(dtr_backup(dir.path())
        .args(["plan", "validate", "--output", "json"])
        .arg(&bad));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let d = &doc["diagnostics"][0];
    assert_eq!(d["code"], "plan::bad-replica-id");
    assert_eq!(d["severity"], "error");
    assert_eq!(d["line"], 4);
    assert_eq!(d["column"], 16);
    assert_eq!(d["file"], bad.display().to_string());
}

#[test]
fn validate_reads_no_environment_and_no_secret() {
    // The secret file and the variable do not exist: validation only checks the references.
    let dir = TempDir::new("pure");
    let plan = dir.write(
        "p.yaml",
        "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /nonexistent/registry}\ndestination: {type: local, path: /nonexistent/backups}\nencryption: {type: passphrase, passphrase: {file: /nonexistent/secret}}\n",
    );
    let out = run(dtr_backup(dir.path())
        .env_clear()
        .args(["plan", "validate"])
        .arg(&plan));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_2() {
    let out = run(dtr_backup(&root()).args(["plan", "validate"]));
    assert_eq!(out.status.code(), Some(2));
    let out = run(dtr_backup(&root()).args(["plan", "frobnicate"]));
    assert_eq!(out.status.code(), Some(2));
}

/// A secret written in the plan itself is reported, and never shown: not in the snippet of
/// its own diagnostic, not in another's, not in JSON; whatever its shape, and also when the
/// file is not valid YAML.
#[test]
fn a_literal_secret_is_masked_in_every_output() {
    let dir = TempDir::new("literal");
    let head = "version: 1\nname: p\nparts: [images]\nimages: {type: path, path: /r}\ndestination: {type: local, path: /b}\nencryption:\n  type: passphrase\n";
    for (n, (value, tail)) in [
        (
            "  passphrase: hunter2-s3cr3t-ünï\n",
            "retention: {keep_lsat: 3}\n",
        ),
        ("  passphrase: \"hunter2-s3cr3t\"\n", ""),
        ("  passphrase: |\n    hunter2-s3cr3t\n", ""),
        ("  passphrase: {value: hunter2-s3cr3t}\n", ""),
        ("  passphrase: [hunter2-s3cr3t]\n", ""),
        // Not YAML at all (a tab in the indentation): a syntax error near the secret.
        ("  passphrase: hunter2-s3cr3t\n\t bad: [\n", ""),
    ]
    .into_iter()
    .enumerate()
    {
        let plan = dir.write(&format!("p{n}.yaml"), &format!("{head}{value}{tail}"));
        for args in [
            &["plan", "validate"][..],
            &["plan", "validate", "--output", "json"],
        ] {
            let out = run(dtr_backup(dir.path()).args(args).arg(&plan));
            assert_eq!(out.status.code(), Some(3), "{value}");
            let all = format!("{}{}", stdout(&out), stderr(&out));
            assert!(!all.contains("hunter2"), "{value}: {all}");
            assert!(!all.contains("s3cr3t"), "{value}: {all}");
            if args.len() == 2 {
                assert!(
                    all.contains("passphrase: "),
                    "{value}: the snippet is shown: {all}"
                );
            }
        }
    }
}
