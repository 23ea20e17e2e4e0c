//! A counting global allocator, to check that a path allocates nothing per
//! message (issue 8's rule for the fast paths of FRAG, NAK, CAUSAL, TOTAL).
//!
//! Install it in a test or bench binary and read this thread's count around
//! the code under test:
//!
//! ```ignore
//! use strata_stack::harness::alloc::{thread_allocations, CountingAllocator};
//!
//! #[global_allocator]
//! static ALLOCATOR: CountingAllocator = CountingAllocator;
//!
//! let before = thread_allocations();
//! // ... the code under test, on this thread ...
//! let made = thread_allocations() - before;
//! ```
//!
//! Counts are per thread, so tests running in parallel do not see each
//! other's. Reallocations count as allocations; frees do not.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting each thread's allocations.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    /// Whether to print a backtrace of each allocation ([`trace_allocations`]).
    static TRACE: Cell<bool> = const { Cell::new(false) };
    /// Set while a backtrace is captured: its own allocations are not the
    /// code's, and are neither counted nor traced.
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    // `try_with`: a thread's allocations after its locals are gone go uncounted.
    if IN_TRACE.try_with(Cell::get).unwrap_or(true) {
        return;
    }
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    if TRACE.try_with(Cell::get).unwrap_or(false) {
        IN_TRACE.with(|t| t.set(true));
        eprintln!("allocation:\n{}", std::backtrace::Backtrace::force_capture());
        IN_TRACE.with(|t| t.set(false));
    }
}

// SAFETY: forwards every call to the system allocator unchanged; the
// bookkeeping uses const thread-locals without destructors, which allocate
// nothing.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's guarantees are the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations this thread made so far (with [`CountingAllocator`]
/// installed; always 0 without it).
pub fn thread_allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// While on, every allocation this thread makes prints a backtrace on
/// stderr: to find where an unexpected allocation comes from.
pub fn trace_allocations(on: bool) {
    TRACE.with(|t| t.set(on));
}
