use anyhow::bail;

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Images to remove, by name or digest prefix.
    #[arg(required = true)]
    images: Vec<String>,
    /// Remove the last name of an image a container uses too (the image stays, unnamed, for
    /// as long as a container uses it).
    #[arg(short, long)]
    force: bool,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let mut names = Vec::new();
    for input in &args.images {
        names.push(store.find_image(input)?.name);
    }
    names.dedup();
    let containers = super::run::containers(ctx)?;
    let users = containers.list()?;
    if !args.force {
        let images = store.images()?;
        for record in images.iter().filter(|r| names.contains(&r.name)) {
            // Another name keeps the image: this one alone may go.
            if images.iter().any(|r| r.manifest == record.manifest && !names.contains(&r.name)) {
                continue;
            }
            if let Some(user) = users.iter().find(|c| c.image.manifest == record.manifest) {
                bail!(
                    "unable to remove {}: container {} ({}) uses it (remove the container first, or the name alone with -f)",
                    record.name,
                    user.short_id(),
                    user.name
                );
            }
        }
    }
    let deleted = store.remove_images(&names, &super::run::images_in_use(&users))?;
    for name in &names {
        println!("Untagged: {name}");
    }
    for digest in deleted {
        println!("Deleted: {digest}");
    }
    skiff::container::remove_unused_unpacked(&store, &containers)?;
    Ok(())
}
