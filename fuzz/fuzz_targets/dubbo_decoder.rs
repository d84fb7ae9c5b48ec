//! Fuzzes the Dubbo frame decoder and the hessian2 readers over arbitrary
//! bytes, as the runtime applies them to what a hostile peer sends: frames
//! fed in two pieces, then every body read as a request and as a response.
//!
//! cargo +nightly fuzz run dubbo_decoder
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use weft_dubbo::frame::Decoder;
use weft_dubbo::hessian;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    // First byte: where the stream is split and how large a body may be.
    let cut = data[0] as usize % data.len();
    let stream = &data[1..];
    let decoder = Decoder::new(64 + 64 * (data[0] as usize));
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in [&stream[..cut.min(stream.len())], &stream[cut.min(stream.len())..]] {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    for f in &frames {
        assert_eq!(f.to_bytes().len(), 16 + f.body.len());
        let _ = f.heartbeat_response();
        if let Ok(r) = hessian::read_request(&f.body) {
            assert!(r.arguments.end <= f.body.len());
            assert!(r.attachments.range.end <= f.body.len());
            let _ = (r.interface(), r.group(), r.version(), r.timeout());
        }
        let _ = hessian::read_response(&f.body);
    }
    // The hessian readers on the raw bytes too (no framing in the way).
    if let Ok(r) = hessian::read_request(stream) {
        assert!(r.attachments.range.end <= stream.len());
    }
    let _ = hessian::read_response(stream);
    if let Ok(n) = hessian::value_len(stream) {
        assert!(n >= 1 && n <= stream.len());
    }
});
