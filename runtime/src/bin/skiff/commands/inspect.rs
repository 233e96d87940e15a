use anyhow::Context as _;

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Do not contact the registry to check gzip layers for an eStargz footer.
    #[arg(long)]
    offline: bool,
    /// Images to describe.
    #[arg(required = true)]
    images: Vec<String>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let client = if args.offline { None } else { Some(ctx.client()?) };
    let mut out = Vec::new();
    for input in &args.images {
        let record = store.find_image(input)?;
        let details = skiff::image::inspect(&store, &record, client.as_ref())
            .with_context(|| format!("inspecting {}", record.name))?;
        out.push(details);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
