//! Following other frontends: the head they move, heard by LISTEN/NOTIFY and by polling; and the
//! space the tables take, measured now and then.

use super::*;

/// How often a tailer reads the head even when no notification came.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often the space used is measured; in between, appends add an estimate of their rows.
const USAGE_INTERVAL: Duration = Duration::from_secs(10);

/// Follows the head moved by other frontends: notifications wake it at once, and it polls anyway.
pub(super) async fn tail(inner: Weak<Inner>) {
    loop {
        let Some(config) = inner.upgrade().map(|i| i.config.clone()) else {
            return;
        };
        let (client, mut connection, _) = match connect::connect(&config).await {
            Ok(connected) => connected,
            Err(e) => {
                tracing::warn!(error = %e, "tailer cannot connect; polling");
                if !poll_once(&inner).await {
                    return;
                }
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
        };
        let statement = format!("LISTEN {CHANNEL}");
        let listen = client.batch_execute(&statement);
        let listening = tokio::select! {
            r = listen => r.is_ok(),
            m = std::future::poll_fn(|cx| connection.poll_message(cx)) => {
                tracing::warn!(message = ?m.map(|m| m.is_ok()), "tailer connection ended early");
                false
            }
        };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        strong.notify.store(listening, Ordering::Relaxed);
        drop(strong);
        if !poll_once(&inner).await {
            return;
        }
        loop {
            tokio::select! {
                m = std::future::poll_fn(|cx| connection.poll_message(cx)) => match m {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        let Some(inner) = inner.upgrade() else { return };
                        if let Ok(head) = n.payload().parse() {
                            inner.seen(head);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
                () = tokio::time::sleep(POLL_INTERVAL) => {
                    if !poll_once(&inner).await {
                        return;
                    }
                }
            }
        }
        tracing::warn!("tailer lost its connection; reconnecting");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Reads the head once; false when the backend is gone.
async fn poll_once(inner: &Weak<Inner>) -> bool {
    let Some(inner) = inner.upgrade() else {
        return false;
    };
    if let Err(e) = inner.progress().await {
        tracing::debug!(error = %e, "tailer could not read the head");
    }
    true
}

pub(super) async fn measure_usage(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(USAGE_INTERVAL).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.measure_usage().await;
    }
}
