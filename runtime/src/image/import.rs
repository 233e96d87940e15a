//! `import`: a filesystem tarball (as `skiff export` and `docker export` write it; plain, gzip
//! or zstd) becomes an image of one layer, as docker import makes it, with Dockerfile
//! instructions (`--change 'CMD ["sh"]'`) applied to its config.

use std::io::{self, BufRead, BufReader, Read, Seek};

use skiff_fs::Digest;

use super::commit::{layer_from_tar, stage, LayerCompression};
use super::ImageError;
use crate::manifest::{ImageManifest, Platform, OCI_CONFIG, OCI_MANIFEST};
use crate::reference::Reference;
use crate::store::{ImageRecord, Store};

#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The history entry's comment (`-m`).
    pub message: Option<String>,
    /// Dockerfile instructions for the config: CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL,
    /// EXPOSE, VOLUME, STOPSIGNAL.
    pub changes: Vec<String>,
    pub compression: LayerCompression,
    /// The platform the config names.
    pub platform: Platform,
}

/// Stores the tarball read from `input` (named `what` in errors) as the image `dest`.
pub fn import(
    store: &Store,
    input: &mut dyn Read,
    what: &str,
    dest: &Reference,
    options: &ImportOptions,
) -> Result<ImageRecord, ImageError> {
    let invalid = |why: String| ImageError::Invalid { what: what.to_string(), why };
    // The changes first: a typo fails before the tarball is read.
    let mut config = serde_json::json!({});
    for change in &options.changes {
        apply_change(&mut config, change).map_err(|why| invalid(format!("--change {change:?}: {why}")))?;
    }
    let mut tar = tempfile::tempfile_in(store.root().join("tmp")).map_err(|e| invalid(e.to_string()))?;
    let mut input = BufReader::with_capacity(256 << 10, input);
    let magic = input.fill_buf().map_err(|e| invalid(format!("reading: {e}")))?.to_vec();
    let copied = if magic.starts_with(&[0x1f, 0x8b]) {
        io::copy(&mut flate2::read::MultiGzDecoder::new(input), &mut tar)
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::read::Decoder::with_buffer(input).and_then(|mut d| io::copy(&mut d, &mut tar))
    } else {
        io::copy(&mut input, &mut tar)
    };
    copied.map_err(|e| invalid(format!("reading: {e}")))?;
    // A tar, whole, before anything is stored.
    tar.rewind().map_err(|e| invalid(e.to_string()))?;
    let mut entries = 0;
    for entry in
        tar::Archive::new(&mut tar).entries().map_err(|e| invalid(format!("not a tar archive: {e}")))?
    {
        let mut entry = entry.map_err(|e| invalid(format!("not a tar archive: {e}")))?;
        io::copy(&mut entry, &mut io::sink())
            .map_err(|e| invalid(format!("reading entry {entries}: {e}")))?;
        entries += 1;
    }
    if entries == 0 && tar.metadata().map_err(|e| invalid(e.to_string()))?.len() == 0 {
        return Err(invalid("it is empty, not a tar archive".into()));
    }
    tar.rewind().map_err(|e| invalid(e.to_string()))?;
    let (layer, layer_desc, diff_id) = layer_from_tar(store, &mut tar, options.compression, false, what)?;

    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut history = serde_json::json!({ "created": now, "created_by": format!("skiff import {what}") });
    if let Some(m) = &options.message {
        history["comment"] = m.clone().into();
    }
    let mut image_config = serde_json::json!({
        "created": now,
        "architecture": options.platform.architecture,
        "os": options.platform.os,
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": [diff_id.to_string()] },
        "history": [history],
    });
    if let Some(variant) = &options.platform.variant {
        image_config["variant"] = variant.clone().into();
    }
    let config_bytes = serde_json::to_vec(&image_config).expect("JSON serializes");
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        config: crate::manifest::Descriptor {
            media_type: OCI_CONFIG.into(),
            digest: Digest::of(&config_bytes),
            size: config_bytes.len() as u64,
            urls: None,
            annotations: Default::default(),
            platform: None,
        },
        layers: vec![layer_desc],
        annotations: Default::default(),
    };
    let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
    let digest = Digest::of(&manifest_bytes);
    let record =
        ImageRecord { name: dest.to_string(), digest, manifest: digest, source: dest.name(), updated: now };
    let objects = vec![layer, stage(store, &config_bytes)?, stage(store, &manifest_bytes)?];
    store.commit_image(objects, record.clone())?;
    Ok(record)
}

/// Applies one Dockerfile instruction to the `config` object of an image config.
pub(super) fn apply_change(config: &mut serde_json::Value, change: &str) -> Result<(), String> {
    let (instruction, rest) = change.trim().split_once(char::is_whitespace).unwrap_or((change.trim(), ""));
    let rest = rest.trim();
    if rest.is_empty() {
        return Err("it has no argument".into());
    }
    match instruction.to_ascii_uppercase().as_str() {
        "CMD" => config["Cmd"] = command(rest)?.into(),
        "ENTRYPOINT" => config["Entrypoint"] = command(rest)?.into(),
        "WORKDIR" => config["WorkingDir"] = rest.into(),
        "USER" => config["User"] = rest.into(),
        "STOPSIGNAL" => config["StopSignal"] = rest.into(),
        "HEALTHCHECK" => config["Healthcheck"] = healthcheck(rest)?,
        "ENV" => {
            for (key, value) in super::dockerfile::pairs(rest)? {
                let env = config["Env"].as_array_mut().map(std::mem::take).unwrap_or_default();
                let mut env: Vec<serde_json::Value> =
                    env.into_iter().filter(|e| e.as_str().and_then(|e| e.split_once('=')).is_none_or(|(k, _)| k != key)).collect();
                env.push(format!("{key}={value}").into());
                config["Env"] = env.into();
            }
        }
        "LABEL" => {
            for (key, value) in super::dockerfile::pairs(rest)? {
                config["Labels"][key] = value.into();
            }
        }
        "EXPOSE" => {
            for port in rest.split_whitespace() {
                let port = if port.contains('/') { port.to_string() } else { format!("{port}/tcp") };
                config["ExposedPorts"][port] = serde_json::json!({});
            }
        }
        "ONBUILD" => {
            check_trigger(rest)?;
            let mut triggers = config["OnBuild"].as_array_mut().map(std::mem::take).unwrap_or_default();
            triggers.push(rest.into());
            config["OnBuild"] = triggers.into();
        }
        "VOLUME" => {
            let paths = match serde_json::from_str::<Vec<String>>(rest) {
                Ok(paths) => paths,
                Err(_) => rest.split_whitespace().map(String::from).collect(),
            };
            for path in paths {
                config["Volumes"][path] = serde_json::json!({});
            }
        }
        other => {
            return Err(format!(
                "{other} cannot be applied (CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE, VOLUME, STOPSIGNAL, HEALTHCHECK, ONBUILD can)"
            ))
        }
    }
    Ok(())
}

/// An ONBUILD trigger's instruction is one a build can run after a FROM: not FROM itself, not
/// MAINTAINER, not another ONBUILD (docker's rules).
pub fn check_trigger(trigger: &str) -> Result<(), String> {
    let keyword = trigger.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
    match keyword.as_str() {
        "" => Err("ONBUILD needs an instruction".into()),
        "ONBUILD" => Err("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into()),
        "FROM" | "MAINTAINER" => Err(format!("{keyword} isn't allowed as an ONBUILD trigger")),
        _ => Ok(()),
    }
}

/// `[--interval=D] [--timeout=D] [--start-period=D] [--retries=N] CMD …`, or `NONE`: the
/// config's Healthcheck, its durations in nanoseconds as docker writes them.
fn healthcheck(text: &str) -> Result<serde_json::Value, String> {
    let mut check = serde_json::json!({});
    let mut rest = text.trim();
    while let Some(option) = rest.strip_prefix("--") {
        let (option, after) = option.split_once(char::is_whitespace).unwrap_or((option, ""));
        let (name, value) =
            option.split_once('=').ok_or_else(|| format!("--{option}: expected --NAME=VALUE"))?;
        let nanos = || crate::size::parse_duration(value).map(|d| d.as_nanos() as u64);
        match name {
            "interval" => check["Interval"] = nanos()?.into(),
            "timeout" => check["Timeout"] = nanos()?.into(),
            "start-period" => check["StartPeriod"] = nanos()?.into(),
            "start-interval" => check["StartInterval"] = nanos()?.into(),
            "retries" => {
                check["Retries"] =
                    value.parse::<u64>().map_err(|_| format!("--retries={value}: not a number"))?.into()
            }
            _ => return Err(format!("--{name}: not a HEALTHCHECK option")),
        }
        rest = after.trim_start();
    }
    let (kind, command) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    check["Test"] = match (kind.to_ascii_uppercase().as_str(), command.trim()) {
        ("NONE", "") => serde_json::json!(["NONE"]),
        ("CMD", command) if command.starts_with('[') => {
            std::iter::once("CMD".to_string()).chain(self::command(command)?).collect::<Vec<_>>().into()
        }
        ("CMD", command) if !command.is_empty() => serde_json::json!(["CMD-SHELL", command]),
        _ => return Err("expected [OPTIONS] CMD COMMAND, or NONE".into()),
    };
    Ok(check)
}

/// A command in either of a Dockerfile's forms: a JSON array, or a shell line.
fn command(text: &str) -> Result<Vec<String>, String> {
    if text.starts_with('[') {
        return serde_json::from_str(text).map_err(|e| format!("not a JSON array of strings: {e}"));
    }
    Ok(vec!["/bin/sh".into(), "-c".into(), text.into()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthchecks_read_as_dockerfiles_write_them() {
        let check = healthcheck("--interval=30s --timeout=3s --retries=4 CMD curl -f localhost").unwrap();
        assert_eq!(
            check,
            serde_json::json!({"Interval": 30_000_000_000u64, "Timeout": 3_000_000_000u64, "Retries": 4,
                "Test": ["CMD-SHELL", "curl -f localhost"]})
        );
        assert_eq!(
            healthcheck("CMD [\"/bin/check\", \"-q\"]").unwrap()["Test"],
            serde_json::json!(["CMD", "/bin/check", "-q"])
        );
        assert_eq!(healthcheck("NONE").unwrap()["Test"], serde_json::json!(["NONE"]));
        assert!(healthcheck("--every=3s CMD x").unwrap_err().contains("--every"));
        assert!(healthcheck("--interval=soon CMD x").is_err());
        assert!(healthcheck("curl localhost").is_err());
    }

    #[test]
    fn changes_set_the_config_as_a_dockerfile_would() {
        let mut config = serde_json::json!({});
        for change in [
            r#"CMD ["cat", "/etc/os-release"]"#,
            "ENTRYPOINT echo hi",
            r#"ENV A=1 B="two words""#,
            "ENV A 3",
            "WORKDIR /srv",
            "user nobody",
            "LABEL org.example=x",
            "EXPOSE 80 53/udp",
            r#"VOLUME ["/data"]"#,
            "ONBUILD RUN make",
            "onbuild COPY . /src",
        ] {
            apply_change(&mut config, change).unwrap();
        }
        assert_eq!(config["OnBuild"], serde_json::json!(["RUN make", "COPY . /src"]));
        for (trigger, why) in [
            ("ONBUILD ONBUILD RUN x", "chaining ONBUILD"),
            ("ONBUILD FROM debian", "FROM isn't allowed"),
            ("ONBUILD maintainer me", "MAINTAINER isn't allowed"),
        ] {
            let err = apply_change(&mut config, trigger).unwrap_err();
            assert!(err.contains(why), "{trigger}: {err}");
        }
        assert_eq!(config["OnBuild"].as_array().map(Vec::len), Some(2), "a refused trigger is not added");
        assert_eq!(config["Cmd"], serde_json::json!(["cat", "/etc/os-release"]));
        assert_eq!(config["Entrypoint"], serde_json::json!(["/bin/sh", "-c", "echo hi"]));
        assert_eq!(config["Env"], serde_json::json!(["B=two words", "A=3"]));
        assert_eq!((config["WorkingDir"].as_str(), config["User"].as_str()), (Some("/srv"), Some("nobody")));
        assert_eq!(config["Labels"]["org.example"], "x");
        assert!(config["ExposedPorts"]["80/tcp"].is_object() && config["ExposedPorts"]["53/udp"].is_object());
        assert!(config["Volumes"]["/data"].is_object());
        assert!(apply_change(&mut config, "RUN make").unwrap_err().contains("RUN cannot be applied"));
        assert!(apply_change(&mut config, "CMD").unwrap_err().contains("no argument"));
        assert!(apply_change(&mut config, "CMD [\"unclosed\"").unwrap_err().contains("JSON"));
    }
}
