//! Fuzzes the decoder of frames coming out of a sandbox: any bytes, split
//! anywhere, must decode, wait for more, or fail with a typed error — never
//! panic, never buffer a frame past the cap.
//!
//! Run: `cargo fuzz run frames` (from the repository root; cargo-fuzz needs
//! a nightly toolchain or `RUSTC_BOOTSTRAP=1`).
#![no_main]

use kiln_core::protocol::{FrameDecoder, RunnerMsg};
use libfuzzer_sys::fuzz_target;

const CAP: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses where the stream is cut, exercising partial reads.
    let Some((&cut, rest)) = data.split_first() else { return };
    let cut = (cut as usize).max(1);
    let mut decoder = FrameDecoder::new(CAP);
    for chunk in rest.chunks(cut) {
        if decoder.feed(chunk).is_err() {
            return;
        }
        loop {
            match decoder.next_msg::<RunnerMsg>() {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(decoder.buffered() <= CAP + 4);
    }
});
