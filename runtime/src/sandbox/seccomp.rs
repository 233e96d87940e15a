//! The default seccomp filter: the syscalls docker's default profile refuses, refused here with
//! `EPERM` (and `clone3` with `ENOSYS`, so libc falls back to `clone`, whose namespace flags are
//! checked). As in docker's profile, a syscall gated by a capability is allowed when the
//! container holds that capability. The filters are compiled by the supervisor (seccompiler,
//! pure Rust) and only installed in the container's process.

use std::collections::BTreeMap;

use caps::{Capability, CapsHashSet};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the seccomp filter for {arch}: {source}")]
    Build { arch: &'static str, source: seccompiler::BackendError },
    #[error("compiling the seccomp filter for {arch}: {source}")]
    Compile { arch: &'static str, source: seccompiler::BackendError },
    #[error("unsupported architecture {arch} for the seccomp filter")]
    Arch { arch: &'static str },
    #[error("the seccomp filter has {len} instructions, more than the kernel takes")]
    TooLong { len: usize },
    #[error("installing the seccomp filter: {source}")]
    Syscall { source: std::io::Error },
}

/// The compiled filters, installed in order.
#[derive(Debug, Clone)]
pub struct Filters {
    programs: Vec<BpfProgram>,
}

/// A syscall docker's profile refuses, and the capability that allows it again (if any).
type Gated = (i64, Option<Capability>);

fn refused_with_eperm() -> Vec<Gated> {
    use Capability::*;
    let admin = Some(CAP_SYS_ADMIN);
    let mut list: Vec<Gated> = vec![
        (libc::SYS_acct, Some(CAP_SYS_PACCT)),
        (libc::SYS_add_key, None),
        (libc::SYS_keyctl, None),
        (libc::SYS_request_key, None),
        (libc::SYS_bpf, admin),
        (libc::SYS_clock_adjtime, Some(CAP_SYS_TIME)),
        (libc::SYS_clock_settime, Some(CAP_SYS_TIME)),
        (libc::SYS_settimeofday, Some(CAP_SYS_TIME)),
        (libc::SYS_delete_module, Some(CAP_SYS_MODULE)),
        (libc::SYS_finit_module, Some(CAP_SYS_MODULE)),
        (libc::SYS_init_module, Some(CAP_SYS_MODULE)),
        (libc::SYS_fanotify_init, admin),
        (libc::SYS_fsconfig, admin),
        (libc::SYS_fsmount, admin),
        (libc::SYS_fsopen, admin),
        (libc::SYS_fspick, admin),
        (libc::SYS_get_mempolicy, Some(CAP_SYS_NICE)),
        (libc::SYS_mbind, Some(CAP_SYS_NICE)),
        (libc::SYS_set_mempolicy, Some(CAP_SYS_NICE)),
        (libc::SYS_io_uring_setup, None),
        (libc::SYS_io_uring_enter, None),
        (libc::SYS_io_uring_register, None),
        (libc::SYS_kcmp, Some(CAP_SYS_PTRACE)),
        (libc::SYS_kexec_file_load, Some(CAP_SYS_BOOT)),
        (libc::SYS_kexec_load, Some(CAP_SYS_BOOT)),
        (libc::SYS_reboot, Some(CAP_SYS_BOOT)),
        (libc::SYS_lookup_dcookie, admin),
        (libc::SYS_mount, admin),
        (libc::SYS_mount_setattr, admin),
        (libc::SYS_move_mount, admin),
        (libc::SYS_open_tree, admin),
        (libc::SYS_umount2, admin),
        (libc::SYS_pivot_root, admin),
        (libc::SYS_nfsservctl, None),
        (libc::SYS_open_by_handle_at, Some(CAP_DAC_READ_SEARCH)),
        (libc::SYS_perf_event_open, admin),
        (libc::SYS_process_vm_readv, Some(CAP_SYS_PTRACE)),
        (libc::SYS_process_vm_writev, Some(CAP_SYS_PTRACE)),
        (libc::SYS_quotactl, admin),
        (libc::SYS_setdomainname, admin),
        (libc::SYS_sethostname, admin),
        (libc::SYS_setns, admin),
        (libc::SYS_unshare, admin),
        (libc::SYS_swapoff, admin),
        (libc::SYS_swapon, admin),
        (libc::SYS_syslog, Some(CAP_SYSLOG)),
        (libc::SYS_userfaultfd, Some(CAP_SYS_PTRACE)),
    ];
    #[cfg(target_arch = "x86_64")]
    list.extend([
        (libc::SYS_ioperm, Some(CAP_SYS_RAWIO)),
        (libc::SYS_iopl, Some(CAP_SYS_RAWIO)),
        (libc::SYS_uselib, None),
        (libc::SYS_ustat, None),
        (libc::SYS_sysfs, None),
        (libc::SYS__sysctl, None),
    ]);
    list
}

/// Namespace flags `clone` may not carry without `CAP_SYS_ADMIN`.
const CLONE_NAMESPACE_FLAGS: [i32; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// The default filter for a container holding `caps`.
pub fn default_filters(caps: &CapsHashSet) -> Result<Filters, SeccompError> {
    let arch_name = std::env::consts::ARCH;
    let arch = TargetArch::try_from(arch_name).map_err(|_| SeccompError::Arch { arch: arch_name })?;
    let build = |source| SeccompError::Build { arch: arch_name, source };
    let admin = caps.contains(&Capability::CAP_SYS_ADMIN);

    let mut eperm: BTreeMap<i64, Vec<SeccompRule>> = refused_with_eperm()
        .into_iter()
        .filter(|(_, gate)| !gate.is_some_and(|cap| caps.contains(&cap)))
        .map(|(nr, _)| (nr, Vec::new()))
        .collect();
    if !admin {
        let mut rules = Vec::new();
        for flag in CLONE_NAMESPACE_FLAGS {
            let flag = flag as u64;
            let condition =
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(flag), flag)
                    .map_err(build)?;
            rules.push(SeccompRule::new(vec![condition]).map_err(build)?);
        }
        eperm.insert(libc::SYS_clone, rules);
    }
    let mut filters =
        vec![SeccompFilter::new(eperm, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch)
            .map_err(build)?];
    if !admin {
        let enosys = [(libc::SYS_clone3, Vec::new())].into_iter().collect();
        filters.push(
            SeccompFilter::new(enosys, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32), arch)
                .map_err(build)?,
        );
    }
    let programs = filters
        .into_iter()
        .map(|f| BpfProgram::try_from(f).map_err(|source| SeccompError::Compile { arch: arch_name, source }))
        .collect::<Result<_, _>>()?;
    Ok(Filters { programs })
}

impl Filters {
    /// Installs the filters on the calling thread (the container's single-threaded init). With CAP_SYS_ADMIN held that needs no
    /// `no_new_privs`, so it is left as the container's options set it (seccompiler's own
    /// installer would always set it, and a setuid program in the container would not run).
    pub fn install(&self) -> Result<(), SeccompError> {
        for program in &self.programs {
            let fprog = libc::sock_fprog {
                len: u16::try_from(program.len())
                    .map_err(|_| SeccompError::TooLong { len: program.len() })?,
                filter: program.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: `fprog` points into `program`, alive and unchanged for the call; the
            // kernel copies the filter.
            #[allow(unsafe_code)]
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &fprog as *const libc::sock_fprog,
                )
            };
            if rc != 0 {
                return Err(SeccompError::Syscall { source: std::io::Error::last_os_error() });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_filters_compile_with_and_without_sys_admin() {
        let none = CapsHashSet::new();
        assert_eq!(default_filters(&none).unwrap().programs.len(), 2);
        let admin: CapsHashSet = [Capability::CAP_SYS_ADMIN].into_iter().collect();
        assert_eq!(default_filters(&admin).unwrap().programs.len(), 1);
    }
}
