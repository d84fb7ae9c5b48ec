//! Two-process stress test of the ring and the wake-up rule: a child
//! process produces 300 000 variable-sized records carrying a sequence
//! number and a checksum through a small ring (it wraps thousands of
//! times); this process consumes, checks order and integrity, and sleeps on
//! the socket whenever the ring is empty. A lost wake-up shows up as a
//! sleep that ends by timeout while data was waiting, which is counted and
//! must be zero.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use weft_shm::control::send_wake;
use weft_shm::idle::{IdleConfig, Idler};
use weft_shm::layout::{Header, Layout, RingId};
use weft_shm::ring::PollError;
use weft_shm::segment::Segment;

const RECORDS: u64 = 300_000;
const RING: u64 = 64 * 1024;

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn record(seq: u64, out: &mut Vec<u8>) {
    // Sizes cycle through 0..=1500 bytes of body, so every alignment and
    // many wrap positions occur.
    let len = ((seq * 7919) % 1501) as usize;
    out.clear();
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend((0..len).map(|i| (seq as usize + i * 31) as u8));
    let sum = fnv(out);
    out.extend_from_slice(&sum.to_le_bytes());
}

/// The producer side, run in a child process.
#[test]
fn child_producer() {
    let Ok(dir) = std::env::var("WEFT_SHM_STRESS_DIR") else {
        return; // only runs as the child of two_process_stress
    };
    let dir = Path::new(&dir);
    let (seg, header) = Segment::open(&dir.join("weft-stress")).unwrap();
    let mut sock = UnixStream::connect(dir.join("stress.sock")).unwrap();
    let mut p = seg.producer(&header.layout, RingId::AppToRuntime);
    let mut buf = Vec::new();
    let mut wakes = 0u64;
    for seq in 0..RECORDS {
        record(seq, &mut buf);
        loop {
            if p.try_write(&[&buf]).unwrap() {
                break;
            }
            std::hint::spin_loop();
        }
        if p.consumer_needs_wakeup() {
            send_wake(&sock).unwrap();
            wakes += 1;
        }
    }
    sock.write_all(b"D").unwrap();
    println!("producer done, {wakes} wake-ups sent");
}

#[test]
fn two_process_stress() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(RING, RING).unwrap();
    let header = Header {
        runtime_pid: std::process::id(),
        app_pid: 0,
        session_id: 1,
        layout,
    };
    let seg = Segment::create(dir.path(), "weft-stress", &header).unwrap();
    let listener = UnixListener::bind(dir.path().join("stress.sock")).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_producer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WEFT_SHM_STRESS_DIR", dir.path())
        .spawn()
        .unwrap();
    let (mut sock, _) = listener.accept().unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut c = seg.consumer(&layout, RingId::AppToRuntime);
    // Spin briefly so that the consumer sleeps often and the wake-up path
    // is exercised thousands of times.
    let mut idler = Idler::new(IdleConfig {
        spin: Duration::from_micros(2),
        yield_for: Duration::ZERO,
    });
    let mut expect = 0u64;
    let mut sleeps = 0u64;
    let mut lost = 0u64;
    let mut expected_buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while expect < RECORDS {
        assert!(Instant::now() < deadline, "stalled at record {expect}");
        let n = c
            .poll(64, |payload| {
                record(expect, &mut expected_buf);
                if payload != expected_buf.as_slice() {
                    return Err(format!(
                        "record {expect} differs ({} bytes vs {})",
                        payload.len(),
                        expected_buf.len()
                    ));
                }
                let body = &payload[..payload.len() - 8];
                let sum = u64::from_le_bytes(payload[payload.len() - 8..].try_into().unwrap());
                if fnv(body) != sum {
                    return Err(format!("record {expect} checksum"));
                }
                expect += 1;
                Ok(())
            })
            .map_err(|e| match e {
                PollError::Ring(e) => e.to_string(),
                PollError::Handler(e) => e,
            })
            .unwrap();
        if n > 0 {
            idler.reset();
            continue;
        }
        if !idler.idle() {
            continue;
        }
        c.arm_wakeup();
        if !c.is_empty().unwrap() {
            c.disarm_wakeup();
            continue;
        }
        sleeps += 1;
        let mut b = [0u8; 64];
        match sock.read(&mut b) {
            Ok(0) => panic!("producer closed early at record {expect}"),
            Ok(_) => {}
            Err(_) => {
                // Timed out: if data was waiting, a wake-up was lost.
                if !c.is_empty().unwrap() {
                    lost += 1;
                }
            }
        }
        c.disarm_wakeup();
        idler.reset();
    }
    assert!(c.is_empty().unwrap());
    let status = child.wait().unwrap();
    assert!(status.success(), "producer failed: {status}");
    eprintln!(
        "consumed {RECORDS} records, {} bytes ({} wraps of a {RING}-byte ring), slept {sleeps} times",
        c.position(),
        c.position() / RING
    );
    assert_eq!(lost, 0, "wake-ups lost");
    assert!(c.position() / RING > 1000);
}
