use anyhow::Context as _;
use skiff::image::push;
use skiff::registry::UploadOptions;

use crate::context::Context;
use crate::progress::Bars;

#[derive(clap::Args)]
pub struct Args {
    /// Blobs larger than this many MiB are uploaded in chunks of this size.
    #[arg(long, default_value_t = 32)]
    chunk_size_mib: u64,
    /// The stored image to push.
    image: String,
    /// Where to push it; by default, the image's own name.
    destination: Option<String>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let record = store.find_image(&args.image)?;
    let dest = super::parse_reference(args.destination.as_deref().unwrap_or(&record.name))?;
    let client = ctx.client()?;
    let options = UploadOptions { chunk_size: args.chunk_size_mib.max(1) << 20 };
    let result = push(&client, &store, &record, &dest, options, &Bars::new())
        .with_context(|| format!("pushing {} to {dest}", record.name))?;
    println!(
        "Pushed {dest}: {} blobs uploaded, {} mounted, {} already there",
        result.uploaded, result.mounted, result.skipped
    );
    if let Some(d) = result.digest {
        println!("Digest: {d}");
    }
    Ok(())
}
