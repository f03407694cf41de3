//! Line bytes into the frame decoder (in chunks whose size the first byte chooses), and every
//! frame that comes out into the request, response and error decoders. None of them may panic,
//! and the decoder must stay within its memory bound.
#![no_main]

use cloudkey_chip::frame::{Decoder, Event, BUFFER_CAPACITY};
use cloudkey_chip::wire::{decode_error, Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, line)) = data.split_first() else {
        return;
    };
    let mut decoder = Decoder::new();
    for piece in line.chunks(usize::from(chunk).max(1) * 64) {
        decoder.push(piece);
        assert!(decoder.pending() <= BUFFER_CAPACITY);
        while let Some(event) = decoder.next_event() {
            if let Event::Frame(f) = event {
                let _ = Request::decode(f.cmd, &f.payload);
                let _ = Response::decode(f.cmd, &f.payload);
                let _ = decode_error(f.status, &f.payload);
            }
        }
    }
});
