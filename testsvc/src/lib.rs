//! A tonic service for mtlsd's tests: every call shape, a method to deny,
//! and one that reports the identity headers it received.

#![forbid(unsafe_code)]
#![allow(unreachable_pub, missing_debug_implementations)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

pub mod proto {
    tonic::include_proto!("mtlsd.test");
}

pub use proto::echo_client::EchoClient;
use proto::echo_server::{Echo, EchoServer};
use proto::{Msg, StreamRequest};

/// Headers mtlsd sets; [`EchoService::headers`] reports these.
pub const IDENTITY_HEADERS: &[&str] = &[
    "x-mtlsd-peer-host",
    "x-mtlsd-peer-roles",
    "x-forwarded-client-cert",
];

#[derive(Debug, Default, Clone)]
pub struct EchoService;

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<Msg>) -> Result<Response<Msg>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    type ServerStreamStream = MsgStream;

    async fn server_stream(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        let StreamRequest { count, size } = request.into_inner();
        let stream = tokio_stream::iter(0..count).map(move |i| {
            Ok(Msg {
                payload: vec![(i % 251) as u8; size as usize],
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<Msg>>,
    ) -> Result<Response<Msg>, Status> {
        let mut stream = request.into_inner();
        let mut total = 0u64;
        let mut count = 0u64;
        while let Some(msg) = stream.next().await {
            let msg = msg?;
            total += msg.payload.len() as u64;
            count += 1;
        }
        Ok(Response::new(Msg {
            payload: format!("{count} messages, {total} bytes").into_bytes(),
        }))
    }

    type BidiStream = MsgStream;

    async fn bidi(
        &self,
        request: Request<Streaming<Msg>>,
    ) -> Result<Response<Self::BidiStream>, Status> {
        let stream = request.into_inner().map(|msg| msg);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn delete_thing(&self, request: Request<Msg>) -> Result<Response<Msg>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    async fn headers(&self, request: Request<Msg>) -> Result<Response<Msg>, Status> {
        let metadata = request.metadata();
        let mut report = String::new();
        for name in IDENTITY_HEADERS {
            for value in metadata.get_all(*name).iter() {
                report.push_str(&format!(
                    "{name}={}\n",
                    value.to_str().unwrap_or("<binary>")
                ));
            }
        }
        Ok(Response::new(Msg {
            payload: report.into_bytes(),
        }))
    }

    async fn slow(&self, request: Request<StreamRequest>) -> Result<Response<Msg>, Status> {
        tokio::time::sleep(Duration::from_millis(u64::from(request.into_inner().count))).await;
        Ok(Response::new(Msg::default()))
    }
}

/// Serves [`EchoService`] over h2c on an ephemeral loopback port.
pub async fn serve() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind test service");
    let addr = listener.local_addr().expect("local addr");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(
                EchoServer::new(EchoService)
                    .max_decoding_message_size(64 * 1024 * 1024)
                    .max_encoding_message_size(64 * 1024 * 1024),
            )
            .serve_with_incoming(incoming)
            .await;
    });
    addr
}

/// Serves [`EchoService`] over h2c on `listener` until `stop` resolves,
/// then shuts down gracefully (GOAWAY to every connection) and returns
/// once they have closed — a daemon restart as its clients see it.
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let _ = tonic::transport::Server::builder()
        .add_service(EchoServer::new(EchoService))
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
}
