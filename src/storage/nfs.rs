//! The NFS mount check: image content on NFS is read only when `path` is a mount point whose
//! filesystem is NFS and whose source is the plan's `server`, so that a dropped mount never
//! produces a "successful" backup of an empty folder.

use std::path::Path;

use crate::error::{Error, Result};

/// One line of `/proc/self/mountinfo`: mount point, filesystem type, source.
#[derive(Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: String,
    pub fstype: String,
    pub source: String,
}

/// `\040`-style escapes of mountinfo fields.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// Parses mountinfo text (see proc(5)): `id parent maj:min root mount-point options
/// [optional fields...] - fstype source super-options`.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = unescape(left.split_whitespace().nth(4)?);
            let mut r = right.split_whitespace();
            let fstype = r.next()?.to_owned();
            let source = unescape(r.next()?);
            Some(Mount {
                mount_point,
                fstype,
                source,
            })
        })
        .collect()
}

/// Checks `path` against `mounts` (the last mount on a point wins, as the kernel shows it).
pub fn check(path: &Path, server: &str, mounts: &[Mount]) -> Result<()> {
    let want = path.to_string_lossy();
    let want = want.trim_end_matches('/');
    let Some(m) = mounts.iter().rev().find(|m| m.mount_point == want) else {
        return Err(Error::source(format!(
            "{want} is not a mount point: the NFS export {server} is not mounted there; mount it (or fix images.path) before backing up"
        )));
    };
    if !(m.fstype == "nfs" || m.fstype == "nfs4") {
        return Err(Error::source(format!(
            "{want} is mounted as {} from {}, not NFS from {server}; check the mount",
            m.fstype, m.source
        )));
    }
    let norm = |s: &str| s.trim_end_matches('/').to_owned();
    if norm(&m.source) != norm(server) {
        return Err(Error::source(format!(
            "{want} is an NFS mount of {}, not of {server}; check images.server or the mount",
            m.source
        )));
    }
    Ok(())
}

/// Checks `path` against this process's mounts.
pub fn check_mounted(path: &Path, server: &str) -> Result<()> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::source(format!("cannot read /proc/self/mountinfo: {e}")))?;
    check(path, server, &parse_mountinfo(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
36 22 0:45 / /mnt/dtr-images rw,relatime shared:20 - nfs4 nfs.example.com:/exports/dtr rw,vers=4.2
37 22 0:46 / /mnt/other\\040dir rw - nfs 10.0.0.5:/srv rw
38 22 0:47 / /srv/local rw - ext4 /dev/vdb1 rw
";

    #[test]
    fn parses_mountinfo() {
        let m = parse_mountinfo(INFO);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].mount_point, "/mnt/dtr-images");
        assert_eq!(m[1].fstype, "nfs4");
        assert_eq!(m[1].source, "nfs.example.com:/exports/dtr");
        assert_eq!(m[2].mount_point, "/mnt/other dir");
    }

    #[test]
    fn accepts_the_right_nfs_mount_and_refuses_the_rest() {
        let m = parse_mountinfo(INFO);
        assert!(
            check(
                Path::new("/mnt/dtr-images"),
                "nfs.example.com:/exports/dtr",
                &m
            )
            .is_ok()
        );
        assert!(
            check(
                Path::new("/mnt/dtr-images/"),
                "nfs.example.com:/exports/dtr/",
                &m
            )
            .is_ok()
        );
        let e = check(Path::new("/mnt/dtr-images"), "other:/x", &m)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not of other:/x"), "{e}");
        let e = check(Path::new("/srv/local"), "nfs.example.com:/exports/dtr", &m)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mounted as ext4"), "{e}");
        let e = check(
            Path::new("/mnt/dropped"),
            "nfs.example.com:/exports/dtr",
            &m,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a mount point"), "{e}");
    }

    #[test]
    fn a_real_non_nfs_folder_is_refused() {
        let dir = std::env::temp_dir();
        let e = check_mounted(&dir, "nfs.example.com:/exports/dtr").unwrap_err();
        assert!(matches!(e, Error::Source(_)), "{e:?}");
        let e = e.to_string();
        assert!(
            e.contains("not a mount point") || e.contains("not NFS"),
            "{e}"
        );
    }
}
