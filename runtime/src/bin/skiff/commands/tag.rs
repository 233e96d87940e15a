use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// The stored image.
    source: String,
    /// The new name.
    target: String,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let record = store.find_image(&args.source)?;
    let target = super::parse_reference(&args.target)?;
    store.tag_image(&record, &target)?;
    Ok(())
}
