//! The process allocator: the system allocator, except that single allocations of
//! [`HUGE_BYTES`] or more are mapped with `MAP_NORESERVE`.
//!
//! Why: the Kafka request decoder (the `kafka-protocol` crate) reserves a `Vec` of the
//! element count a request claims before reading the elements. A 16-byte request that
//! claims 2^31 topics asks for hundreds of GB; the system allocator refuses, and Rust
//! aborts the process on a refused allocation. Mapped without reserving swap, such a
//! reservation is only address space: nothing is touched, the decoder then runs out of
//! bytes and fails with an error, and the mapping is returned. The broker never needs
//! a single gigabyte-sized allocation on purpose (frames are limited far below it).
//! Under `vm.overcommit_memory = 2` the kernel refuses these mappings too; the tuning
//! profiles keep the default heuristic mode.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are mapped with `MAP_NORESERVE`.
pub const HUGE_BYTES: usize = 1 << 30;
const PAGE: usize = 4096;

/// See the module documentation.
pub struct Allocator;

fn is_huge(layout: &Layout) -> bool {
    layout.size() >= HUGE_BYTES && layout.align() <= PAGE
}

// SAFETY: every block is either from `System` (small or over-aligned layouts) or from
// mmap (huge layouts, page-aligned, zero-filled), and is freed by the same path, chosen
// by the same test on its layout.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // SAFETY: an anonymous private mapping; no memory is aliased.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    layout.size(),
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                std::ptr::null_mut()
            } else {
                p.cast()
            }
        } else {
            // SAFETY: forwarded with the caller's layout.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // SAFETY: anonymous mappings are zero-filled.
            unsafe { self.alloc(layout) }
        } else {
            // SAFETY: forwarded with the caller's layout.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(&layout) {
            // SAFETY: `ptr` came from the mmap above with this size.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: `ptr` came from `System` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees a valid align and new size for the new layout.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_huge(&layout) && !is_huge(&new) {
            // SAFETY: both layouts are `System`'s.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: a fresh block of the new layout, the old contents copied, the old
        // block freed by its own path.
        unsafe {
            let p = self.alloc(new);
            if !p.is_null() {
                std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_reservation_that_is_never_used_does_not_fail() {
        let a = Allocator;
        // 256 GiB: far beyond this machine's memory.
        let layout = Layout::from_size_align(256 << 30, 8).unwrap();
        // SAFETY: allocated and freed with the same layout; one byte written in range.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            *p = 7;
            a.dealloc(p, layout);
        }
        let small = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: as above.
        unsafe {
            let p = a.alloc(small);
            assert!(!p.is_null());
            let p = a.realloc(p, small, 128);
            a.dealloc(p, Layout::from_size_align(128, 8).unwrap());
        }
    }
}
