//! What both HTTP/2 legs of the gRPC path do with a stream's body: send
//! one body on a stream as the peer's window allows ([`BodyPump`]), and
//! hand a received one on as a [`hyper::body::Body`] ([`H2Body`]) whose
//! window is released as each frame is taken. Together they carry HTTP/2
//! flow control end to end: a reader that stops reading stops the window
//! on the other leg, and mtlsd holds at most a window and one frame
//! per stream.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use hyper::body::{Body, Frame, SizeHint};

/// How sending a body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// In full, to its end of stream (trailers or a final empty frame).
    Complete,
    /// Cut: the peer reset the stream, the body failed, or the connection
    /// went away.
    Cut,
}

/// Sends `body` on `send`, frame by frame.
pub struct BodyPump<B> {
    body: B,
    send: SendStream<Bytes>,
    /// A frame has been sent: wait for window before taking the next.
    sent_any: bool,
}

impl<B> std::fmt::Debug for BodyPump<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyPump").finish_non_exhaustive()
    }
}

impl<B> BodyPump<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    pub fn new(body: B, send: SendStream<Bytes>) -> Self {
        Self {
            body,
            send,
            sent_any: false,
        }
    }

    /// Ready when the body has been sent in full or can no longer be.
    ///
    /// Every call on `send` takes the connection's stream lock, so the
    /// loop asks only what it must per frame: window only after a frame
    /// was sent and only when that frame used it up, and a reset only
    /// before it waits (a reset that came while a frame was on its way
    /// makes that frame's send fail, which ends the pump the same way).
    /// The first frame is taken without asking: like every later one it
    /// is held by `h2` until the peer's window lets it go, so a stream
    /// holds at most its window and one frame either way, and a unary
    /// call's only frame costs no window round of its own.
    pub fn poll_pump(&mut self, cx: &mut Context<'_>) -> Poll<Sent> {
        loop {
            // Wait for window before taking the next frame from the other
            // leg, so flow control reaches its sender.
            if self.sent_any && self.send.capacity() == 0 {
                self.send.reserve_capacity(1);
                while self.send.capacity() == 0 {
                    match self.send.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(Sent::Cut),
                        Poll::Pending => return self.pending_unless_reset(cx),
                    }
                }
            }
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => return self.pending_unless_reset(cx),
            };
            match frame {
                None => {
                    return Poll::Ready(match self.send.send_data(Bytes::new(), true) {
                        Ok(()) => Sent::Complete,
                        Err(_) => Sent::Cut,
                    });
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "body cut short; resetting the stream");
                    self.send.send_reset(Reason::CANCEL);
                    return Poll::Ready(Sent::Cut);
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let end = self.body.is_end_stream();
                        self.sent_any = true;
                        match self.send.send_data(data, end) {
                            Err(_) => return Poll::Ready(Sent::Cut),
                            Ok(()) if end => return Poll::Ready(Sent::Complete),
                            Ok(()) => {}
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            return Poll::Ready(match self.send.send_trailers(trailers) {
                                Ok(()) => Sent::Complete,
                                Err(_) => Sent::Cut,
                            });
                        }
                    }
                },
            }
        }
    }

    /// About to wait (for window, or for the other leg): also wake on the
    /// peer's reset, so a cancelled call stops waiting at once.
    fn pending_unless_reset(&mut self, cx: &mut Context<'_>) -> Poll<Sent> {
        match self.send.poll_reset(cx) {
            Poll::Ready(reset) => {
                tracing::debug!(
                    ?reset,
                    "peer reset the stream; not sending the rest of the body"
                );
                Poll::Ready(Sent::Cut)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A body as the peer sends it on an HTTP/2 stream; `G` is held until the
/// body is dropped (the upstream leg counts its open streams with it).
pub struct H2Body<G = ()> {
    recv: RecvStream,
    data_done: bool,
    _guard: G,
}

impl<G> H2Body<G> {
    pub fn new(recv: RecvStream, guard: G) -> Self {
        Self {
            recv,
            data_done: false,
            _guard: guard,
        }
    }
}

impl<G> std::fmt::Debug for H2Body<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Body").finish_non_exhaustive()
    }
}

impl<G: Unpin> Body for H2Body<G> {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) if is_clean_reset(&e) => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) if is_clean_reset(&e) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// RFC 9113 §8.1: a RST_STREAM with NO_ERROR after a complete response
/// only says the server wants no more of the request (as hyper reads it).
fn is_clean_reset(e: &h2::Error) -> bool {
    e.reason() == Some(Reason::NO_ERROR)
}
