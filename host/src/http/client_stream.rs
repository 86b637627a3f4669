//! A client connection as the server keeps it: its slot under the
//! connection cap, and a write timeout for clients that stop reading.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;

/// A client stream that fails a write which makes no progress for the
/// write timeout, and frees its connection slot when dropped.
///
/// Without the timeout a client that requests a large response, or keeps a
/// WebSocket open, and then reads nothing would hold its connection and
/// buffers forever. Reads have no timeout here: HTTP bounds them with the
/// header read timeout and the request timeout, and chat with pings.
#[derive(Debug)]
pub(super) struct ClientStream<T> {
    inner: T,
    write_timeout: Duration,
    /// Armed when a write first returns `Pending`, disarmed by any write
    /// that completes.
    write_deadline: Option<Pin<Box<Sleep>>>,
    /// The connection's slot; dropping the stream frees it, also after a
    /// WebSocket upgrade took the stream over.
    _slot: OwnedSemaphorePermit,
}

impl<T> ClientStream<T> {
    pub(super) fn new(inner: T, write_timeout: Duration, slot: OwnedSemaphorePermit) -> Self {
        Self {
            inner,
            write_timeout,
            write_deadline: None,
            _slot: slot,
        }
    }

    /// Completes a write attempt: resets the deadline when it finished,
    /// and turns a stall past the deadline into `TimedOut`.
    fn track<R>(
        &mut self,
        cx: &mut Context<'_>,
        attempt: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if attempt.is_ready() {
            self.write_deadline = None;
            return attempt;
        }
        let timeout = self.write_timeout;
        let deadline = self
            .write_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client read nothing within the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ClientStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ClientStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let attempt = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.track(cx, attempt)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let attempt = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.track(cx, attempt)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let attempt = Pin::new(&mut this.inner).poll_flush(cx);
        this.track(cx, attempt)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let attempt = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.track(cx, attempt)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::sync::Semaphore;

    use super::*;

    fn slot(slots: &Arc<Semaphore>) -> OwnedSemaphorePermit {
        Arc::clone(slots).try_acquire_owned().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_write_times_out() {
        let slots = Arc::new(Semaphore::new(1));
        let (client, server) = tokio::io::duplex(64);
        let mut stream = ClientStream::new(server, Duration::from_secs(5), slot(&slots));
        // The peer never reads, so the 64-byte pipe fills and stays full.
        let error = stream.write_all(&[0; 1024]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_reader_that_keeps_up_is_kept() {
        let slots = Arc::new(Semaphore::new(1));
        let (mut client, server) = tokio::io::duplex(64);
        let mut stream = ClientStream::new(server, Duration::from_secs(5), slot(&slots));
        let reader = tokio::spawn(async move {
            let mut received = 0;
            let mut buffer = [0; 16];
            while received < 4096 {
                // Each read comes well within the timeout, 4096 bytes in
                // all take far longer than it.
                tokio::time::sleep(Duration::from_secs(1)).await;
                received += client.read(&mut buffer).await.unwrap();
            }
        });
        stream.write_all(&[0; 4096]).await.unwrap();
        reader.await.unwrap();
    }

    #[test]
    fn dropping_the_stream_frees_its_slot() {
        let slots = Arc::new(Semaphore::new(1));
        let (_client, server) = tokio::io::duplex(64);
        let stream = ClientStream::new(server, Duration::from_secs(5), slot(&slots));
        assert_eq!(slots.available_permits(), 0);
        drop(stream);
        assert_eq!(slots.available_permits(), 1);
    }
}
