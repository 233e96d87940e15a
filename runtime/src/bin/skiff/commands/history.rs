//! `skiff history`: how an image was built, newest step first, as docker history shows it:
//! each step of its config's history, with the layer it made.

use anyhow::Context as _;
use skiff::image::StoredImage;

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Show each step's command whole (else cut at 45 characters).
    #[arg(long)]
    no_trunc: bool,
    image: String,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let record = store.find_image(&args.image)?;
    let image = StoredImage::load(&store, &record).with_context(|| format!("loading {}", record.name))?;
    let config = image.config()?;
    let layers = &image.manifest.layers;
    let steps = config.history().clone().unwrap_or_default();
    // Each step that is not an empty layer made the next layer, in order. Layers older than
    // the history that was kept (some builders leave it out) get a line of their own.
    let made = steps.iter().filter(|s| !s.empty_layer().unwrap_or(false)).count();
    let unrecorded = layers.len().saturating_sub(made);
    let mut rows: Vec<[String; 4]> = layers[..unrecorded]
        .iter()
        .map(|l| ["N/A".into(), String::new(), super::images::human_size(l.size), String::new()])
        .collect();
    let mut layer = layers[unrecorded..].iter();
    for step in &steps {
        let size = match step.empty_layer().unwrap_or(false) {
            true => 0,
            false => layer.next().map_or(0, |l| l.size),
        };
        let created_by = step.created_by().clone().unwrap_or_default();
        let created_by = match args.no_trunc || created_by.chars().count() <= 45 {
            true => created_by,
            false => created_by.chars().take(44).collect::<String>() + "…",
        };
        rows.push([
            super::images::ago(step.created().as_deref()),
            created_by,
            super::images::human_size(size),
            step.comment().clone().unwrap_or_default(),
        ]);
    }
    let id = |newest: bool| match newest {
        true => record.digest.to_string()["sha256:".len()..][..12].to_string(),
        false => "<missing>".to_string(),
    };
    let mut table = vec![["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"].map(String::from)];
    for (i, [created, by, size, comment]) in rows.into_iter().rev().enumerate() {
        table.push([id(i == 0), created, by, size, comment]);
    }
    super::print_table(&table);
    Ok(())
}
