//! etcd's access controller on the client URLs' HTTP (not gRPC, not the metrics URLs): on a plain
//! connection, a request whose Host is not in `--host-whitelist` is refused (a browser tricked by
//! DNS rebinding into calling a local etcd); then CORS headers for the origins of `--cors`, and
//! every OPTIONS request answered at once, whatever its path. A layer of its own rather than a
//! middleware function, so that a gRPC call passes by it with no allocation and no await.

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::{BoxFuture, Either};
use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Who may call: hosts and origins, each `*` (anyone) or a list.
pub struct Guard {
    hosts: Allowed,
    origins: Allowed,
    /// Whether connections are plain HTTP: the Host check guards those only, as etcd's.
    plain: bool,
}

enum Allowed {
    Anyone,
    Only(HashSet<String>),
}

impl Allowed {
    /// `*` (or nothing) allows anyone, as in etcd.
    fn from(list: &[String]) -> Allowed {
        if list.is_empty() || list.iter().any(|l| l == "*") {
            Allowed::Anyone
        } else {
            Allowed::Only(list.iter().cloned().collect())
        }
    }

    fn allows(&self, who: &str) -> bool {
        match self {
            Allowed::Anyone => true,
            Allowed::Only(list) => list.contains(who),
        }
    }
}

impl Guard {
    pub fn new(host_whitelist: &[String], cors: &[String], plain: bool) -> Arc<Guard> {
        Arc::new(Guard {
            hosts: Allowed::from(host_whitelist),
            origins: Allowed::from(cors),
            plain,
        })
    }
}

/// The layer putting [`Guard`] in front of a router.
#[derive(Clone)]
pub struct GuardLayer(pub Arc<Guard>);

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            guard: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    guard: Arc<Guard>,
}

impl<S> tower::Service<Request> for Guarded<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let grpc = request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
        if grpc {
            return Either::Left(self.inner.call(request));
        }
        // The service made ready goes with the request; a clone stays for the next one.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let guard = self.guard.clone();
        Either::Right(Box::pin(
            async move { Ok(guard.answer(request, ready).await) },
        ))
    }
}

impl Guard {
    /// Answers an HTTP request as etcd's access controller does, passing it to `inner` if it may.
    async fn answer<S>(&self, request: Request, mut inner: S) -> Response
    where
        S: tower::Service<Request, Response = Response, Error = Infallible>,
    {
        if self.plain {
            let host = hostname(&request);
            if !self.hosts.allows(&host) {
                tracing::warn!(%host, "rejecting HTTP request to prevent DNS rebinding attacks");
                return (
                    StatusCode::MISDIRECTED_REQUEST,
                    [
                        (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                    ],
                    unrecognized_host(&host),
                )
                    .into_response();
            }
        }
        let origin = match &self.origins {
            Allowed::Anyone => Some(HeaderValue::from_static("*")),
            allowed => request
                .headers()
                .get(header::ORIGIN)
                .filter(|o| o.to_str().is_ok_and(|o| allowed.allows(o)))
                .cloned(),
        };
        let mut response = if request.method() == Method::OPTIONS {
            StatusCode::OK.into_response()
        } else {
            match inner.call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        };
        if let Some(origin) = origin {
            let headers = response.headers_mut();
            headers.append(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
            );
            headers.append(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.append(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("accept, content-type, authorization"),
            );
        }
        response
    }
}

/// The request's host without its port, as Go's `net.SplitHostPort` splits it (the whole name
/// when it has no port or more than one colon outside brackets).
fn hostname(request: &Request) -> String {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    split_host(host).to_owned()
}

fn split_host(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((inside, port)) = rest.split_once("]:") {
            if !port.contains(':') {
                return inside;
            }
        }
        return host;
    }
    match host.split_once(':') {
        Some((name, port)) if !port.contains(':') => name,
        _ => host,
    }
}

/// etcd's answer to a Host it does not know (CVE-2018-5702), word for word.
fn unrecognized_host(host: &str) -> String {
    format!(
        "\netcd received your request, but the Host header was unrecognized.\n\nTo fix this, \
         choose one of the following options:\n- Enable TLS, then any HTTPS request will be \
         allowed.\n- Add the hostname you want to use to the whitelist in settings.\n  - e.g. \
         etcd --host-whitelist {host:?}\n\nThis requirement has been added to help prevent \
         \"DNS Rebinding\" attacks (CVE-2018-5702).\n\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_split_as_go_splits_them() {
        assert_eq!(split_host("localhost:2379"), "localhost");
        assert_eq!(split_host("localhost"), "localhost");
        assert_eq!(split_host("[::1]:2379"), "::1");
        assert_eq!(split_host("a:b:c"), "a:b:c");
        assert_eq!(split_host(""), "");
    }

    #[test]
    fn the_refusal_is_etcds_374_bytes() {
        assert_eq!(unrecognized_host("evil.example").len(), 374);
    }
}
