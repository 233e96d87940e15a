use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Images to remove, by name or digest prefix.
    #[arg(required = true)]
    images: Vec<String>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let mut names = Vec::new();
    for input in &args.images {
        names.push(store.find_image(input)?.name);
    }
    names.dedup();
    let deleted = store.remove_images(&names)?;
    for name in &names {
        println!("Untagged: {name}");
    }
    for digest in deleted {
        println!("Deleted: {digest}");
    }
    let containers = super::run::containers(ctx)?;
    skiff::container::remove_unused_unpacked(&store, &containers)?;
    Ok(())
}
