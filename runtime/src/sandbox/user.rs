//! Resolving docker's `--user name|uid[:group|gid]` against the image's own `/etc/passwd` and
//! `/etc/group` (read through the rootfs, never the host's), as runc's `GetExecUser` does.

use std::io::Read;
use std::os::fd::BorrowedFd;
use std::path::Path;

use nix::fcntl::OFlag;

use super::paths::{self, PathError};

/// Who the container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the groups in `/etc/group` that list the user as a member.
    pub groups: Vec<u32>,
    /// `HOME` when the spec's environment has none.
    pub home: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("unable to find user {name}: no matching entries in the image's /etc/passwd")]
    NoSuchUser { name: String },
    #[error("unable to find group {name}: no matching entries in the image's /etc/group")]
    NoSuchGroup { name: String },
    #[error("reading the image's {path}: {source}")]
    Read { path: &'static str, source: std::io::Error },
    #[error(transparent)]
    Path(#[from] PathError),
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves `spec` (`None` = root) from the rootfs at `root`, with the groups of `group_add`
/// (names or gids) added to its own.
pub fn resolve(
    root: BorrowedFd<'_>,
    spec: Option<&str>,
    group_add: &[String],
) -> Result<ExecUser, UserError> {
    let passwd = read_db(root, "/etc/passwd")?;
    let passwd: Vec<PasswdEntry> = passwd.lines().filter_map(parse_passwd).collect();
    let (user_part, group_part) = match spec {
        None | Some("") => ("0", None),
        Some(s) => match s.split_once(':') {
            Some((u, g)) => (if u.is_empty() { "0" } else { u }, Some(g)),
            None => (s, None),
        },
    };
    let numeric_uid = user_part.parse::<u32>().ok();
    let entry = passwd.iter().find(|e| match numeric_uid {
        Some(uid) => e.uid == uid,
        None => e.name == user_part,
    });
    let mut user = match (entry, numeric_uid) {
        (Some(e), _) => ExecUser { uid: e.uid, gid: e.gid, groups: Vec::new(), home: e.home.clone() },
        (None, Some(uid)) => ExecUser { uid, gid: 0, groups: Vec::new(), home: "/".to_string() },
        (None, None) => return Err(UserError::NoSuchUser { name: user_part.to_string() }),
    };
    let groups = read_db(root, "/etc/group")?;
    let groups: Vec<GroupEntry> = groups.lines().filter_map(parse_group).collect();
    if let Some(group) = group_part.filter(|g| !g.is_empty()) {
        user.gid = gid_of(&groups, group)?;
    }
    if let Some(e) = entry {
        user.groups = groups.iter().filter(|g| g.members.contains(&e.name)).map(|g| g.gid).collect();
    }
    for added in group_add {
        let gid = gid_of(&groups, added)?;
        if !user.groups.contains(&gid) {
            user.groups.push(gid);
        }
    }
    Ok(user)
}

/// The file's text, or empty when the image has none (a scratch image runs as uid 0 fine).
fn read_db(root: BorrowedFd<'_>, path: &'static str) -> Result<String, UserError> {
    let fd = match paths::open_in_root(root, Path::new(path), OFlag::O_RDONLY) {
        Ok(fd) => fd,
        Err(PathError::Open { source: nix::errno::Errno::ENOENT, .. }) => return Ok(String::new()),
        Err(e) => return Err(e.into()),
    };
    let mut text = String::new();
    std::fs::File::from(fd).read_to_string(&mut text).map_err(|source| UserError::Read { path, source })?;
    Ok(text)
}

fn parse_passwd(line: &str) -> Option<PasswdEntry> {
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 7 || line.starts_with('#') {
        return None;
    }
    Some(PasswdEntry {
        name: f[0].to_string(),
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        home: f[5].to_string(),
    })
}

/// The gid `group` names: a number as it is, else a name in the image's `/etc/group`.
fn gid_of(groups: &[GroupEntry], group: &str) -> Result<u32, UserError> {
    match group.parse::<u32>() {
        Ok(gid) => Ok(gid),
        Err(_) => groups
            .iter()
            .find(|g| g.name == group)
            .map(|g| g.gid)
            .ok_or_else(|| UserError::NoSuchGroup { name: group.to_string() }),
    }
}

fn parse_group(line: &str) -> Option<GroupEntry> {
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 4 || line.starts_with('#') {
        return None;
    }
    let members = f[3].split(',').filter(|m| !m.is_empty()).map(str::to_string).collect();
    Some(GroupEntry { name: f[0].to_string(), gid: f[2].parse().ok()?, members })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::Mode;
    use std::os::fd::AsFd;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\napp:x:1000:\nwheel:x:10:app,other\n")
            .unwrap();
        dir
    }

    fn lookup_adding(spec: Option<&str>, group_add: &[&str]) -> Result<ExecUser, UserError> {
        let dir = rootfs();
        let fd = nix::fcntl::open(dir.path(), OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        let group_add: Vec<String> = group_add.iter().map(|g| g.to_string()).collect();
        resolve(fd.as_fd(), spec, &group_add)
    }

    fn lookup(spec: Option<&str>) -> Result<ExecUser, UserError> {
        lookup_adding(spec, &[])
    }

    #[test]
    fn resolves_names_numbers_and_groups() {
        assert_eq!(lookup(None).unwrap(), ExecUser { uid: 0, gid: 0, groups: vec![], home: "/root".into() });
        let app = lookup(Some("app")).unwrap();
        assert_eq!(
            (app.uid, app.gid, app.groups.as_slice(), app.home.as_str()),
            (1000, 1000, &[10][..], "/home/app")
        );
        assert_eq!(lookup(Some("1000:wheel")).unwrap().gid, 10);
        let unknown = lookup(Some("4242:7")).unwrap();
        assert_eq!((unknown.uid, unknown.gid), (4242, 7));
        assert!(matches!(lookup(Some("nobody")), Err(UserError::NoSuchUser { .. })));
        assert!(matches!(lookup(Some("app:nogroup")), Err(UserError::NoSuchGroup { .. })));
        // --group-add: by name or number, each once.
        assert_eq!(lookup_adding(Some("app"), &["wheel", "app", "4321"]).unwrap().groups, [10, 1000, 4321]);
        assert!(matches!(lookup_adding(None, &["staff"]), Err(UserError::NoSuchGroup { .. })));
    }
}
