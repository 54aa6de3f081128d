//! What every gRPC call leaves behind: `grpc_server_started_total` and `grpc_server_handled_total`
//! by method and status (with `--metrics extensive`, `grpc_server_handling_seconds` too), the bytes
//! in and out, and a log line for a unary call slower than [`metrics::slow_request`] (etcd's "apply
//! request took too long") or [`metrics::unary_request_warning`] (etcd's "request stats").

use crate::metrics;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// The middleware, for the gRPC routes.
pub async fn grpc(request: Request, next: Next) -> Response {
    let method = metrics::method(request.uri().path());
    if let Some(method) = method {
        method.started();
    }
    let request = request.map(|body| {
        Body::new(Counted {
            inner: body,
            bytes: &metrics::GRPC_RECEIVED_BYTES,
            call: None,
        })
    });
    let remote = remote(&request);
    let start = std::time::Instant::now();
    let response = next.run(request).await;
    let took = start.elapsed();
    if let Some(method) = method.filter(|m| m.unary && took > metrics::unary_request_warning()) {
        let started = std::time::SystemTime::now() - took;
        // etcd also gives the request's size and content for KV calls, which this layer does not
        // decode; like etcd for every other call, it says -1 and "".
        tracing::warn!(
            start_time = %time::OffsetDateTime::from(started),
            time_spent = ?took,
            remote = %remote.map_or_else(|| "No remote client info.".to_owned(), |a| a.to_string()),
            response_type = %method.path,
            request_count = -1,
            request_size = -1,
            response_count = -1,
            response_size = -1,
            request_content = "",
            "request stats"
        );
    }
    let slow = metrics::slow_request();
    if let Some(method) = method.filter(|m| m.unary && took > slow) {
        metrics::SLOW_REQUESTS.inc();
        tracing::warn!(
            ?took,
            expected_duration = ?slow,
            method = %method.path,
            "apply request took too long"
        );
    }
    // An error before any message comes back as headers only ("trailers-only"); otherwise the
    // status is in the trailers after the messages.
    let call = match (method, status(response.headers())) {
        (Some(method), Some(code)) => {
            method.handled(code, took);
            None
        }
        (Some(method), None) => Some((method, start)),
        (None, _) => None,
    };
    response.map(|body| {
        Body::new(Counted {
            inner: body,
            bytes: &metrics::GRPC_SENT_BYTES,
            call,
        })
    })
}

/// The client's address, for etcd's "request stats".
fn remote(request: &Request) -> Option<std::net::SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(TlsConnectInfo::get_ref)
        })
        .and_then(TcpConnectInfo::remote_addr)
}

fn status(headers: &axum::http::HeaderMap) -> Option<usize> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A body whose data bytes are counted; for a response whose status is still to come, the call
/// (and when it started) whose status its trailers (or its being dropped before them: Canceled)
/// complete.
struct Counted {
    inner: Body,
    bytes: &'static prometheus_client::metrics::counter::Counter,
    call: Option<(&'static metrics::Method, std::time::Instant)>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes.inc_by(data.len() as u64);
            } else if let Some(trailers) = frame.trailers_ref() {
                if let Some((method, start)) = self.call.take() {
                    let code = status(trailers).unwrap_or(tonic::Code::Unknown as usize);
                    method.handled(code, start.elapsed());
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some((method, start)) = self.call.take() {
            method.handled(tonic::Code::Cancelled as usize, start.elapsed());
        }
    }
}
