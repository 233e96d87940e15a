//! This process's mounts, as `/proc/self/mountinfo` lists them.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One mount: where it is, and its filesystem type (`fuse.skiff`, `overlay`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub fstype: String,
}

/// Every mount this process sees, parents before their children; none when the list cannot
/// be read.
pub fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| text.lines().filter_map(parse).collect())
        .unwrap_or_default()
}

/// The mount points strictly under `dir`, deepest first (the order to unmount them in).
pub fn under(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> =
        mounts().into_iter().map(|m| m.point).filter(|p| p.starts_with(dir) && p != dir).collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw`: the fifth field is the
/// mount point; the type follows the `-` that ends the optional fields.
fn parse(line: &str) -> Option<Mount> {
    let mut fields = line.split(' ');
    let point = fields.nth(4)?;
    let fstype = fields.skip_while(|f| *f != "-").nth(1)?;
    Some(Mount { point: unescape(point), fstype: unescape(fstype).to_string_lossy().into_owned() })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(std::str::from_utf8(o).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_give_the_unescaped_point_and_the_type() {
        let line =
            r"36 35 0:52 / /tmp/a\040b rw,nosuid,nodev,relatime shared:1 master:2 - fuse.skiff skiff:img rw";
        assert_eq!(
            parse(line),
            Some(Mount { point: PathBuf::from("/tmp/a b"), fstype: "fuse.skiff".into() })
        );
        let plain = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw";
        assert_eq!(parse(plain), Some(Mount { point: PathBuf::from("/"), fstype: "ext4".into() }));
        assert_eq!(parse("27 1 254:0 / /"), None);
        assert_eq!(unescape(r"/x\134y\011z"), PathBuf::from("/x\\y\tz"));
    }
}
