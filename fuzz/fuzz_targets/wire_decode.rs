//! Payloads straight into the request, response and error decoders (first byte: the command
//! code or status), skipping the CRCs that shield them in `chip_frame`. Whatever decodes must
//! re-encode to the same bytes.
#![no_main]

use cloudkey_chip::wire::{decode_error, Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&code, payload)) = data.split_first() else {
        return;
    };
    if let Ok(req) = Request::decode(code, payload) {
        assert_eq!(req.encode(), payload);
    }
    if let Ok(resp) = Response::decode(code, payload) {
        assert_eq!(resp.encode(), payload);
    }
    let _ = decode_error(code, payload);
});
