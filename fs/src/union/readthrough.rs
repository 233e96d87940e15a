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
//! The dynamic loader adds a round trip of its own per library: it opens them one after
//! another, reading each one's headers before the next. So when a file read from its start
//! is an ELF file, the libraries it needs are found (see `elf`: its `DT_NEEDED`, searched
//! for as the loader does) and queued as well, before the loader asks; theirs in turn once
//! their headers are in. The first chunk of each queued file goes before the rest of
//! every file's, so the headers of all come first.
//!
//! A mount whose profile is prefetched does without: the profile names what the workload
//! reads, and the paced prefetch keeps the link busy with it.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use super::elf;
use super::resolve::Lowers;
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
    /// Started with the first file queued; the threads end when it closes, with the union.
    work: OnceLock<Arc<Work>>,
}

/// What the reading threads share with the union.
struct Work {
    layers: Vec<Arc<dyn LayerView>>,
    /// Files queued to be read through, each once: (layer, node).
    queued: Mutex<HashSet<(usize, NodeId)>>,
    /// ELF files whose libraries were looked for, each once.
    scanned: Mutex<HashSet<(usize, NodeId)>>,
    jobs: Mutex<Jobs>,
    ready: Condvar,
}

#[derive(Default)]
struct Jobs {
    /// ELF files whose libraries are to be looked for: (layer, node).
    needs: VecDeque<(usize, NodeId)>,
    /// Requests of files read through (layer, chunks): the first chunk of each file ...
    first: VecDeque<Request>,
    /// ... before the rest of any.
    rest: VecDeque<Request>,
    closed: bool,
}

/// One request of a file read through: its layer and chunks.
type Request = (usize, Vec<PrefetchChunk>);

enum Job {
    Fetch(Request),
    Needs((usize, NodeId)),
}

/// What a reading thread does.
#[derive(Clone, Copy)]
enum Role {
    /// Fetches queued requests.
    Fetch,
    /// Looks for the libraries of ELF files. Its reads wait for the chunks of a file the
    /// dynamic loader reads first (headers, dynamic section, strings), so these threads
    /// fetch those of several libraries side by side, apart from the bulk.
    Needs,
}

/// Threads looking for libraries.
const LOOKERS: usize = 4;

impl ReadThrough {
    /// No file is read through from now on (a profile is being prefetched).
    pub(super) fn turn_off(&self) {
        self.off.store(true, Ordering::SeqCst);
    }

    /// Lower file `node` of `layers[layer]` was read at `offset`, `data` the bytes read: if
    /// the registry is far, queues the file to be read through (once, when it has several
    /// chunks and is not too large), and if the read began an ELF file, the libraries it
    /// needs.
    pub(super) fn after_read(
        &self,
        layers: &[Arc<dyn LayerView>],
        layer: usize,
        node: NodeId,
        offset: u64,
        data: &[u8],
    ) {
        if self.off.load(Ordering::SeqCst) {
            return;
        }
        match layers[layer].delay() {
            None => return,
            Some(delay) if delay < FAR => {
                // The layers of a mount come from one registry.
                self.turn_off();
                return;
            }
            Some(_) => {}
        }
        let elf = offset == 0 && data.starts_with(elf::MAGIC);
        let whole = worth_it(layers[layer].index().file_chunks(node));
        if whole || elf {
            self.work.get_or_init(|| start(layers)).queue(layer, node, whole, elf);
        }
    }

    /// The files queued to be read through (for tests).
    #[cfg(test)]
    pub(super) fn queued(&self) -> HashSet<(usize, NodeId)> {
        self.work.get().map(|w| w.queued.lock().unwrap().clone()).unwrap_or_default()
    }
}

impl Drop for ReadThrough {
    fn drop(&mut self) {
        if let Some(work) = self.work.get() {
            work.jobs.lock().unwrap().closed = true;
            work.ready.notify_all();
        }
    }
}

impl Work {
    /// Queues file `node` of `layers[layer]` to be read through if it is worth it (`whole`),
    /// and, if it may be an ELF file, its libraries to be looked for; each once.
    fn queue(&self, layer: usize, node: NodeId, whole: bool, elf: bool) {
        let index = self.layers[layer].index();
        let whole = whole && self.queued.lock().unwrap().insert((layer, node));
        let scan = elf && self.scanned.lock().unwrap().insert((layer, node));
        if !whole && !scan {
            return;
        }
        let mut jobs = self.jobs.lock().unwrap();
        if scan {
            jobs.needs.push_back((layer, node));
        }
        if whole {
            tracing::debug!(path = index.path_of(node), "reading a file through: the registry is far");
            // Its first chunk (a binary's headers) alone and first; the rest cut into the
            // requests the layer makes, fetched side by side: a large file then arrives in
            // about the time its bytes take, not a round trip per request after another.
            let mut chunks = index.file_chunks(node).iter().map(|c| (node, *c));
            jobs.first.extend(chunks.next().map(|head| (layer, vec![head])));
            let requests = self.layers[layer].prefetch_requests(chunks.collect());
            jobs.rest.extend(requests.into_iter().map(|r| (layer, r)));
        }
        drop(jobs);
        self.ready.notify_all();
    }

    /// Does the jobs of `role` until the union closes the queue. A failure is the layer's
    /// to log; the reads of the file fetch what they need.
    fn run(&self, role: Role) {
        while let Some(job) = self.next(role) {
            match job {
                Job::Fetch((layer, chunks)) => {
                    let _ = self.layers[layer].prefetch(&chunks, &Ticket::unpaced());
                }
                Job::Needs((layer, node)) => self.queue_needs(layer, node),
            }
        }
    }

    /// The next job of `role` (requests: first chunks first); `None` once closed.
    fn next(&self, role: Role) -> Option<Job> {
        let mut jobs = self.jobs.lock().unwrap();
        while !jobs.closed {
            let job = match role {
                Role::Fetch => jobs.first.pop_front().or_else(|| jobs.rest.pop_front()).map(Job::Fetch),
                Role::Needs => jobs.needs.pop_front().map(Job::Needs),
            };
            if job.is_some() {
                return job;
            }
            jobs = self.ready.wait(jobs).unwrap();
        }
        None
    }

    /// Looks for the libraries ELF file `node` of `layers[layer]` needs where the dynamic
    /// loader would, and queues those found.
    fn queue_needs(&self, layer: usize, node: NodeId) {
        let view = &self.layers[layer];
        let read_at = |at: u64, buf: &mut [u8]| -> io::Result<()> {
            let mut done = 0;
            while done < buf.len() {
                match view.read(node, at + done as u64, &mut buf[done..])? {
                    0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                    n => done += n,
                }
            }
            Ok(())
        };
        let Some(needs) = elf::needs(&read_at) else { return };
        let path = view.index().path_of(node);
        let origin = path.rsplit_once('/').map_or("", |(dir, _)| dir);
        let own = needs
            .search
            .iter()
            .map(|d| d.replace("${ORIGIN}", "$ORIGIN").replace("$ORIGIN", &format!("/{origin}")));
        let dirs: Vec<String> = own.chain(elf::system_dirs(needs.machine)).collect();
        let lowers = Lowers(&self.layers);
        for name in needs.libraries.iter().filter(|n| !n.contains('/')) {
            if let Some((l, n)) = dirs.iter().find_map(|dir| lowers.file(&format!("{dir}/{name}"))) {
                self.queue(l, n, worth_it(self.layers[l].index().file_chunks(n)), true);
            }
        }
    }
}

/// Whether a file of `chunks` is worth reading through, far from the registry.
fn worth_it(chunks: &[ChunkRef]) -> bool {
    chunks.len() > 1 && chunks.iter().map(|c| c.compressed_len).sum::<u64>() <= MAX_FILE
}

/// Starts the threads that read queued files through.
fn start(layers: &[Arc<dyn LayerView>]) -> Arc<Work> {
    let work = Arc::new(Work {
        layers: layers.to_vec(),
        queued: Mutex::default(),
        scanned: Mutex::default(),
        jobs: Mutex::default(),
        ready: Condvar::new(),
    });
    let roles = std::iter::repeat_n(Role::Fetch, STREAMS).chain(std::iter::repeat_n(Role::Needs, LOOKERS));
    for role in roles {
        let work = work.clone();
        let spawned = std::thread::Builder::new().name("skiff-readthrough".into()).spawn(move || {
            work.run(role);
        });
        if let Err(e) = spawned {
            // The reads themselves still fetch what they need.
            tracing::warn!(error = %e, "starting a thread to read files through");
        }
    }
    work
}
