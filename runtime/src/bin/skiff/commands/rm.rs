//! `skiff rm`: removes containers (running ones only with `-f`, which kills them).

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Kill and remove running containers.
    #[arg(short, long)]
    force: bool,
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let mut images = Vec::new();
    let removed = super::run::for_each_container(ctx, &args.containers, "removing", |containers, state| {
        skiff::container::remove(containers, state, args.force)?;
        images.push(state.image.manifest);
        Ok(())
    });
    // An image whose last name `rmi -f` removed was kept for its containers: once the last
    // of them is gone, so is it.
    let store = ctx.store()?;
    let named = store.images()?;
    if images.iter().any(|m| !named.iter().any(|r| r.manifest == *m)) {
        let containers = super::run::containers(ctx)?;
        store.remove_images(&[], &super::run::images_in_use(&containers.list()?))?;
        skiff::container::remove_unused_unpacked(&store, &containers)?;
    }
    removed
}
