use anyhow::{bail, Context as _};
use skiff::store::StoreError;

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Do not contact the registry to check gzip layers for an eStargz footer.
    #[arg(long)]
    offline: bool,
    /// Images (or containers, as docker inspect takes them too) to describe.
    #[arg(required = true)]
    images: Vec<String>,
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
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
