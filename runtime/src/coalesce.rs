//! Write coalescing for HTTP/2 connections.
//!
//! hyper and h2 send a gRPC message as several flushes: the HEADERS frame,
//! then the DATA frame once the body task has encoded it, then the trailers
//! (or an empty END_STREAM frame). Each flush is one `write` (and over TLS
//! one record), and each wakes the peer, so a unary call costs the receiver
//! two or three wake-ups where one would do. On these hosts a wake-up is tens
//! of microseconds.
//!
//! [`Coalesce`] buffers writes and, when asked to flush, first yields to the
//! scheduler: the tasks that are about to add the rest of the message run.
//! It yields again while a turn added bytes (at most [`MAX_YIELDS`] times),
//! then sends everything in one system call. The delay is a few trips
//! through the run queue, never a timer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes beyond this size bypass the buffer.
const CAPACITY: usize = 16 * 1024;
/// Scheduler turns one flush may wait for more of the message.
pub const MAX_YIELDS: u8 = 3;

/// An I/O stream whose writes are gathered until a flush, and whose flushes
/// wait for one scheduler turn. Reads pass through.
pub struct Coalesce<T> {
    inner: T,
    buf: Vec<u8>,
    /// Bytes of `buf` already written to `inner`.
    written: usize,
    /// Turns the current flush has yielded, and the buffer length at the
    /// last one.
    yields: u8,
    len_at_yield: usize,
}

impl<T> Coalesce<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(CAPACITY),
            written: 0,
            yields: 0,
            len_at_yield: 0,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes out the buffer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() + data.len() > CAPACITY {
            std::task::ready!(this.poll_drain(cx))?;
            if data.len() >= CAPACITY {
                return Pin::new(&mut this.inner).poll_write(cx, data);
            }
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.buf.len() + total > CAPACITY {
            std::task::ready!(this.poll_drain(cx))?;
            if total >= CAPACITY {
                return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
            }
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            this.yields = 0;
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        let grew = this.yields == 0 || this.buf.len() > this.len_at_yield;
        if grew && this.yields < MAX_YIELDS {
            // Let the tasks that complete this message run first.
            this.yields += 1;
            this.len_at_yield = this.buf.len();
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        std::task::ready!(this.poll_drain(cx))?;
        this.yields = 0;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Coalesce<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn gathers_writes_until_flush() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut w = Coalesce::new(a);
        w.write_all(b"head").await.unwrap();
        w.write_all(b"body").await.unwrap();
        let mut probe = [0u8; 8];
        let nothing =
            tokio::time::timeout(std::time::Duration::from_millis(20), b.read(&mut probe)).await;
        assert!(nothing.is_err(), "nothing leaves before the flush");
        w.flush().await.unwrap();
        b.read_exact(&mut probe).await.unwrap();
        assert_eq!(&probe, b"headbody");
        // Large writes pass through.
        let big = vec![7u8; CAPACITY + 10];
        w.write_all(&big).await.unwrap();
        w.flush().await.unwrap();
        let mut got = vec![0u8; big.len()];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
        w.shutdown().await.unwrap();
    }
}
