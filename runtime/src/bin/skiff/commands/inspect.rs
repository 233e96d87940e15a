use anyhow::{bail, Context as _};
use skiff::container::{Containers, State};
use skiff::store::StoreError;

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Do not contact the registry to check gzip layers for an eStargz footer.
    #[arg(long)]
    offline: bool,
    /// Print this template for each, instead of JSON: `{{.Field.Sub}}` is a field of the
    /// JSON, `{{json .Field}}` one as JSON (`{{.status}} {{.spec.hostname}}` for a container).
    #[arg(short, long)]
    format: Option<String>,
    /// Images (or containers, as docker inspect takes them too) to describe.
    #[arg(required = true)]
    images: Vec<String>,
}

/// `template` filled from `value`: each `{{.a.b}}` (a string as it is, anything else as JSON;
/// a missing field as `<no value>`, as docker prints it) or `{{json .a.b}}`.
fn render(template: &str, value: &serde_json::Value) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find("}}") else { bail!("template {template:?}: unclosed {{{{") };
        let action = rest[open + 2..open + close].trim();
        let (as_json, path) = match action.strip_prefix("json ") {
            Some(path) => (true, path.trim()),
            None => (false, action),
        };
        let Some(path) = path.strip_prefix('.') else {
            bail!("template {template:?}: cannot evaluate {action:?} (fields are .Name.Sub, or json .Name)")
        };
        let mut field = Some(value);
        for key in path.split('.').filter(|k| !k.is_empty()) {
            field = field.and_then(|f| f.get(key));
        }
        match field {
            None => out.push_str("<no value>"),
            Some(serde_json::Value::String(s)) if !as_json => out.push_str(s),
            Some(v) => out.push_str(&serde_json::to_string(v)?),
        }
        rest = &rest[open + close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One entry of the output, in its own fields' order.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Described {
    Image(Box<skiff::image::ImageDetails>),
    /// A container's record, with docker's fields of it beside skiff's own.
    Container(serde_json::Value),
}

/// Docker's time of an event that has not happened.
const NEVER: &str = "0001-01-01T00:00:00Z";

/// A container as docker inspect shows it (the fields skiff has): Id, Name, Created, Path,
/// Args, State, Image, Config, HostConfig, Mounts, NetworkSettings.Ports, RestartCount.
fn docker_fields(containers: &Containers, s: &State) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::json;
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or(NEVER.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
    };
    let status = super::ps::state(s);
    let running = s.is_running();
    let health = s.health.as_ref().map(|h| {
        let log: Vec<_> = h
            .log
            .iter()
            .map(|p| {
                json!({"Start": time(Some(p.start)), "End": time(Some(p.end)), "ExitCode": p.exit_code, "Output": p.output})
            })
            .collect();
        json!({"Status": h.status.to_string(), "FailingStreak": h.failing_streak, "Log": log})
    });
    let mut state = json!({
        "Status": status,
        "Running": running,
        "Paused": status == "paused",
        "Restarting": status == "restarting",
        "OOMKilled": s.oom_killed,
        // skiff has no dead state (a removal that failed halfway).
        "Dead": false,
        "Pid": s.init.filter(|_| running).map_or(0, |p| p.pid),
        "ExitCode": s.exit_code.unwrap_or(0),
        "Error": s.error.clone().unwrap_or_default(),
        "StartedAt": time(s.started_at),
        "FinishedAt": time(s.finished_at),
    });
    if let Some(health) = health {
        state["Health"] = health;
    }
    let spec = &s.spec;
    // A volume (an image's VOLUME, or a named one) or a bind mount of a host path.
    let (anonymous, named) = (containers.paths(&s.id).volumes, containers.named_volumes());
    let mounts: Vec<_> = spec
        .volumes
        .iter()
        .map(|v| {
            let name = match v.host.parent() {
                Some(dir) if dir == anonymous => v.host.file_name(),
                Some(dir) if named.holds(&v.host) => dir.file_name(),
                _ => None,
            };
            let mut mount =
                json!({"Type": "bind", "Source": v.host, "Destination": v.container, "RW": !v.read_only});
            if let Some(name) = name {
                mount["Type"] = json!("volume");
                mount["Name"] = json!(name.to_string_lossy());
            }
            mount
        })
        .chain(
            spec.tmpfs
                .iter()
                .map(|t| json!({"Type": "tmpfs", "Source": "", "Destination": t.path, "RW": true})),
        )
        .collect();
    let mut ports = serde_json::Map::new();
    for p in &s.published {
        let bindings = ports.entry(format!("{}/tcp", p.container_port)).or_insert_with(|| json!([]));
        if let Some(list) = bindings.as_array_mut() {
            list.push(json!({"HostIp": p.host_ip.to_string(), "HostPort": p.host_port.to_string()}));
        }
    }
    // The policy's own serde form names it as docker does.
    let policy = json!(s.restart);
    let (restart, retries) = (policy["name"].clone(), policy["max_retries"].as_u64().unwrap_or(0));
    let network = match (&spec.network, &s.network_container) {
        (_, Some(other)) => format!("container:{other}"),
        (skiff::sandbox::Network::Host, None) => "host".to_string(),
        _ => "none".to_string(),
    };
    // docker's Entrypoint and Cmd, each null when empty; a record that did not keep where the
    // entrypoint ends shows the whole command as Cmd.
    let (entrypoint, cmd) = spec.args.split_at(s.entrypoint_len.unwrap_or(0).min(spec.args.len()));
    let list_or_null = |l: &[String]| if l.is_empty() { serde_json::Value::Null } else { json!(l) };
    let fields = json!({
        "Id": s.id,
        "Name": format!("/{}", s.name),
        "Created": time(Some(s.created)),
        "Path": spec.args.first().cloned().unwrap_or_default(),
        "Args": spec.args.iter().skip(1).collect::<Vec<_>>(),
        "State": state,
        "Image": s.image.manifest.to_string(),
        "RestartCount": s.restart_count,
        "Config": {
            "Hostname": spec.hostname,
            "User": spec.user.clone().unwrap_or_default(),
            "Env": spec.env,
            "Entrypoint": list_or_null(entrypoint),
            "Cmd": list_or_null(cmd),
            "Image": s.image.name,
            "WorkingDir": spec.cwd,
            "Labels": s.labels,
            "Tty": spec.tty,
            "OpenStdin": s.interactive,
            "StopSignal": s.stop_signal,
        },
        "HostConfig": {
            "AutoRemove": s.auto_remove,
            "RestartPolicy": {"Name": restart, "MaximumRetryCount": retries},
            "NetworkMode": network,
            "ReadonlyRootfs": spec.read_only_rootfs,
            "Memory": spec.resources.memory.unwrap_or(0),
            "NanoCpus": spec.resources.cpus.map_or(0, |c| (c * 1e9) as u64),
            "PidsLimit": spec.resources.pids.unwrap_or(0),
        },
        "Mounts": mounts,
        "NetworkSettings": {"Ports": ports},
    });
    match fields {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("an object literal"),
    }
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let client = if args.offline { None } else { Some(ctx.client()?) };
    let mut out = Vec::new();
    for input in &args.images {
        let record = match store.find_image(input) {
            Err(StoreError::NoSuchImage(_)) => {
                // Not an image: a container's record, if one has that name or id.
                let containers = super::run::containers(ctx)?;
                let Ok(state) = containers.find(input) else {
                    bail!("no such image or container: {input}");
                };
                let mut value = serde_json::to_value(&state)?;
                if let serde_json::Value::Object(map) = &mut value {
                    map.extend(docker_fields(&containers, &state));
                }
                out.push(Described::Container(value));
                continue;
            }
            found => found?,
        };
        let details = skiff::image::inspect(&store, &record, client.as_ref())
            .with_context(|| format!("inspecting {}", record.name))?;
        out.push(Described::Image(Box::new(details)));
    }
    match &args.format {
        None => println!("{}", serde_json::to_string_pretty(&out)?),
        Some(template) => {
            let template = template.replace("\\t", "\t").replace("\\n", "\n");
            for described in &out {
                println!("{}", render(&template, &serde_json::to_value(described)?)?);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_read_fields_as_docker_inspect_does() {
        let v = serde_json::json!({"status": "running", "spec": {"hostname": "h1", "env": ["A=1"]}, "exit_code": null});
        assert_eq!(render("{{.status}} on {{ .spec.hostname }}", &v).unwrap(), "running on h1");
        assert_eq!(
            render("{{json .spec.env}}|{{.exit_code}}|{{.nope.deeper}}", &v).unwrap(),
            "[\"A=1\"]|null|<no value>"
        );
        assert_eq!(render("{{json .status}}", &v).unwrap(), "\"running\"");
        assert!(render("{{status}}", &v).unwrap_err().to_string().contains("cannot evaluate"));
        assert!(render("{{.status", &v).is_err());
    }
}
