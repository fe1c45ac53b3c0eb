//! `dtr-backup verify` and OpenPGP interoperability with real GnuPG, both ways, for both
//! passphrase and recipients encryption; damage of every kind gives exit 5 and names the cause.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

/// A throwaway GnuPG home; its agent is stopped on drop.
struct Gpg {
    home: TempDir,
}

impl Gpg {
    fn new(tag: &str) -> Gpg {
        let home = TempDir::new(tag);
        let mut perms = std::fs::metadata(home.path()).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o700);
        std::fs::set_permissions(home.path(), perms).expect("chmod");
        Gpg { home }
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("gpg")
            .env("GNUPGHOME", self.home.path())
            .args(["--batch", "--pinentry-mode", "loopback"])
            .args(args)
            .output()
            .expect("gpg runs");
        assert!(out.status.success(), "gpg {args:?}: {}", stderr(&out));
        out
    }

    /// Generates a key for `uid`, protected by `passphrase` (empty: none).
    fn generate(&self, uid: &str, passphrase: &str) {
        self.run(&[
            "--passphrase",
            passphrase,
            "--quick-gen-key",
            uid,
            "default",
            "default",
            "never",
        ]);
    }

    fn fingerprint(&self, uid: &str) -> String {
        let out = self.run(&["--with-colons", "--list-keys", uid]);
        stdout(&out)
            .lines()
            .find(|l| l.starts_with("fpr:"))
            .and_then(|l| l.split(':').nth(9))
            .expect("fingerprint")
            .to_owned()
    }

    fn export(&self, uid: &str, armor: bool, to: &Path) {
        let mut args = vec!["--export"];
        if armor {
            args.insert(0, "--armor");
        }
        args.push(uid);
        std::fs::write(to, self.run(&args).stdout).expect("write key");
    }

    fn export_secret(&self, uid: &str, passphrase: &str, to: &Path) {
        let out = self.run(&[
            "--passphrase",
            passphrase,
            "--armor",
            "--export-secret-keys",
            uid,
        ]);
        std::fs::write(to, out.stdout).expect("write secret key");
    }

    fn decrypt(&self, file: &Path, passphrase: &str) -> Vec<u8> {
        self.run(&[
            "--passphrase",
            passphrase,
            "-d",
            &file.display().to_string(),
        ])
        .stdout
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "all"])
            .status();
    }
}

fn verify_cmd(fx: &Fixture, args: &[&str]) -> Output {
    run(dtr_backup(fx.dir.path())
        .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
        .args(["verify", "--output", "json"])
        .args(args)
        .arg(&fx.plan))
}

fn checks(out: &Output) -> Vec<serde_json::Value> {
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)));
    doc["checks"].as_array().cloned().unwrap_or_default()
}

fn failed(out: &Output) -> Vec<String> {
    checks(out)
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| {
            format!(
                "{}: {}",
                c["name"].as_str().unwrap_or(""),
                c["detail"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn only_backup(fx: &Fixture) -> PathBuf {
    let dirs: Vec<PathBuf> = fx
        .backup_dirs()
        .into_iter()
        .filter(|d| d.join("manifest.json").exists())
        .collect();
    assert_eq!(dirs.len(), 1);
    dirs[0].clone()
}

fn artifact_of(backup: &Path) -> PathBuf {
    std::fs::read_dir(backup)
        .expect("dir")
        .map(|e| e.expect("e").path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("dtr-images-"))
        })
        .expect("images artifact")
}

/// Points the manifest at `file` (a replacement artifact) with its size and sha256.
fn rewrite_manifest(backup: &Path, file: &Path, encrypted: bool) {
    let mpath = backup.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&mpath).expect("manifest")).expect("json");
    let bytes = std::fs::read(file).expect("artifact");
    let a = &mut m["artifacts"][0];
    a["path"] = file
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned()
        .into();
    a["size"] = (bytes.len() as u64).into();
    a["sha256"] = dtr_backup::archive::sha256_hex(&bytes).into();
    a["encrypted"] = encrypted.into();
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).expect("json")).expect("write manifest");
}

#[test]
fn a_sound_backup_passes_every_check() {
    let fx = Fixture::new("verify-ok", 2, "");
    assert_eq!(run(&mut fx.apply()).status.code(), Some(0));
    for mode in ["layout", "sample", "full"] {
        let out = verify_cmd(&fx, &["--read-data", mode]);
        assert_eq!(out.status.code(), Some(0), "{mode}: {:?}", failed(&out));
        let names: Vec<String> = checks(&out)
            .iter()
            .map(|c| c["name"].as_str().unwrap_or("").to_owned())
            .collect();
        for must in [
            "manifest.json exists and parses",
            "present with its size",
            "decrypts",
            "layout",
            "sha256",
        ] {
            assert!(
                names.iter().any(|n| n.contains(must)),
                "{mode}: {must} not checked: {names:?}"
            );
        }
        if mode != "layout" {
            assert!(
                names
                    .iter()
                    .any(|n| n.contains("blob contents match their digests")),
                "{names:?}"
            );
        }
    }
    // Text output: a table and a summary.
    let out = run(dtr_backup(fx.dir.path())
        .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
        .args(["verify"])
        .arg(&fx.plan));
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("PASS") && stdout(&out).contains("checks passed"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn damage_of_every_kind_gives_exit_5_naming_the_cause() {
    type Damage = fn(&Fixture, &Path);
    let cases: [(&str, Damage, &[&str]); 5] = [
        (
            "flipped byte",
            |_, b| {
                let a = artifact_of(b);
                let mut bytes = std::fs::read(&a).expect("read");
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x01;
                std::fs::write(&a, bytes).expect("write");
            },
            // The layout was read from plaintext that failed its integrity check: it proves
            // nothing, and does not pass.
            &["sha256", "decrypts", "layout: inconclusive"],
        ),
        (
            "truncated",
            |_, b| {
                let a = artifact_of(b);
                let bytes = std::fs::read(&a).expect("read");
                std::fs::write(&a, &bytes[..bytes.len() - 100]).expect("write");
            },
            &["present with its size"],
        ),
        (
            "edited manifest",
            |_, b| {
                let p = b.join("manifest.json");
                let text = std::fs::read_to_string(&p).expect("read");
                let m: serde_json::Value = serde_json::from_str(&text).expect("json");
                let sha = m["artifacts"][0]["sha256"]
                    .as_str()
                    .expect("sha")
                    .to_owned();
                let edited = sha.replacen(&sha[..1], if &sha[..1] == "0" { "1" } else { "0" }, 1);
                std::fs::write(&p, text.replace(&sha, &edited)).expect("write");
            },
            &["sha256"],
        ),
        (
            "broken manifest",
            |_, b| {
                std::fs::write(b.join("manifest.json"), b"{\"format_version\": 1, \"plan\"")
                    .expect("write");
            },
            &["manifest.json exists and parses"],
        ),
        (
            "wrong passphrase",
            |fx, _| {
                let text = std::fs::read_to_string(&fx.plan).expect("plan");
                std::fs::write(
                    &fx.plan,
                    text.replace("DTR_BACKUP_PASSPHRASE", "OTHER_PASSPHRASE"),
                )
                .expect("plan");
            },
            &["decrypts"],
        ),
    ];
    for (what, damage, expected) in cases {
        let fx = Fixture::archive("verify-damage", 2, "");
        assert_eq!(run(&mut fx.apply()).status.code(), Some(0), "{what}");
        let backup = only_backup(&fx);
        let id = backup
            .file_name()
            .expect("id")
            .to_string_lossy()
            .into_owned();
        damage(&fx, &backup);
        let out = run(dtr_backup(fx.dir.path())
            .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
            .env("OTHER_PASSPHRASE", "not the passphrase")
            .args(["verify", "--output", "json", "--backup", &id])
            .arg(&fx.plan));
        assert_eq!(out.status.code(), Some(5), "{what}: {}", stdout(&out));
        let f = failed(&out);
        for e in expected {
            assert!(
                f.iter().any(|c| c.contains(e)),
                "{what}: no failed {e:?} check in {f:?}"
            );
        }
        if what == "wrong passphrase" {
            assert!(f.iter().any(|c| c.contains("wrong passphrase")), "{f:?}");
        }
    }
}

#[test]
fn full_read_finds_a_blob_that_does_not_match_its_digest() {
    let fx = Fixture::archive("verify-blob", 0, "");
    // A blob whose content changed after it was stored (bit rot on the registry's disk).
    let blob = std::fs::read_dir(
        fx.dir
            .path()
            .join("registry/docker/registry/v2/blobs/sha256"),
    )
    .expect("blobs")
    .flat_map(|p| std::fs::read_dir(p.expect("p").path()).expect("d"))
    .map(|d| d.expect("d").path())
    .next()
    .expect("a blob");
    let digest = blob
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    std::fs::write(blob.join("data"), b"rotten").expect("rot");
    assert_eq!(
        run(&mut fx.apply()).status.code(),
        Some(0),
        "apply checks layout, not contents"
    );
    let out = verify_cmd(&fx, &["--read-data", "full"]);
    assert_eq!(out.status.code(), Some(5));
    let f = failed(&out);
    assert!(
        f.iter()
            .any(|c| c.contains("blob contents") && c.contains(&digest)),
        "{f:?}"
    );

    // Incremental: the blob is checked on its way into the blob store; the run refuses it
    // by name and publishes nothing.
    let fx = Fixture::new("verify-blob-inc", 0, "");
    std::fs::write(
        fx.dir.path().join(format!(
            "registry/docker/registry/v2/blobs/sha256/{}/{digest}/data",
            &digest[..2]
        )),
        b"rotten",
    )
    .expect("rot");
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let error = error_of(&out);
    assert!(
        error.contains(&digest) && error.contains("damaged"),
        "{error}"
    );
    assert!(
        fx.backup_dirs()
            .iter()
            .all(|d| !d.join("manifest.json").exists()),
        "nothing published"
    );
}

/// Damage of an incremental backup: a blob-store object changed, missing or cut short, the
/// blob list edited. Each is named (exit 5); a changed blob only with `--read-data`.
#[test]
fn damage_of_the_blob_store_and_the_blob_list_is_named() {
    type Damage = fn(&Fixture, &Path);
    let cases: [(&str, Damage, &[&str], &str); 4] = [
        (
            "flipped byte in a blob",
            |fx, _| {
                let p = object_of(fx);
                let mut b = std::fs::read(&p).expect("read");
                let mid = b.len() / 2;
                b[mid] ^= 1;
                std::fs::write(&p, b).expect("write");
            },
            &["blob store contents match their digests"],
            "full",
        ),
        (
            "missing blob",
            |fx, _| std::fs::remove_file(object_of(fx)).expect("rm"),
            &["blob store holds every blob"],
            "layout",
        ),
        (
            "blob cut short",
            |fx, _| {
                let p = object_of(fx);
                let b = std::fs::read(&p).expect("read");
                std::fs::write(&p, &b[..b.len() - 1]).expect("write");
            },
            &["blob store holds every blob"],
            "layout",
        ),
        (
            "edited blob list",
            |_, b| {
                let p = b.join("blobs.list");
                let text = std::fs::read_to_string(&p).expect("read");
                // One digit of the first digest after the header and the base line, the
                // length unchanged.
                let header = text.find('\n').expect("header") + 1;
                assert!(text[header..].starts_with("base "), "{text}");
                let at = header + text[header..].find('\n').expect("base line") + 1;
                let mut bytes = text.into_bytes();
                bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
                std::fs::write(&p, bytes).expect("write");
            },
            &["blobs.list: sha256", "blob store holds every blob"],
            "layout",
        ),
    ];
    for (what, damage, expected, read_data) in cases {
        let fx = Fixture::new("verify-store", 0, "");
        assert_eq!(run(&mut fx.apply()).status.code(), Some(0), "{what}");
        let backup = only_backup(&fx);
        damage(&fx, &backup);
        let out = verify_cmd(&fx, &["--read-data", read_data]);
        assert_eq!(out.status.code(), Some(5), "{what}: {}", stdout(&out));
        let f = failed(&out);
        for e in expected {
            assert!(
                f.iter().any(|c| c.contains(e)),
                "{what}: no failed {e:?} check in {f:?}"
            );
        }
    }
}

/// The first object of the first blob store of the fixture's plan.
fn object_of(fx: &Fixture) -> PathBuf {
    let store = std::fs::read_dir(fx.plan_root().join("blobs"))
        .expect("store")
        .map(|s| s.expect("s").path())
        .next()
        .expect("a store");
    let mut objects: Vec<PathBuf> = std::fs::read_dir(store.join("sha256"))
        .expect("ab")
        .flat_map(|d| std::fs::read_dir(d.expect("d").path()).expect("objects"))
        .map(|o| o.expect("o").path())
        .collect();
    objects.sort();
    objects.remove(0)
}

#[test]
fn recipients_encryption_interoperates_with_gpg() {
    let ops = Gpg::new("gpg-ops");
    ops.generate("Backup Ops <ops@example.com>", "");
    let dr = Gpg::new("gpg-dr");
    dr.generate("Disaster Recovery <dr@example.com>", "dr pass");
    // A second encryption subkey: every encryption-capable key is used.
    let fpr = dr.fingerprint("dr@example.com");
    dr.run(&[
        "--passphrase",
        "dr pass",
        "--quick-add-key",
        &fpr,
        "default",
        "encr",
        "never",
    ]);

    let fx = Fixture::new("recipients", 2, "");
    ops.export("ops@example.com", true, &fx.dir.path().join("ops.asc"));
    dr.export("dr@example.com", false, &fx.dir.path().join("dr.gpg"));
    ops.export_secret("ops@example.com", "", &fx.dir.path().join("ops-secret.asc"));
    dr.export_secret(
        "dr@example.com",
        "dr pass",
        &fx.dir.path().join("dr-secret.asc"),
    );
    let plan = std::fs::read_to_string(&fx.plan).expect("plan").replace(
        "encryption: {type: passphrase, passphrase: {env: DTR_BACKUP_PASSPHRASE}}",
        "encryption: {type: recipients, recipients: [ops.asc, dr.gpg]}\nverify: {key: {file: ops-secret.asc}}",
    );
    std::fs::write(&fx.plan, &plan).expect("plan");

    // The backing-up job holds only public keys and the ops secret key for verification.
    let out = run(dtr_backup(fx.dir.path())
        .args(["plan", "apply", "--output", "json"])
        .arg(&fx.plan));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let backup = only_backup(&fx);
    let artifact = artifact_of(&backup);
    // Both recipients can read it with real gpg.
    for (gpg, pass) in [(&ops, ""), (&dr, "dr pass")] {
        let plain = gpg.decrypt(&artifact, pass);
        assert!(tar_list(&plain).iter().any(|n| n.starts_with(VOLUME)));
    }
    // verify with the other key, passphrase-protected.
    std::fs::write(
        &fx.plan,
        plan.replace(
            "verify: {key: {file: ops-secret.asc}}",
            "verify: {key: {file: dr-secret.asc}, key_passphrase: {env: DR_PASS}}",
        ),
    )
    .expect("plan");
    let out = run(dtr_backup(fx.dir.path())
        .env("DR_PASS", "dr pass")
        .args(["verify", "--output", "json", "--read-data", "full"])
        .arg(&fx.plan));
    assert_eq!(out.status.code(), Some(0), "{:?}", failed(&out));
    // A wrong key passphrase is named.
    let out = run(dtr_backup(fx.dir.path())
        .env("DR_PASS", "nope")
        .args(["verify", "--output", "json"])
        .arg(&fx.plan));
    assert_eq!(out.status.code(), Some(5));
    assert!(
        failed(&out).iter().any(|c| c.contains("does not unlock")),
        "{:?}",
        failed(&out)
    );

    // Without verify.key: apply checks sizes and sha256 and says so; verify refuses to pass.
    std::fs::write(
        &fx.plan,
        plan.replace("\nverify: {key: {file: ops-secret.asc}}", ""),
    )
    .expect("plan");
    let out = run(dtr_backup(fx.dir.path())
        .args(["plan", "apply", "--output", "json"])
        .arg(&fx.plan));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(warned(&events(&out), "verify.key"));
    let out = run(dtr_backup(fx.dir.path())
        .args(["verify", "--output", "json"])
        .arg(&fx.plan));
    assert_eq!(out.status.code(), Some(5));
    assert!(
        failed(&out).iter().any(|c| c.contains("verify.key")),
        "{:?}",
        failed(&out)
    );
}

#[test]
fn verify_reads_what_gpg_encrypted() {
    let ops = Gpg::new("gpg-sym");
    ops.generate("Backup Ops <ops@example.com>", "");
    let fx = Fixture::new("gpg-made", 2, "");
    ops.export("ops@example.com", true, &fx.dir.path().join("ops.asc"));
    ops.export_secret("ops@example.com", "", &fx.dir.path().join("ops-secret.asc"));
    let passphrase_plan = std::fs::read_to_string(&fx.plan).expect("plan");
    // An unencrypted backup, whose archive gpg then encrypts.
    std::fs::write(
        &fx.plan,
        passphrase_plan.replace(
            "encryption: {type: passphrase, passphrase: {env: DTR_BACKUP_PASSPHRASE}}",
            "encryption: {type: none}",
        ),
    )
    .expect("plan");
    assert_eq!(run(&mut fx.apply()).status.code(), Some(0));
    let backup = only_backup(&fx);
    let tar_file = artifact_of(&backup);
    assert!(tar_file.display().to_string().ends_with(".tar"));
    let gpg_file = backup.join("dtr-images-0a1b2c3d4e5f.tar.gpg");

    let recipients_plan = passphrase_plan.replace(
        "encryption: {type: passphrase, passphrase: {env: DTR_BACKUP_PASSPHRASE}}",
        "encryption: {type: recipients, recipients: [ops.asc]}\nverify: {key: {file: ops-secret.asc}}",
    );
    let (gpg_path, tar_path) = (
        gpg_file.display().to_string(),
        tar_file.display().to_string(),
    );
    // gpg's defaults (compressed: read by sequoia's general parser) and without compression
    // (a single literal packet: read by our own SEIPD reader).
    for compression in [&[][..], &["--compress-algo", "none"][..]] {
        // gpg --symmetric, read back with the passphrase.
        let _ = std::fs::remove_file(&gpg_file);
        let mut args = vec!["--passphrase", PASSPHRASE];
        args.extend_from_slice(compression);
        args.extend(["--symmetric", "--output", &gpg_path, &tar_path]);
        ops.run(&args);
        rewrite_manifest(&backup, &gpg_file, true);
        std::fs::write(&fx.plan, &passphrase_plan).expect("plan");
        let out = verify_cmd(&fx, &["--read-data", "full"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "gpg --symmetric {compression:?}: {:?}",
            failed(&out)
        );

        // gpg -e -r, read back with the secret key.
        std::fs::remove_file(&gpg_file).expect("rm");
        let mut args = vec!["--trust-model", "always"];
        args.extend_from_slice(compression);
        args.extend([
            "-e",
            "-r",
            "ops@example.com",
            "--output",
            &gpg_path,
            &tar_path,
        ]);
        ops.run(&args);
        rewrite_manifest(&backup, &gpg_file, true);
        std::fs::write(&fx.plan, &recipients_plan).expect("plan");
        let out = verify_cmd(&fx, &["--read-data", "full"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "gpg -e -r {compression:?}: {:?}",
            failed(&out)
        );
    }
}

/// `--backup` is a backup id or `latest`: anything else (a path) is a usage error, and a
/// manifest whose artifact paths leave the backup's folder is never followed.
#[test]
fn backup_ids_and_manifest_paths_stay_inside_the_destination() {
    let fx = Fixture::new("verify-paths", 0, "");
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let backup = only_backup(&fx);
    // A file outside the destination that a crafted id or path would reach.
    std::fs::write(fx.dir.path().join("outside"), b"not a backup").expect("write");
    for id in [
        "../../outside",
        "../qs",
        "latest/..",
        "20261124T164428Z-4a2a/..",
    ] {
        let out = verify_cmd(&fx, &["--backup", id]);
        assert_eq!(out.status.code(), Some(2), "{id}: {}", stdout(&out));
        assert!(
            stdout(&out).contains("is not a backup id"),
            "{id}: {}",
            stdout(&out)
        );
    }
    let p = backup.join("manifest.json");
    let text = std::fs::read_to_string(&p).expect("read");
    let mut m: serde_json::Value = serde_json::from_str(&text).expect("json");
    m["artifacts"][0]["path"] = "../../../outside".into();
    std::fs::write(&p, serde_json::to_vec(&m).expect("json")).expect("write");
    let id = backup
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let out = verify_cmd(&fx, &["--backup", &id]);
    assert_eq!(out.status.code(), Some(5));
    let failures = failed(&out);
    assert!(
        failures.len() == 1 && failures[0].contains("is not a file name in the backup's folder"),
        "{failures:?}"
    );
}

#[test]
fn on_a_terminal_verify_shows_a_bar_that_reaches_what_it_reads() {
    let fx = Fixture::new("verify-tty", 3, "");
    let out = run(&mut fx.apply());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // `script` gives the command a terminal (util-linux, in every Debian).
    let command = format!(
        "{} verify {} --read-data full",
        env!("CARGO_BIN_EXE_dtr-backup"),
        fx.plan.display()
    );
    let out = run(Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(fx.dir.path())
        .env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
        .env("NO_COLOR", "1"));
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("all 14 checks passed"), "{text}");
    assert!(text.contains("✓ verify"), "{text}");
    // The bar's last state: done = total, the 3 MiB blob included.
    // A bar line: `  3.03 MiB/3.03 MiB 11.27 MiB/s eta 0s ███…`.
    let bars: Vec<(String, String)> = text
        .split(['\r', '\n'])
        .filter_map(|l| {
            let w: Vec<&str> = l
                .trim_start_matches("\u{1b}[2K")
                .split_whitespace()
                .collect();
            let (unit, total) = w.get(1)?.split_once('/')?;
            Some((format!("{} {unit}", w[0]), format!("{total} {}", w.get(2)?)))
        })
        .collect();
    let (done, total) = bars.last().unwrap_or_else(|| panic!("no bar in {text:?}"));
    assert_eq!(done, total, "{bars:?}");
    assert!(total.ends_with("MiB"), "{total}");
}
