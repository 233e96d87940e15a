//! Progress bars for layer transfers (indicatif), drawn only on a terminal.

use std::collections::HashMap;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use skiff::image::Progress;
use skiff::Digest;

pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
}

impl Bars {
    pub fn new() -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        Bars { multi, bars: Mutex::default() }
    }
}

impl Progress for Bars {
    fn start(&self, digest: &Digest, size: u64) {
        let bar = self.multi.add(ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(digest.hex()[..12].to_string());
        self.bars.lock().unwrap().insert(*digest, bar);
    }

    fn advance(&self, digest: &Digest, bytes: u64) {
        if let Some(bar) = self.bars.lock().unwrap().get(digest) {
            bar.inc(bytes);
        }
    }

    fn finish(&self, digest: &Digest) {
        if let Some(bar) = self.bars.lock().unwrap().remove(digest) {
            bar.finish();
        }
    }
}
