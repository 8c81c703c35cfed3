//! The process's allocator: mimalloc, and giving its free pages back.
//!
//! mimalloc instead of glibc's malloc: the server allocates many small,
//! short-lived buffers per request from two runtime threads and the audit
//! writer, where glibc's arenas cost a quarter of the CPU under load
//! (`docs/benchmarks.md`, section 2).
//!
//! Its v2 line, not v3 (the crate's default): after a burst of stalled
//! connections v3 kept the burst's pages resident one run in two, even
//! through a forced collection, where v2 came back within 5 % every time
//! (`docs/design.md`, section 5A).
//!
//! mimalloc keeps a heap per thread, and only the thread that owns a heap
//! gives its free pages back, when it allocates again or collects. A burst
//! of connections (thousands of stalled TLS handshakes) leaves pages on
//! the runtime workers' heaps, partly freed by the other worker, that
//! would stay resident while the server is quiet (`glibc`'s `malloc_trim`,
//! which `atrest-listen` calls, does not reach them). So every runtime
//! worker, as it goes idle ([`on_park`]), collects its heap fully once
//! after each burst's end that `atrest-listen` counts
//! ([`atrest_listen::bursts_ended`]), and otherwise lightly at most once a
//! second (what was freed after the full collection). Between those, a
//! park costs an atomic load and a clock read.

#![allow(unsafe_code)] // mi_collect; each block has a SAFETY comment.

use std::cell::Cell;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often an idle worker collects its heap lightly.
const LIGHT_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    /// The bursts ended when this thread last collected its heap fully.
    static FULL_AT: Cell<u64> = const { Cell::new(0) };
    /// When this thread last collected its heap.
    static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Called by each runtime worker just before it parks (see the module
/// doc).
pub fn on_park() {
    let ended = atrest_listen::bursts_ended();
    let full = FULL_AT.with(Cell::get) != ended;
    let now = Instant::now();
    let due = LAST
        .with(Cell::get)
        .is_none_or(|t| now.duration_since(t) >= LIGHT_EVERY);
    if !full && !due {
        return;
    }
    FULL_AT.with(|c| c.set(ended));
    LAST.with(|c| c.set(Some(now)));
    // SAFETY: mi_collect takes no pointer; it frees what the calling
    // thread's heap holds free (including blocks other threads freed into
    // it) and returns the emptied pages to the system.
    unsafe { libmimalloc_sys::mi_collect(full) };
}
