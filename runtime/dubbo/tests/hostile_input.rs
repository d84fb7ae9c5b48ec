//! Hostile input for the frame decoder and the hessian2 reader: random
//! bytes, every truncation and single-byte corruption of real-shaped
//! bodies, deep nesting, long runs of class definitions, huge declared
//! lengths. Every case must end in `Ok` or an error — never a panic, a stack
//! overflow or an allocation sized by what the input declares (checked with
//! a per-thread counting allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;
use weft_dubbo::frame::{Decoder, Frame, FrameError, Header, Status};
use weft_dubbo::hessian::{self, ErrorKind, RequestSpec, Writer};

// === a per-thread peak-allocation counter ===

struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let _ = LIVE.try_with(|l| {
                let now = l.get() + layout.size();
                l.set(now);
                let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
            });
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) };
        let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(layout.size())));
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes allocated at the peak of `f` beyond what was live before it.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get) - base)
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Runs every reader over `bytes`; any result is fine, a panic is not.
fn read_everything(bytes: &[u8]) {
    let _ = hessian::read_request(bytes);
    let _ = hessian::read_response(bytes);
    let _ = hessian::read_string(bytes);
    let _ = hessian::value_len(bytes);
    let _ = Decoder::new(1 << 16).decode_all(bytes);
}

/// A request body with nested values of most kinds, like the Java
/// consumer's `describe` call.
fn rich_request() -> Vec<u8> {
    let mut args = Writer::new();
    // An object of a class with three fields, one of which nests another.
    args.raw(&[b'C', 0x07])
        .raw(b"a.Thing")
        .int(3)
        .string("name")
        .string("data")
        .string("child");
    args.raw(&[0x60])
        .string("outer é😀")
        .binary(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17])
        .raw(&[0x60])
        .string("inner")
        .binary(&[])
        .null();
    args.list_begin(3).long(1).long(1 << 40).long(-5);
    args.map_begin()
        .string("k")
        .string("v")
        .string("n")
        .int(42)
        .string("d")
        .double(2.5)
        .end();
    hessian::encode_request(&RequestSpec {
        dubbo_version: "2.0.2",
        service_path: "dev.weft.test.Greeter",
        service_version: "0.0.0",
        method: "describe",
        parameter_types: "La/Thing;Ljava/util/List;Ljava/util/Map;",
        arguments: args.as_bytes(),
        attachments: &[
            ("path", "dev.weft.test.Greeter"),
            ("interface", "dev.weft.test.Greeter"),
            ("timeout", "3000"),
        ],
    })
    .to_vec()
}

#[test]
fn the_rich_request_reads() {
    let body = rich_request();
    let req = hessian::read_request(&body).unwrap();
    assert_eq!(req.argument_count, 3);
    assert_eq!(req.attachments.get_str("timeout"), Some("3000"));
    assert_eq!(req.attachments.range.end, body.len());
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..20_000 {
        let n = (rng.next() % 512) as usize;
        let mut b = rng.bytes(n);
        // Half the time, start like a request body so the reader gets past
        // the prefix.
        if i % 2 == 0 {
            let mut prefix = Vec::new();
            let mut w = Writer::new();
            w.string("2.0.2").string("a.B").string("").string("m");
            prefix.extend_from_slice(w.as_bytes());
            let descs = ["", "I", "Ljava/lang/Object;", "[I[J", "Ljava/lang/Object;I"];
            let mut w = Writer::new();
            w.string(descs[i % descs.len()]);
            prefix.extend_from_slice(w.as_bytes());
            prefix.append(&mut b);
            b = prefix;
        }
        read_everything(&b);
    }
}

#[test]
fn every_truncation_and_corruption_is_an_error_or_a_value() {
    let body = rich_request();
    for cut in 0..body.len() {
        let e = hessian::read_request(&body[..cut]);
        // The attachments may be cut off entirely (treated as absent) only
        // exactly after the arguments.
        if let Ok(r) = &e {
            assert_eq!(r.arguments.end, cut, "a truncated body read whole at {cut}");
        }
    }
    for at in 0..body.len() {
        for v in [0x00, 0x43, 0x4f, 0x51, 0x55, 0x56, 0x5a, 0x7f, 0xff] {
            let mut b = body.clone();
            b[at] = v;
            read_everything(&b);
        }
    }
    // Frames: every truncation of a frame stream is "need more", never an
    // error or a panic.
    let mut stream = BytesMut::new();
    Frame::request(1, 2, true, body.clone().into()).encode(&mut stream);
    Frame::heartbeat_request(2).encode(&mut stream);
    let d = Decoder::default();
    for cut in 0..stream.len() {
        let (frames, _) = d.decode_all(&stream[..cut]).unwrap();
        assert!(frames.len() <= 1);
    }
}

#[test]
fn deep_nesting_is_refused_without_exhausting_the_stack() {
    for open in [
        &[0x79u8][..],             // untyped list of one
        &[b'H', 0x91],             // untyped map: key 1, then a value that nests
        &[0x57],                   // variable untyped list
        &[b'X', 0x91],             // fixed untyped list of one
        &[0x71, 0x01, b't'],       // typed list of one
        &[b'M', 0x01, b't', 0x91], // typed map
    ] {
        let b: Vec<u8> = open
            .iter()
            .copied()
            .cycle()
            .take(open.len() * 200_000)
            .collect();
        let e = hessian::value_len(&b).unwrap_err();
        assert!(
            matches!(e.kind, ErrorKind::TooDeep { max: 128 }),
            "{open:02x?}: {e}"
        );
        let e = hessian::read_request(&[&rich_request()[..40], &b[..]].concat());
        assert!(e.is_err());
    }
    // Objects nested through a one-field class.
    let mut b = vec![b'C', 0x01, b'N', 0x91, 0x01, b'f'];
    b.extend(std::iter::repeat_n(0x60, 500_000));
    let e = hessian::value_len(&b).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::TooDeep { .. }), "{e}");
}

#[test]
fn long_runs_of_class_definitions_are_bounded() {
    // A million zero-field class definitions in a row: no recursion, and
    // the limit on definitions stops it.
    let one = [b'C', 0x01, b'c', 0x90];
    let b: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * 1_000_000)
        .collect();
    let (e, peak) = peak_of(|| hessian::value_len(&b).unwrap_err());
    assert!(
        matches!(e.kind, ErrorKind::TooManyClassDefs { max: 65_536 }),
        "{e}"
    );
    assert!(peak < 2 << 20, "peak allocation {peak} bytes");
    // Unknown class references.
    for b in [&[0x60u8][..], &[b'O', 0x95]] {
        let e = hessian::value_len(b).unwrap_err();
        assert!(matches!(e.kind, ErrorKind::UnknownClass { .. }), "{e}");
    }
}

#[test]
fn huge_declared_lengths_allocate_nothing_and_fail_fast() {
    let cases: Vec<Vec<u8>> = vec![
        // Fixed lists declaring 2^31-1 elements.
        [&[b'X', b'I', 0x7f, 0xff, 0xff, 0xff][..], &[0x90; 64]].concat(),
        [
            &[b'V', 0x01, b't', b'I', 0x7f, 0xff, 0xff, 0xff][..],
            &[0x90; 64],
        ]
        .concat(),
        // A 65535-unit string chunk with 3 bytes.
        vec![b'S', 0xff, 0xff, b'a', b'b', b'c'],
        vec![b'R', 0xff, 0xff, b'a'],
        // A 65535-byte binary chunk with 3 bytes.
        vec![b'B', 0xff, 0xff, 1, 2, 3],
        vec![b'A', 0xff, 0xff, 1, 2, 3],
        // A class with 2^30 fields.
        vec![b'C', 0x01, b'c', b'I', 0x40, 0, 0, 0, 0x01, b'f'],
        // Negative lengths.
        vec![b'X', 0x8f],
        vec![b'C', 0x01, b'c', 0x8f],
    ];
    for b in cases {
        let (r, peak) = peak_of(|| hessian::value_len(&b));
        let e = r.unwrap_err();
        assert!(
            matches!(
                e.kind,
                ErrorKind::Truncated
                    | ErrorKind::ImplausibleCount { .. }
                    | ErrorKind::Negative { .. }
            ),
            "{b:02x?}: {e}"
        );
        assert!(peak < 64 << 10, "{b:02x?}: peak allocation {peak} bytes");
        // Decoding them as strings allocates by what is there, not what is declared.
        let (_, peak) = peak_of(|| hessian::read_string(&b));
        assert!(peak < 64 << 10, "{b:02x?}: peak allocation {peak} bytes");
    }
    // A frame declaring 4 GiB: refused from its header, nothing reserved.
    let mut h = Header::parse(
        &Frame::heartbeat_request(1).to_bytes()[..16]
            .try_into()
            .unwrap(),
    )
    .unwrap();
    h.body_len = u32::MAX;
    let (r, peak) = peak_of(|| {
        let mut buf = BytesMut::from(&h.to_bytes()[..]);
        Decoder::default().decode(&mut buf)
    });
    assert!(matches!(r, Err(FrameError::BodyTooLarge { .. })));
    assert!(peak < 64 << 10, "peak allocation {peak} bytes");
}

#[test]
fn a_big_real_body_reads_in_bounded_memory() {
    // 1 MiB of arguments: the reader keeps ranges, not copies.
    let mut args = Writer::new();
    args.list_begin(1000);
    for i in 0..1000 {
        args.binary(&vec![i as u8; 1000]);
    }
    let body = hessian::encode_request(&RequestSpec {
        dubbo_version: "2.0.2",
        service_path: "a.B",
        service_version: "0.0.0",
        method: "m",
        parameter_types: "Ljava/util/List;",
        arguments: args.as_bytes(),
        attachments: &[("path", "a.B")],
    });
    let (req, peak) = peak_of(|| hessian::read_request(&body).unwrap());
    assert!(req.arguments.len() > 1_000_000);
    assert!(
        peak < 16 << 10,
        "peak allocation {peak} bytes for a 1 MiB body"
    );
}

#[test]
fn error_messages_name_what_was_wrong() {
    let d = Decoder::new(100);
    let e = d
        .decode(&mut BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "not a Dubbo frame: bad magic 0x4854 (expected 0xdabb)"
    );
    let mut big = Frame::response(7, 2, Status::OK, vec![0u8; 101].into())
        .to_bytes()
        .to_vec();
    big.truncate(16);
    let e = d.decode(&mut BytesMut::from(&big[..])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Dubbo frame (request id 7) declares a body of 101 bytes, over the limit of 100 bytes"
    );
    let mut w = Writer::new();
    w.string("2.0.2")
        .string("a.B")
        .string("")
        .string("m")
        .string("Lx;I");
    w.string("ok");
    let e = hessian::read_request(w.as_bytes()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "hessian2 argument 2 of 2: body ends inside a value at body offset {}",
            w.as_bytes().len()
        )
    );
    let e = hessian::read_request(&[0x05, b'2', b'.', b'0', b'.', 0xff]).unwrap_err();
    assert!(e.to_string().contains("dubbo version"), "{e}");
    let mut w = Writer::new();
    w.string("2.0.2")
        .string("a.B")
        .string("")
        .string("m")
        .string("Lx");
    let e = hessian::read_request(w.as_bytes()).unwrap_err();
    assert!(
        e.to_string().contains("parameter types of method 'm'"),
        "{e}"
    );
}
