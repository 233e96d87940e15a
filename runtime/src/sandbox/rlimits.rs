//! Resource limits (`--ulimit`) set on the container's process before it drops privileges
//! (raising a hard limit needs `CAP_SYS_RESOURCE`).

use nix::errno::Errno;
use nix::sys::resource::{setrlimit, Resource};

use super::spec::{Rlimit, RlimitResource};

#[derive(Debug, thiserror::Error)]
#[error("setrlimit({resource:?}, soft {soft}, hard {hard}): {source}")]
pub struct RlimitError {
    resource: RlimitResource,
    soft: u64,
    hard: u64,
    source: Errno,
}

pub fn apply(limits: &[Rlimit]) -> Result<(), RlimitError> {
    for limit in limits {
        setrlimit(resource(limit.resource), limit.soft, limit.hard).map_err(|source| RlimitError {
            resource: limit.resource,
            soft: limit.soft,
            hard: limit.hard,
            source,
        })?;
    }
    Ok(())
}

fn resource(r: RlimitResource) -> Resource {
    match r {
        RlimitResource::Core => Resource::RLIMIT_CORE,
        RlimitResource::Cpu => Resource::RLIMIT_CPU,
        RlimitResource::Data => Resource::RLIMIT_DATA,
        RlimitResource::Fsize => Resource::RLIMIT_FSIZE,
        RlimitResource::Locks => Resource::RLIMIT_LOCKS,
        RlimitResource::Memlock => Resource::RLIMIT_MEMLOCK,
        RlimitResource::Msgqueue => Resource::RLIMIT_MSGQUEUE,
        RlimitResource::Nice => Resource::RLIMIT_NICE,
        RlimitResource::Nofile => Resource::RLIMIT_NOFILE,
        RlimitResource::Nproc => Resource::RLIMIT_NPROC,
        RlimitResource::Rss => Resource::RLIMIT_RSS,
        RlimitResource::Rtprio => Resource::RLIMIT_RTPRIO,
        RlimitResource::Rttime => Resource::RLIMIT_RTTIME,
        RlimitResource::Sigpending => Resource::RLIMIT_SIGPENDING,
        RlimitResource::Stack => Resource::RLIMIT_STACK,
    }
}
