//! Reading whole files through when the registry is far. Without a profile, each read that
//! misses waits a round trip; a process faulting in the pages of a mapped binary here and
//! there misses one chunk at a time, one after another. Near a registry a round trip costs
//! less than the bytes around a miss would, so only what is read is fetched. Far from one
//! (the shortest wait a layer has seen for an answer is `FAR` or more), the first read of a
//! file of several chunks also queues the whole file, in the large requests the layer cuts it
//! into, fetched side by side in the background, yielding to reads a process waits for: the
//! file then costs about one round trip instead of one per miss, for the bytes of it never
//! read.
//!
//! A mount whose profile is prefetched does without: the profile names what the workload
//! reads, and the paced prefetch keeps the link busy with it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::view::{LayerView, PrefetchChunk};
use crate::index::{ChunkRef, NodeId};
use crate::lazy::Ticket;

/// The shortest answer wait from which a registry counts as far: beyond a LAN or a data
/// centre, where a round trip costs more than fetching a few chunks would.
pub const FAR: Duration = Duration::from_millis(5);
/// Files of more compressed bytes are not read through: their bytes never read would cost
/// more than the round trips saved.
pub const MAX_FILE: u64 = 32 << 20;
/// Requests of files read through on their way at the same time.
const STREAMS: usize = 4;

/// Which files of a mount are read through, and the threads that fetch them.
#[derive(Default)]
pub(super) struct ReadThrough {
    /// Set by a profile's prefetch, or once the registry is known to be near: a shortest wait
    /// only shrinks, so it stays near. Each read then costs one load.
    off: AtomicBool,
    /// Each file is queued once: (layer, node).
    pub(super) queued: Mutex<HashSet<(usize, NodeId)>>,
    /// The requests of queued files. Started with the first file queued; the threads end
    /// when it drops, with the union.
    queue: OnceLock<Sender<Request>>,
}

/// One request of a file read through: its layer and chunks.
type Request = (usize, Vec<PrefetchChunk>);

impl ReadThrough {
    /// No file is read through from now on (a profile is being prefetched).
    pub(super) fn turn_off(&self) {
        self.off.store(true, Ordering::SeqCst);
    }

    /// Lower file `node` of `layers[layer]` was read: queues it to be read through if the
    /// registry is far, the file has several chunks and is not too large, and it was not
    /// queued before. Returns whether it was queued now.
    pub(super) fn after_read(&self, layers: &[Arc<dyn LayerView>], layer: usize, node: NodeId) -> bool {
        if self.off.load(Ordering::SeqCst) {
            return false;
        }
        match layers[layer].delay() {
            None => return false,
            Some(delay) if delay < FAR => {
                // The layers of a mount come from one registry.
                self.turn_off();
                return false;
            }
            Some(_) if !worth_it(layers[layer].index().file_chunks(node)) => return false,
            Some(_) => {}
        }
        if !self.queued.lock().unwrap().insert((layer, node)) {
            return false;
        }
        let queue = self.queue.get_or_init(|| start(layers));
        tracing::debug!(
            path = layers[layer].index().path_of(node),
            "reading a file through: the registry is far"
        );
        // Cut into the requests the layer makes, fetched side by side: a large file then
        // arrives in about the time its bytes take, not a round trip per request after another.
        let chunks = layers[layer].index().file_chunks(node).iter().map(|c| (node, *c)).collect();
        layers[layer]
            .prefetch_requests(chunks)
            .into_iter()
            .all(|request| queue.send((layer, request)).is_ok())
    }
}

/// Whether a file of `chunks` is worth reading through, far from the registry.
fn worth_it(chunks: &[ChunkRef]) -> bool {
    chunks.len() > 1 && chunks.iter().map(|c| c.compressed_len).sum::<u64>() <= MAX_FILE
}

/// Starts the threads that read queued files through.
fn start(layers: &[Arc<dyn LayerView>]) -> Sender<Request> {
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

/// Fetches queued requests until the queue closes. A failure is the layer's to log; the
/// reads of the file fetch what they need.
fn read_through(layers: &[Arc<dyn LayerView>], queue: &Mutex<Receiver<Request>>) {
    loop {
        let next = queue.lock().unwrap().recv();
        let Ok((layer, chunks)) = next else { return };
        let _ = layers[layer].prefetch(&chunks, &Ticket::unpaced());
    }
}
