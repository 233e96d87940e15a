//! Capabilities: docker's default set, `--cap-add`/`--cap-drop`/`--privileged` applied to it,
//! and the switch of the container's process to its final user and capability sets.
//!
//! As moby does: root gets the set as bounding, permitted and effective; any other user gets
//! it as bounding only (execve would clear the rest anyway). Inheritable and ambient are empty.

use caps::{CapSet, Capability, CapsHashSet};
use nix::errno::Errno;
use nix::unistd::{Gid, Uid};

use super::spec::CapabilityOptions;
use super::user::ExecUser;

/// Docker's default capabilities (moby `oci/caps/defaults.go`).
pub const DOCKER_DEFAULT: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    #[error("unknown capability {name:?}")]
    Unknown { name: String },
    #[error("capability {name} cannot be given: skiff itself does not hold it")]
    Unavailable { name: String },
    #[error("{step}: {source}")]
    Apply { step: &'static str, source: caps::errors::CapsError },
    #[error("{step}: {source}")]
    Syscall { step: &'static str, source: Errno },
}

/// The capability set a container gets: docker's defaults, then drops, then adds (docker's
/// `TweakCapabilities` order: `--cap-drop ALL --cap-add X` leaves exactly X).
pub fn resolve(options: &CapabilityOptions) -> Result<CapsHashSet, CapabilityError> {
    // `--privileged` and `ALL` mean every capability skiff itself holds: a machine may keep
    // some from root (here, CAP_SYS_RESOURCE), and asking for those fails.
    let held = caps::read(None, CapSet::Permitted)
        .map_err(|source| CapabilityError::Apply { step: "reading skiff's permitted set", source })?;
    if options.privileged {
        return Ok(held);
    }
    let mut set: CapsHashSet = DOCKER_DEFAULT.into_iter().collect();
    for name in &options.drop {
        match parse(name)? {
            None => set.clear(),
            Some(cap) => {
                set.remove(&cap);
            }
        }
    }
    for name in &options.add {
        match parse(name)? {
            None => set.extend(held.iter().copied()),
            Some(cap) if held.contains(&cap) => {
                set.insert(cap);
            }
            Some(cap) => return Err(CapabilityError::Unavailable { name: cap.to_string() }),
        }
    }
    Ok(set)
}

/// A capability by name, as docker takes it (`NET_ADMIN`, `cap_net_admin`); `None` for
/// `ALL`.
pub fn parse(name: &str) -> Result<Option<Capability>, CapabilityError> {
    let upper = name.to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(None);
    }
    let canonical = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    canonical.parse().map(Some).map_err(|_| CapabilityError::Unknown { name: name.to_string() })
}

/// Drops every capability outside `set` from the bounding set. Needs `CAP_SETPCAP`, so it runs
/// while the process is still full root.
pub fn drop_bounding(set: &CapsHashSet) -> Result<(), CapabilityError> {
    for cap in caps::runtime::thread_all_supported() {
        if !set.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|source| CapabilityError::Apply {
                step: "dropping from the bounding set",
                source,
            })?;
        }
    }
    Ok(())
}

/// Switches to `user` and leaves exactly the capabilities docker gives that user.
pub fn switch_user(user: &ExecUser, set: &CapsHashSet) -> Result<(), CapabilityError> {
    let sys = |step| move |source| CapabilityError::Syscall { step, source };
    // Keep the permitted set across setuid so it can be set explicitly below.
    nix::sys::prctl::set_keepcaps(true).map_err(sys("prctl(PR_SET_KEEPCAPS)"))?;
    let groups: Vec<Gid> = user.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    nix::unistd::setgroups(&groups).map_err(sys("setgroups"))?;
    nix::unistd::setresgid(Gid::from_raw(user.gid), Gid::from_raw(user.gid), Gid::from_raw(user.gid))
        .map_err(sys("setresgid"))?;
    nix::unistd::setresuid(Uid::from_raw(user.uid), Uid::from_raw(user.uid), Uid::from_raw(user.uid))
        .map_err(sys("setresuid"))?;
    let granted = if user.uid == 0 { set.clone() } else { CapsHashSet::new() };
    let apply = |step, cset, value: &CapsHashSet| {
        caps::set(None, cset, value).map_err(|source| CapabilityError::Apply { step, source })
    };
    // Effective first: it must stay a subset of permitted at every step.
    apply("setting the effective set", CapSet::Effective, &granted)?;
    apply("setting the permitted set", CapSet::Permitted, &granted)?;
    apply("clearing the inheritable set", CapSet::Inheritable, &CapsHashSet::new())?;
    caps::clear(None, CapSet::Ambient)
        .map_err(|source| CapabilityError::Apply { step: "clearing the ambient set", source })?;
    nix::sys::prctl::set_keepcaps(false).map_err(sys("prctl(PR_SET_KEEPCAPS)"))?;
    Ok(())
}

/// The set as the bitmask `/proc/self/status` prints (`CapEff`), for tests and probes.
pub fn mask(set: &CapsHashSet) -> u64 {
    set.iter().fold(0, |m, cap| m | cap.bitmask())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_default_mask() {
        let set = resolve(&CapabilityOptions::default()).unwrap();
        assert_eq!(mask(&set), 0x00000000a80425fb);
    }

    #[test]
    fn drop_all_then_add() {
        let options =
            CapabilityOptions { add: vec!["net_admin".into()], drop: vec!["ALL".into()], privileged: false };
        let set = resolve(&options).unwrap();
        assert_eq!(set, [Capability::CAP_NET_ADMIN].into_iter().collect());
        let bad = CapabilityOptions { add: vec!["CAP_FLY".into()], ..Default::default() };
        assert!(matches!(resolve(&bad), Err(CapabilityError::Unknown { .. })));
    }
}
