//! `libkiln_zygote.so`: loaded once by the zygote template (Python, through
//! ctypes) after it has imported and warmed the libraries. Its one real
//! entry point runs the fork loop of [`kiln_native::zygote::serve`]; in each
//! forked sandbox it returns 0, after the containment steps, so the only
//! code between the fork and the sandbox being sealed is Rust.
// No unsafe blocks: the only `unsafe_code` lint here is `#[no_mangle]`,
// on the exported C symbols (all named kiln_zygote_*), and the free of an
// arena, whose contract pymalloc keeps.
#![deny(unsafe_code)]

use std::ffi::{c_char, c_void};
use std::os::raw::c_int;

/// Serves fork requests on `ctrl`. Returns 0 in a sealed sandbox child and
/// 1 in the template when it should exit. Never unwinds into Python.
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn kiln_zygote_serve(ctrl: c_int) -> c_int {
    std::panic::catch_unwind(|| kiln_native::zygote::serve::serve(ctrl)).unwrap_or(2)
}

/// In a sandbox child: the runner's environment as a JSON list of
/// `[name, value]` pairs (NUL-terminated, owned by the library).
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn kiln_zygote_child_env() -> *const c_char {
    json_list(&kiln_native::zygote::serve::CHILD_ENV)
}

/// In a sandbox child: when each containment step ended, as a JSON list of
/// `[step, CLOCK_MONOTONIC ns]` (NUL-terminated, owned by the library).
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn kiln_zygote_child_steps() -> *const c_char {
    json_list(&kiln_native::zygote::serve::CHILD_STEPS)
}

/// The JSON list a forked child was given, or `[]` outside one.
fn json_list(cell: &std::sync::OnceLock<std::ffi::CString>) -> *const c_char {
    cell.get().map_or(c"[]".as_ptr(), |s| s.as_ptr())
}

/// Reserves the region pymalloc's arenas are carved from (see
/// [`kiln_native::zygote::arena`]); called before the template imports
/// anything. 0 on success, -1 when the region could not be reserved (the
/// allocator then hands out plain `mmap`s).
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn kiln_zygote_arena_reserve(bytes: usize) -> c_int {
    match kiln_native::zygote::arena::reserve(bytes) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

/// `PyObjectArenaAllocator.alloc`: an arena of `size` bytes, or null.
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn kiln_zygote_arena_alloc(_ctx: *mut c_void, size: usize) -> *mut c_void {
    kiln_native::zygote::arena::alloc(size)
}

/// `PyObjectArenaAllocator.free`: unmaps an arena `kiln_zygote_arena_alloc`
/// returned.
///
/// # Safety
/// `ptr` and `size` are one arena `kiln_zygote_arena_alloc` returned, no
/// longer used: pymalloc frees each arena once, with the size it asked for,
/// after its last object is gone.
#[allow(unsafe_code)]
#[no_mangle]
pub unsafe extern "C" fn kiln_zygote_arena_free(_ctx: *mut c_void, ptr: *mut c_void, size: usize) {
    // SAFETY: the caller's contract, passed on.
    unsafe { kiln_native::zygote::arena::free(ptr, size) }
}
