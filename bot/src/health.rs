//! `GET /health` and `GET /metrics` on `metrics_addr`. Health is honest: it asks what the
//! process depends on (the database, the queue server) each time, and answers 503 with the
//! name of what is down, so a load balancer or an orchestrator stops sending to, or restarts,
//! a process that cannot work, instead of trusting one that merely runs.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::store::Store;

/// A dependency that answers slower than this counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Probe = Arc<dyn Fn() -> ProbeFuture + Send + Sync>;

/// What `/health` checks. Cheap to clone; parts are added as the process connects them.
#[derive(Clone, Default)]
pub struct Health {
    probes: Arc<Mutex<Vec<(&'static str, Probe)>>>,
}

impl Health {
    /// `/health` asks `name` with `probe` (an `Err` says why it is down).
    pub fn watch<F, Fut>(&self, name: &'static str, probe: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let probe: Probe = Arc::new(move || Box::pin(probe()) as ProbeFuture);
        self.lock().push((name, probe));
    }

    /// The database answers a query.
    pub fn watch_store(&self, store: Store) {
        self.watch("database", move || {
            let store = store.clone();
            async move { store.ping().await.map_err(|e| e.to_string()) }
        });
    }

    /// The NATS server (the queue) is connected.
    pub fn watch_queue(&self, client: async_nats::Client) {
        self.watch("queue", move || {
            let state = client.connection_state();
            async move {
                match state {
                    async_nats::connection::State::Connected => Ok(()),
                    other => Err(format!("the NATS server is not connected ({other})")),
                }
            }
        });
    }

    /// Asks every part; `Err` lists those down, one line each (`database: why`).
    pub async fn check(&self) -> Result<(), String> {
        let probes: Vec<_> = self.lock().clone();
        let mut down = Vec::new();
        for (name, probe) in probes {
            match tokio::time::timeout(PROBE_TIMEOUT, probe()).await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => down.push(format!("{name} down: {why}")),
                Err(_) => down.push(format!(
                    "{name} down: no answer within {}s",
                    PROBE_TIMEOUT.as_secs()
                )),
            }
        }
        if down.is_empty() {
            Ok(())
        } else {
            Err(down.join("\n"))
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(&'static str, Probe)>> {
        self.probes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Serves `/health` (checked with `health`) and, on any other path, the metrics in
/// Prometheus's text format, on `addr`. Fails if the address is taken.
pub async fn serve(addr: SocketAddr, metrics: PrometheusHandle, health: Health) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot serve metrics on {addr}: is another program using that port? (metrics_addr)"
        )
    })?;
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("the metrics endpoint cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (metrics, health) = (metrics.clone(), health.clone());
            let service =
                hyper::service::service_fn(move |req| answer(req, metrics.clone(), health.clone()));
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

async fn answer(
    req: Request<Incoming>,
    metrics: PrometheusHandle,
    health: Health,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (status, body) = if req.uri().path() == "/health" {
        match health.check().await {
            Ok(()) => (StatusCode::OK, "OK".to_string()),
            Err(down) => (StatusCode::SERVICE_UNAVAILABLE, down),
        }
    } else {
        let text = tokio::task::spawn_blocking(move || metrics.render())
            .await
            .unwrap_or_default();
        (StatusCode::OK, text)
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_names_what_is_down_and_is_ok_when_all_answer() {
        let health = Health::default();
        assert_eq!(health.check().await, Ok(()), "nothing to depend on");
        let store = Store::open_in_memory().await.unwrap();
        health.watch_store(store.clone());
        health.watch("queue", || async { Ok(()) });
        assert_eq!(health.check().await, Ok(()));
        store.close().await;
        let down = health.check().await.unwrap_err();
        assert!(down.starts_with("database down: "), "{down}");
        assert!(!down.contains("queue"), "{down}");
        health.watch("queue", || async { Err("refused".into()) });
        let down = health.check().await.unwrap_err();
        assert!(down.ends_with("\nqueue down: refused"), "{down}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dependency_that_hangs_counts_as_down() {
        let health = Health::default();
        health.watch("database", std::future::pending);
        let down = health.check().await.unwrap_err();
        assert_eq!(down, "database down: no answer within 3s");
    }
}
