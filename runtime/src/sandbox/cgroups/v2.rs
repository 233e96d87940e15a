//! cgroup v2: one unified hierarchy; controllers are enabled down the path in
//! `cgroup.subtree_control`.

use std::path::Path;

use super::{create_dir, device_filter, write, Cgroup, CgroupError, Limits, PARENT};

const CONTROLLERS: [&str; 4] = ["memory", "cpu", "pids", "cpuset"];

pub fn create(
    root: &Path,
    own: &[(Vec<String>, String)],
    id: &str,
    limits: &Limits,
    cgroup: &mut Cgroup,
) -> Result<(), CgroupError> {
    let parent = root.join(PARENT);
    create_dir(&parent)?;
    enable_controllers(root)?;
    enable_controllers(&parent)?;
    let dir = parent.join(id);
    create_dir(&dir)?;
    let own_path =
        own.iter().find(|(controllers, _)| controllers.is_empty()).map_or("/", |(_, p)| p.as_str());
    cgroup.push(dir.clone(), root.join(own_path.trim_start_matches('/')));

    // The limits, as `update` sets them.
    cgroup.set_resources(&limits.resources)?;
    if let Some(rules) = &limits.devices {
        let rules = rules.iter().map(|r| r.parse()).collect::<Result<Vec<device_filter::Rule>, _>>()?;
        device_filter::attach(&dir, &rules)?;
    }
    Ok(())
}

/// Enables in `dir`'s children the controllers `dir` itself has.
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.controllers");
    let available =
        std::fs::read_to_string(&path).map_err(|source| CgroupError::Read { path: path.clone(), source })?;
    for controller in CONTROLLERS.iter().filter(|c| available.split_whitespace().any(|a| a == **c)) {
        write(&dir.join("cgroup.subtree_control"), &format!("+{controller}"))?;
    }
    Ok(())
}
