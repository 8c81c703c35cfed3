//! Keeping key schedules out of swap: `mlock(2)` on the pages that hold
//! them, where the system allows it (`RLIMIT_MEMLOCK`, privileges).
//!
//! Pages are counted, so two secrets sharing a page keep it locked until
//! both are gone; a failure to lock is not an error (the secret still
//! zeroizes on drop), only reported by [`Locked::is_locked`].
#![allow(unsafe_code)] // mlock/munlock; each call has a SAFETY comment.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(p).ok().filter(|p| *p > 0).unwrap_or(4096)
    })
}

fn counts() -> &'static Mutex<HashMap<usize, usize>> {
    static COUNTS: OnceLock<Mutex<HashMap<usize, usize>>> = OnceLock::new();
    COUNTS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// A locked memory range; unlocked (page by page, as the last holder goes)
/// on drop. Holds addresses only, never the bytes.
#[derive(Debug)]
pub struct Locked {
    pages: Vec<usize>,
    locked: bool,
}

impl Locked {
    /// Locks the pages of `[addr, addr + len)`.
    #[must_use]
    pub fn new(addr: usize, len: usize) -> Self {
        if len == 0 {
            return Self {
                pages: Vec::new(),
                locked: false,
            };
        }
        let ps = page_size();
        let first = addr / ps * ps;
        let last = (addr + len - 1) / ps * ps;
        let pages: Vec<usize> = (first..=last).step_by(ps).collect();
        let mut c = counts()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut locked = true;
        for &p in &pages {
            let n = c.entry(p).or_insert(0);
            if *n == 0 {
                // SAFETY: `p` is the start of a page of this process's heap
                // that holds a live allocation of the caller; mlock only
                // changes its residency.
                locked &= unsafe { libc::mlock(p as *const libc::c_void, ps) } == 0;
            }
            *n += 1;
        }
        Self { pages, locked }
    }

    /// Whether every page was locked.
    #[must_use]
    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        let ps = page_size();
        let mut c = counts()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for &p in &self.pages {
            if let Some(n) = c.get_mut(&p) {
                *n -= 1;
                if *n == 0 {
                    c.remove(&p);
                    // SAFETY: as in `new`; munlock of a page we locked.
                    unsafe { libc::munlock(p as *const libc::c_void, ps) };
                }
            }
        }
    }
}
