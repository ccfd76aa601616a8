//! Where the template's Python objects live: pymalloc's arenas, carved one
//! after another out of one 2 MiB-aligned region instead of each from its
//! own `mmap`.
//!
//! Why: a fork copies one page-table entry for every 4 KiB page of the
//! template's private memory that is present, and the sandbox, when it
//! ends, unmaps each again; a 2 MiB huge page costs one entry instead of
//! 512. The warmed template's ~55 MiB of objects sit in 1 MiB arenas that
//! `mmap` scatters between the libraries' mappings, so almost none of them
//! can become huge pages. Side by side in one region, every whole 2 MiB of
//! them can: the fork loop then collapses them
//! ([`super::serve`], `MADV_COLLAPSE`) with the rest of the template's
//! memory. Measured on the development machine (fork + `_exit` + wait of
//! the warmed interpreter, 300 times): 4.4 ms of CPU each with the arenas
//! scattered, 2.1 ms with them here.
//!
//! Python installs the allocator (`PyObject_SetArenaAllocator`) before it
//! imports anything. It is a bump allocator that falls back to plain `mmap`
//! when the region is used up (or was never reserved); every free is a
//! `munmap`, as with Python's own arena allocator, so nothing a sandbox
//! frees is kept or handed out again. When the fork loop starts, the
//! untouched tail of the region is given back ([`trim`]); the template
//! runs no Python after that, and a sandbox's new arenas come from `mmap`.
//! Nothing here is shared between processes: the region is private
//! anonymous memory like the arenas it replaces.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A transparent huge page on x86-64 and arm64 (4 KiB base pages).
pub const HUGE_PAGE: usize = 2 << 20;

/// The next free byte of the region, and its end (both 0: no region).
static NEXT: AtomicUsize = AtomicUsize::new(0);
static END: AtomicUsize = AtomicUsize::new(0);
/// Where the region begins, for what [`trim`] reports.
static START: AtomicUsize = AtomicUsize::new(0);

/// Reserves `bytes` (rounded up to whole huge pages) of address space,
/// aligned to a huge page, for the arenas. No memory is committed:
/// `MAP_NORESERVE`, and a page is only ever charged when an arena in it is
/// written. Fails when a region is already reserved.
pub fn reserve(bytes: usize) -> io::Result<()> {
    if END.load(Ordering::Acquire) != 0 {
        return Err(io::Error::other("the arena region is already reserved"));
    }
    let len = bytes
        .checked_next_multiple_of(HUGE_PAGE)
        .filter(|&l| l > 0)
        .ok_or_else(|| io::Error::other("arena region size out of range"))?;
    let padded = len + HUGE_PAGE;
    // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            padded,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let raw = raw as usize;
    let start = raw.next_multiple_of(HUGE_PAGE);
    // Give back the unaligned head and the tail beyond `len`.
    // SAFETY: both ranges lie inside the mapping just made, which nothing uses yet.
    unsafe {
        if start > raw {
            libc::munmap(raw as *mut libc::c_void, start - raw);
        }
        libc::munmap(
            (start + len) as *mut libc::c_void,
            raw + padded - (start + len),
        );
    }
    START.store(start, Ordering::Release);
    NEXT.store(start, Ordering::Release);
    END.store(start + len, Ordering::Release);
    Ok(())
}

/// An arena of `size` bytes: the next piece of the region, or, when the
/// region cannot hold it, a fresh `mmap`. Null when memory is exhausted.
pub fn alloc(size: usize) -> *mut libc::c_void {
    if size == 0 {
        return std::ptr::null_mut();
    }
    let mut next = NEXT.load(Ordering::Acquire);
    loop {
        let end = END.load(Ordering::Acquire);
        let Some(after) = next.checked_add(size).filter(|&a| next != 0 && a <= end) else {
            break;
        };
        match NEXT.compare_exchange_weak(next, after, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return next as *mut libc::c_void,
            Err(now) => next = now,
        }
    }
    // SAFETY: a fresh private anonymous mapping, returned to its one owner.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p
    }
}

/// Frees an arena [`alloc`] returned: its pages go back to the kernel,
/// wherever it came from (a hole in the region is never reused).
///
/// # Safety
/// `ptr` and `size` are exactly what one earlier [`alloc`] call returned
/// and was given, and nothing uses the arena any more.
pub unsafe fn free(ptr: *mut libc::c_void, size: usize) {
    if !ptr.is_null() && size > 0 {
        // SAFETY: the caller's contract: an arena of this size, now unused.
        unsafe { libc::munmap(ptr, size) };
    }
}

/// Gives back the region's untouched tail (from the first huge page no
/// arena reached), so the template keeps only what its arenas use; later
/// arenas come from `mmap`. Returns the bytes of arenas the region holds.
pub fn trim() -> usize {
    let start = START.load(Ordering::Acquire);
    let end = END.load(Ordering::Acquire);
    if end == 0 {
        return 0;
    }
    // Close the region to further arenas first, then unmap what no arena reached.
    let next = NEXT.swap(end, Ordering::AcqRel);
    let cut = next.next_multiple_of(HUGE_PAGE);
    if cut < end {
        // SAFETY: no arena was handed out at or beyond `next`, and none will be.
        unsafe { libc::munmap(cut as *mut libc::c_void, end - cut) };
    }
    END.store(cut, Ordering::Release);
    NEXT.store(cut, Ordering::Release);
    next - start
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, since the region is one per process.
    #[test]
    fn arenas_come_from_one_aligned_region_until_it_is_full() {
        const MIB: usize = 1 << 20;
        // Before a region: plain mmap.
        let before = alloc(MIB);
        assert!(!before.is_null());
        reserve(5 * MIB).unwrap();
        assert!(reserve(MIB).is_err(), "a second region");
        let start = START.load(Ordering::Acquire);
        assert_eq!(start % HUGE_PAGE, 0);
        assert_eq!(END.load(Ordering::Acquire) - start, 3 * HUGE_PAGE);
        let a = alloc(MIB) as usize;
        let b = alloc(MIB) as usize;
        let c = alloc(MIB) as usize;
        assert_eq!((a, b, c), (start, start + MIB, start + 2 * MIB));
        // Writable, and each its own memory.
        // SAFETY: three fresh 1 MiB arenas.
        unsafe {
            std::ptr::write_bytes(a as *mut u8, 1, MIB);
            std::ptr::write_bytes(c as *mut u8, 3, MIB);
            assert_eq!(*(a as *const u8).add(MIB - 1), 1);
            assert_eq!(*(b as *const u8), 0);
        }
        // Freed memory goes back to the kernel and is not handed out again.
        // SAFETY: b is an unused arena of 1 MiB.
        unsafe { free(b as *mut libc::c_void, MIB) };
        assert!(!mapped(b), "a freed arena is unmapped");
        let d = alloc(MIB) as usize;
        assert_eq!(d, start + 3 * MIB, "the region's next piece, not b's hole");
        // Trimming gives back the huge pages no arena reached; then mmap.
        let tail = start + 2 * HUGE_PAGE;
        assert!(mapped(tail));
        assert_eq!(trim(), 4 * MIB);
        assert!(!mapped(tail), "the untouched tail is given back");
        assert!(mapped(d));
        assert_eq!(END.load(Ordering::Acquire), tail);
        let e = alloc(MIB) as usize;
        assert!(e != 0 && !(start..tail).contains(&e));
        // SAFETY: arenas of 1 MiB, no longer used.
        unsafe {
            for p in [before as usize, a, c, d, e] {
                free(p as *mut libc::c_void, MIB);
            }
        }
        assert!(alloc(0).is_null());
    }

    /// Whether the page at `addr` is mapped (msync fails with ENOMEM otherwise).
    fn mapped(addr: usize) -> bool {
        // SAFETY: msync only inspects the range; MS_ASYNC writes nothing back.
        unsafe { libc::msync(addr as *mut libc::c_void, 4096, libc::MS_ASYNC) == 0 }
    }
}
