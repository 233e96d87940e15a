use anyhow::Context as _;
use skiff::image::{pull, PullOptions};
use skiff::manifest::Platform;

use crate::context::Context;
use crate::progress::Bars;

#[derive(clap::Args)]
pub struct Args {
    /// Download every layer now, instead of lazily when the container reads it.
    #[arg(long)]
    full: bool,
    /// Platform to pull from a multi-platform image (os/arch[/variant]).
    #[arg(long)]
    platform: Option<Platform>,
    /// Print only the image digest.
    #[arg(short, long)]
    quiet: bool,
    /// The image, for example `busybox` or `127.0.0.1:5000/app:v1`.
    image: String,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let reference = super::parse_reference(&args.image)?;
    let store = ctx.store()?;
    let client = ctx.client()?;
    let platform = args.platform.unwrap_or_else(Platform::host);
    let options = PullOptions { platform, full: args.full, tocs_ahead: false };
    let result = pull(&client, &store, &reference, &options, &Bars::new())
        .with_context(|| format!("pulling {reference}"))?;
    if args.quiet {
        println!("{}", result.record.digest);
    } else {
        println!("Digest: {}", result.record.digest);
        if args.full {
            println!("Downloaded {} layers, {} bytes", result.layers_fetched, result.bytes_fetched);
        }
        println!("{}", result.record.name);
    }
    Ok(())
}
