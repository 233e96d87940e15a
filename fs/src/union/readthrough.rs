//! Reading whole files through when the registry is far. Without a profile, each read that
//! misses waits a round trip; a process faulting in the pages of a mapped binary here and
//! there misses one chunk at a time, one after another. Near a registry a round trip costs
//! less than the bytes around a miss would, so only what is read is fetched. Far from one
//! (the shortest wait a layer has seen for an answer is `FAR` or more), the first read of a
//! file of several chunks also queues the whole file, fetched in the background in large
//! requests, yielding to reads a process waits for: the file then costs about one round trip
//! instead of one per miss, for the bytes of it never read.
//!
//! A mount whose profile is prefetched does without: the profile names what the workload
//! reads, and the paced prefetch keeps the link busy with it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::view::{LayerView, PrefetchChunk};
use crate::index::NodeId;
use crate::lazy::Ticket;

/// The shortest answer wait from which a registry counts as far: beyond a LAN or a data
/// centre, where a round trip costs more than fetching a few chunks would.
pub const FAR: Duration = Duration::from_millis(5);
/// Files of more compressed bytes are not read through: their bytes never read would cost
/// more than the round trips saved.
pub const MAX_FILE: u64 = 32 << 20;
/// Files read through at the same time.
const STREAMS: usize = 4;

/// Which files of a mount are read through, and the threads that fetch them.
#[derive(Default)]
pub(super) struct ReadThrough {
    off: AtomicBool,
    /// Each file is queued once: (layer, node).
    pub(super) queued: Mutex<HashSet<(usize, NodeId)>>,
    /// Started with the first file queued; the threads end when it drops, with the union.
    queue: OnceLock<Sender<(usize, NodeId)>>,
}

impl ReadThrough {
    /// No file is read through from now on (a profile is being prefetched).
    pub(super) fn turn_off(&self) {
        self.off.store(true, Ordering::SeqCst);
    }

    /// Lower file `node` of `layers[layer]` was read: queues it to be read through if the
    /// registry is far, the file has several chunks and is not too large, and it was not
    /// queued before. Returns whether it was queued now.
    pub(super) fn after_read(&self, layers: &[Arc<dyn LayerView>], layer: usize, node: NodeId) -> bool {
        if self.off.load(Ordering::SeqCst) || !wanted(&*layers[layer], node) {
            return false;
        }
        if !self.queued.lock().unwrap().insert((layer, node)) {
            return false;
        }
        let queue = self.queue.get_or_init(|| start(layers));
        tracing::debug!(
            path = layers[layer].index().path_of(node),
            "reading a file through: the registry is far"
        );
        queue.send((layer, node)).is_ok()
    }
}

/// Whether file `node` of `layer` is worth reading through.
fn wanted(layer: &dyn LayerView, node: NodeId) -> bool {
    let far = layer.delay().is_some_and(|d| d >= FAR);
    let chunks = layer.index().file_chunks(node);
    far && chunks.len() > 1 && chunks.iter().map(|c| c.compressed_len).sum::<u64>() <= MAX_FILE
}

/// Starts the threads that read queued files through.
fn start(layers: &[Arc<dyn LayerView>]) -> Sender<(usize, NodeId)> {
    let (send, receive) = channel();
    let receive = Arc::new(Mutex::new(receive));
    for _ in 0..STREAMS {
        let (layers, receive) = (layers.to_vec(), receive.clone());
        let spawned = std::thread::Builder::new().name("skiff-readthrough".into()).spawn(move || {
            read_through(&layers, &receive);
        });
        if let Err(e) = spawned {
            // The reads themselves still fetch what they need.
            tracing::warn!(error = %e, "starting a thread to read files through");
        }
    }
    send
}

/// Reads queued files through until the queue closes. A failure is the layer's to log; the
/// reads of the file fetch what they need.
fn read_through(layers: &[Arc<dyn LayerView>], queue: &Mutex<Receiver<(usize, NodeId)>>) {
    loop {
        let next = queue.lock().unwrap().recv();
        let Ok((layer, node)) = next else { return };
        let chunks: Vec<PrefetchChunk> =
            layers[layer].index().file_chunks(node).iter().map(|c| (node, *c)).collect();
        let _ = layers[layer].prefetch(&chunks, &Ticket::unpaced());
    }
}
