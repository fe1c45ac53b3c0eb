//! A real registry: Debian's `docker-registry` (Docker Distribution, the upstream of DTR's
//! registry, with the same storage layout), filled with real images pushed by `skopeo`. Backed
//! up, pushed to again, backed up again, its storage lost, restored: every image is pulled
//! again by digest. An older backup restores exactly its own images.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn tools() -> bool {
    let found = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if found("docker-registry") && found("skopeo") {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "CI is set but docker-registry or skopeo is missing: run the tests through scripts/test"
    );
    eprintln!("skipped: docker-registry or skopeo missing (scripts/test installs them)");
    false
}

/// A registry serving `root` on a free loopback port, stopped when dropped.
struct Registry {
    child: Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path, root: &Path) -> Registry {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join(format!("registry-{port}.yml"));
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n",
                root.display()
            ),
        )
        .expect("config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry starts");
        let reg = Registry { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !reg.answers() {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        reg
    }

    /// `GET /v2/` answers 200.
    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(&self.addr) else {
            return false;
        };
        let _ = write!(s, "GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256(b: &[u8]) -> String {
    dtr_backup::archive::sha256_hex(b)
}

/// An OCI image layout holding one image: one layer with a file of `content`.
fn oci_image(dir: &Path, content: &str) -> PathBuf {
    let layout = dir.join(format!("oci-{}", &sha256(content.as_bytes())[..12]));
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("layout");
    let mut layer = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(content.len() as u64);
    h.set_mtime(1_700_000_000);
    layer
        .append_data(&mut h, "app/content.txt", content.as_bytes())
        .expect("layer");
    let layer = layer.into_inner().expect("layer");
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["sha256:{}"]}}}}"#,
        sha256(&layer)
    );
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{}","size":{}}}]}}"#,
        sha256(config.as_bytes()),
        config.len(),
        sha256(&layer),
        layer.len()
    );
    for b in [&layer[..], config.as_bytes(), manifest.as_bytes()] {
        std::fs::write(blobs.join(sha256(b)), b).expect("blob");
    }
    std::fs::write(
        layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"latest"}}}}]}}"#,
            sha256(manifest.as_bytes()),
            manifest.len()
        ),
    )
    .expect("index");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    layout
}

/// Pushes the image at `layout` as `repo:tag`; returns the manifest digest the registry
/// serves it by.
fn push(reg: &Registry, dir: &Path, layout: &Path, repo: &str, tag: &str) -> String {
    let digest_file = dir.join(format!("digest-{tag}"));
    let out = run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false", "--digestfile"])
        .arg(&digest_file)
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{}/{repo}:{tag}", reg.addr)));
    assert!(out.status.success(), "skopeo push: {}", stderr(&out));
    std::fs::read_to_string(&digest_file)
        .expect("digest")
        .trim()
        .to_owned()
}

/// Pulls `repo@digest` (skopeo checks every blob against its digest); the content of the
/// image's file, or the error.
fn pull(reg: &Registry, dir: &Path, repo: &str, digest: &str) -> Result<String, String> {
    let to = dir.join(format!("pulled-{}", &digest[7..19]));
    let _ = std::fs::remove_dir_all(&to);
    let out = run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{}/{repo}@{digest}", reg.addr))
        .arg(format!("dir:{}", to.display())));
    if !out.status.success() {
        return Err(stderr(&out));
    }
    // In a `dir:` copy, the layer is the one file that is a (possibly gzipped) tar archive.
    for e in std::fs::read_dir(&to).expect("pulled") {
        let p = e.expect("entry").path();
        let mut bytes = std::fs::read(&p).expect("read");
        if bytes.starts_with(&[0x1f, 0x8b]) {
            // Pushed as a Docker image, the layer was compressed on the way.
            let mut plain = Vec::new();
            if flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut plain)
                .is_ok()
            {
                bytes = plain;
            }
        }
        let mut archive = tar::Archive::new(&bytes[..]);
        if let Ok(mut entries) = archive.entries()
            && let Some(Ok(mut entry)) = entries.next()
        {
            let mut s = String::new();
            if entry.read_to_string(&mut s).is_ok() {
                return Ok(s);
            }
        }
    }
    Err("no layer in the pulled image".into())
}

#[test]
fn a_restored_registry_serves_every_image_by_digest() {
    if !tools() {
        return;
    }
    let dir = TempDir::new("registry");
    let root = dir.path().join("registry");
    std::fs::create_dir_all(&root).expect("root");
    let plan = dir.write(
        "plan.yaml",
        "version: 1\nname: reg\nparts: [images]\n\
         images: {type: path, path: registry, name: dtr-registry-0a1b2c3d4e5f}\n\
         destination: {type: local, path: backups}\n\
         encryption: {type: passphrase, passphrase: {env: DTR_BACKUP_PASSPHRASE}}\n",
    );
    let dtr_backup_json = |args: &[&str]| {
        let mut cmd = dtr_backup(dir.path());
        cmd.env("DTR_BACKUP_PASSPHRASE", PASSPHRASE)
            .args(args)
            .args(["--output", "json"])
            .arg(&plan);
        run(&mut cmd)
    };

    let mut images = Vec::new();
    let first_id = {
        let reg = Registry::start(dir.path(), &root);
        for (repo, tag, content) in [
            ("library/app", "1", "the first image"),
            ("team/api", "2", "the second image"),
        ] {
            let layout = oci_image(dir.path(), content);
            images.push((repo, push(&reg, dir.path(), &layout, repo, tag), content));
        }
        drop(reg);
        let out = dtr_backup_json(&["plan", "apply"]);
        assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
        events(&out).last().expect("events")["backup_id"]
            .as_str()
            .expect("id")
            .to_owned()
    };
    {
        let reg = Registry::start(dir.path(), &root);
        let layout = oci_image(dir.path(), "pushed after the first backup");
        let d = push(&reg, dir.path(), &layout, "library/app", "3");
        images.push(("library/app", d, "pushed after the first backup"));
    }
    std::thread::sleep(Duration::from_millis(1100)); // backup ids: one-second resolution
    let out = dtr_backup_json(&["plan", "apply"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    // The storage is lost; restore brings back the latest backup into images.path.
    std::fs::remove_dir_all(&root).expect("lose the storage");
    let out = dtr_backup_json(&["restore"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let reg = Registry::start(dir.path(), &root);
    for (repo, digest, content) in &images {
        assert_eq!(
            pull(&reg, dir.path(), repo, digest).as_deref(),
            Ok(*content),
            "{repo}@{digest}"
        );
    }
    drop(reg);

    // The first backup holds exactly the first two images.
    let older = dir.path().join("older");
    let out = dtr_backup_json(&[
        "restore",
        "--backup",
        &first_id,
        "--images-to",
        older.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let reg = Registry::start(dir.path(), &older);
    for (repo, digest, content) in &images[..2] {
        assert_eq!(
            pull(&reg, dir.path(), repo, digest).as_deref(),
            Ok(*content)
        );
    }
    let (repo, digest, _) = &images[2];
    assert!(
        pull(&reg, dir.path(), repo, digest).is_err(),
        "the image pushed after the first backup is not in it"
    );
    drop(reg);
    // And it passes a drill.
    let out = dtr_backup_json(&["restore", "--drill", "--backup", &first_id]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}
