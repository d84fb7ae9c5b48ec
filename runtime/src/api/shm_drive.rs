//! Calls a shared-memory session thread serves itself instead of handing
//! them to tokio: topic subscriptions. The app's acks arrive on this thread
//! (MORE records); served here, an ack, the next event of its partition
//! and the write of that event to the ring happen in one turn of the
//! session loop, with no wake-up of another thread in between.
//!
//! The calls' futures are polled with a waker that flags the session and,
//! when its thread sleeps, wakes it through an eventfd it polls beside the
//! app's socket (events published from other threads, timers). A session
//! without such calls sleeps on the socket alone, as before.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

/// Rounds of polling one [`Driver::run`] makes while the calls keep waking
/// themselves (an ack queues an event, the event's write wakes the writer).
const MAX_ROUNDS: usize = 8;

type Call = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the waker and the session thread share.
struct Signal {
    /// A call asked to be polled.
    woken: AtomicBool,
    /// The session thread is (about to be) blocked in `poll`.
    asleep: AtomicBool,
    eventfd: OwnedFd,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Paired with `wait`: either the thread sees `woken` before it
        // blocks, or this side sees `asleep` and writes the eventfd.
        self.woken.store(true, Ordering::SeqCst);
        if self.asleep.load(Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
            unsafe {
                libc::write(
                    self.eventfd.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                );
            }
        }
    }
}

/// The calls one session thread serves.
pub(super) struct Driver {
    calls: RefCell<Vec<(u64, Call)>>,
    signal: Arc<Signal>,
    waker: Waker,
}

impl Driver {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain eventfd creation; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let signal = Arc::new(Signal {
            woken: AtomicBool::new(false),
            asleep: AtomicBool::new(false),
            eventfd,
        });
        Ok(Self {
            calls: RefCell::new(Vec::new()),
            waker: Waker::from(signal.clone()),
            signal,
        })
    }

    /// Takes `call` (correlation id `corr`) to serve; it is first polled on
    /// the next [`Driver::run`].
    pub fn add(&self, corr: u64, call: Call) {
        self.calls.borrow_mut().push((corr, call));
        self.signal.woken.store(true, Ordering::SeqCst);
    }

    /// Drops call `corr` (cancelled): its stream ends as if the app left.
    pub fn remove(&self, corr: u64) {
        self.calls.borrow_mut().retain(|(c, _)| *c != corr);
    }

    /// Drops every call (the session ends).
    pub fn clear(&self) {
        self.calls.borrow_mut().clear();
    }

    pub fn is_empty(&self) -> bool {
        self.calls.borrow().is_empty()
    }

    /// Whether a call asked to be polled.
    pub fn is_woken(&self) -> bool {
        self.signal.woken.load(Ordering::Relaxed)
    }

    /// Polls the calls while they ask for it (at most a few rounds, so
    /// the ring is read in between); finished calls are dropped. `true`
    /// when it polled any.
    pub fn run(&self) -> bool {
        let mut ran = false;
        for _ in 0..MAX_ROUNDS {
            if !self.signal.woken.swap(false, Ordering::SeqCst) {
                break;
            }
            self.poll_all();
            ran = true;
        }
        ran
    }

    /// Polls every call once, woken or not (before the session ends, so
    /// what they have to say still gets written).
    pub fn run_all(&self) {
        self.signal.woken.store(false, Ordering::SeqCst);
        self.poll_all();
    }

    fn poll_all(&self) {
        let mut cx = Context::from_waker(&self.waker);
        self.calls
            .borrow_mut()
            .retain_mut(|(_, call)| call.as_mut().poll(&mut cx) == Poll::Pending);
    }

    /// Sleeps until `sock` is readable, a call is woken, or `timeout`
    /// passes; says whether `sock` is readable.
    pub fn wait(&self, sock: &impl AsRawFd, timeout: Duration) -> bool {
        let s = &self.signal;
        s.asleep.store(true, Ordering::SeqCst);
        if s.woken.load(Ordering::SeqCst) {
            s.asleep.store(false, Ordering::SeqCst);
            return false;
        }
        let mut fds = [
            libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: s.eventfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: two valid pollfd entries, their count, a finite timeout.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        s.asleep.store(false, Ordering::SeqCst);
        if n <= 0 {
            return false;
        }
        if fds[1].revents != 0 {
            let mut count = 0u64;
            // SAFETY: reads 8 bytes into a live u64 from our eventfd.
            unsafe {
                libc::read(
                    s.eventfd.as_raw_fd(),
                    (&mut count as *mut u64).cast(),
                    std::mem::size_of::<u64>(),
                );
            }
        }
        fds[0].revents != 0
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    use super::*;

    #[test]
    fn a_wake_from_another_thread_ends_the_wait() {
        let d = Driver::new().unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<Waker>();
        let woken = Arc::new(AtomicBool::new(false));
        let flag = woken.clone();
        d.add(
            1,
            Box::pin(std::future::poll_fn(move |cx| {
                if flag.load(Ordering::SeqCst) {
                    return Poll::Ready(());
                }
                let _ = tx.send(cx.waker().clone());
                Poll::Pending
            })),
        );
        assert!(d.run());
        assert!(!d.is_empty());
        let waker = rx.recv().unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            woken.store(true, Ordering::SeqCst);
            waker.wake();
        });
        let started = Instant::now();
        // Woken well before the (long) timeout; the socket stays unread.
        assert!(!d.wait(&a, Duration::from_secs(30)));
        assert!(started.elapsed() < Duration::from_secs(20));
        t.join().unwrap();
        assert!(d.is_woken());
        d.run();
        assert!(d.is_empty(), "the call finished and was dropped");
    }

    #[test]
    fn the_app_socket_ends_the_wait_and_removed_calls_are_dropped() {
        let d = Driver::new().unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        d.add(7, Box::pin(std::future::pending()));
        d.run();
        std::io::Write::write_all(&mut b, &[1]).unwrap();
        assert!(d.wait(&a, Duration::from_secs(30)));
        d.remove(7);
        assert!(d.is_empty());
        // Nothing to wake it: the wait times out.
        let mut buf = [0u8; 1];
        std::io::Read::read_exact(&mut &a, &mut buf).unwrap();
        assert!(!d.wait(&a, Duration::from_millis(20)));
    }
}
