//! Snapshot fetch: a camera event that arrived without an image (line-framed serial output,
//! a quick result whose full result never came) gets one from the camera's snapshot URL.
//! Short timeout, size cap; a failure only adds a remark (the gateway then sends its
//! placeholder image), it never holds up or drops the event.

use std::time::Duration;

use crate::PlateEvent;

/// Largest snapshot accepted.
pub const MAX_SNAPSHOT_BYTES: usize = 8 << 20;

/// Why a snapshot could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Building the HTTP client failed.
    #[error("snapshot client: {0}")]
    Client(String),
    /// The request failed or timed out.
    #[error("snapshot request failed: {0}")]
    Request(String),
    /// The camera answered with an error status.
    #[error("snapshot answered HTTP {0}")]
    Status(u16),
    /// The answer was too large.
    #[error("snapshot larger than {MAX_SNAPSHOT_BYTES} bytes")]
    TooLarge,
}

/// A camera's snapshot URL with its HTTP client.
#[derive(Debug, Clone)]
pub struct Snapshot {
    url: String,
    client: reqwest::Client,
}

impl Snapshot {
    /// A fetcher for `url` with a whole-request `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Snapshot, SnapshotError> {
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()
            .map_err(|e| SnapshotError::Client(e.to_string()))?;
        Ok(Snapshot {
            url: url.to_string(),
            client,
        })
    }

    /// Fetch one image.
    pub async fn fetch(&self) -> Result<Vec<u8>, SnapshotError> {
        let mut resp = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| SnapshotError::Request(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(SnapshotError::Status(resp.status().as_u16()));
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| SnapshotError::Request(e.without_url().to_string()))?
        {
            if out.len() + chunk.len() > MAX_SNAPSHOT_BYTES {
                return Err(SnapshotError::TooLarge);
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

/// Give an image-less event the camera's snapshot, or a remark saying why there is none.
pub async fn fill_image(ev: &mut PlateEvent, snapshot: Option<&Snapshot>) {
    if ev.image.is_some() {
        return;
    }
    let Some(snap) = snapshot else { return };
    match snap.fetch().await {
        Ok(bytes) => {
            ev.image = Some(bytes);
            add_remark(
                ev,
                "图片来自抓拍 (image fetched from the camera's snapshot URL)",
            );
        }
        Err(e) => {
            tracing::warn!(node = %ev.node_name, error = %e, "snapshot fetch failed; the placeholder image is sent");
            add_remark(ev, &format!("抓拍失败 (snapshot failed: {e})"));
        }
    }
}

fn add_remark(ev: &mut PlateEvent, text: &str) {
    ev.remark = Some(match ev.remark.take() {
        Some(r) if !r.is_empty() => format!("{r}; {text}"),
        _ => text.to_string(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CarStyle, Direction};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn event() -> PlateEvent {
        PlateEvent {
            source_key: String::new(),
            node_name: "出口1".into(),
            direction: Direction::Out,
            plate: Some("晋A12345".into()),
            captured_at_ms: None,
            color: None,
            style: CarStyle::Car,
            brand: None,
            image: None,
            remark: None,
        }
    }

    /// A one-shot HTTP server on 127.0.0.1 answering `status` with `body`.
    async fn serve_once(status: &'static str, body: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: image/jpeg\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
                let _ = s.shutdown().await;
            }
        });
        format!("http://{addr}/snapshot.jpg")
    }

    #[tokio::test]
    async fn an_event_without_an_image_gets_the_snapshot() {
        let url = serve_once("200 OK", vec![0xFF, 0xD8, 1, 2, 3, 0xFF, 0xD9]).await;
        let snap = Snapshot::new(&url, Duration::from_secs(2)).expect("client");
        let mut ev = event();
        fill_image(&mut ev, Some(&snap)).await;
        assert_eq!(
            ev.image.as_deref(),
            Some(&[0xFF, 0xD8, 1, 2, 3, 0xFF, 0xD9][..])
        );
        assert!(ev.remark.as_deref().unwrap_or("").contains("snapshot"));
    }

    #[tokio::test]
    async fn a_failing_snapshot_leaves_a_remark_and_no_image() {
        let url = serve_once("404 Not Found", Vec::new()).await;
        let snap = Snapshot::new(&url, Duration::from_secs(2)).expect("client");
        let mut ev = event();
        fill_image(&mut ev, Some(&snap)).await;
        assert!(ev.image.is_none());
        assert!(ev.remark.as_deref().unwrap_or("").contains("404"));
    }

    #[tokio::test]
    async fn an_event_with_an_image_is_left_alone() {
        let mut ev = event();
        ev.image = Some(vec![1]);
        fill_image(&mut ev, None).await;
        assert_eq!(ev.image, Some(vec![1]));
        assert!(ev.remark.is_none());
    }
}
