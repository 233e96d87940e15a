use anyhow::{bail, Context as _};
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
    Container(Box<skiff::container::State>),
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
                out.push(Described::Container(Box::new(state)));
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
