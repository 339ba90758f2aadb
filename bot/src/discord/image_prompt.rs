//! Image prompts: the picture attached to `/imagine`, fetched from Discord's CDN, checked by
//! [`image_input`](crate::image_input) and kept as the PNG the worker starts from.
//!
//! The download is an outside input like any other: its body is read with a byte cap (a
//! Content-Length that lies changes nothing) and a deadline, decoding runs on a blocking
//! thread (a large JPEG takes long enough to stall every Discord task on the runtime), and the
//! PNG is written atomically, so a restart never finds half a file.

use std::path::Path;
use std::time::Duration;

use super::Data;
use crate::image_input::{self, InputError};
use crate::render::write_file_atomically;

/// The largest image prompt read; the download stops as soon as the body passes it.
pub const MAX_DOWNLOAD_BYTES: usize = 10 << 20;
/// How long fetching one image prompt may take, first byte to last.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an image prompt could not be used. `Display` is the sentence shown to the user.
#[derive(Debug, thiserror::Error)]
pub enum ImagePromptError {
    #[error("I could not download the attached image: please try again.")]
    Download(#[source] reqwest::Error),
    #[error("I could not use the attached image: it is larger than 10 MB.")]
    TooLarge,
    #[error("I could not use the attached image: {0}.")]
    Input(#[from] InputError),
    #[error("I could not use the attached image: reading it failed unexpectedly.")]
    DecoderCrashed,
    #[error("I could not save the attached image: please tell the bot's owner.")]
    Save(#[source] anyhow::Error),
}

/// Downloads the image prompt at `url` and saves it as the PNG at `path`; the `Err` is the
/// sentence to show the user.
pub async fn download_image(data: &Data, url: &str, path: &str) -> Result<(), String> {
    save_image_prompt(&data.http_client, url, Path::new(path), DOWNLOAD_TIMEOUT)
        .await
        .map_err(|e| {
            // The URL is left out: Discord's CDN links carry signatures.
            tracing::warn!(error = ?e, "image prompt refused");
            e.to_string()
        })
}

/// Fetches `url` (at most [`MAX_DOWNLOAD_BYTES`], within `timeout`), decodes it and writes
/// it to `path` as an 8-bit RGB PNG.
pub async fn save_image_prompt(
    client: &reqwest::Client,
    url: &str,
    path: &Path,
    timeout: Duration,
) -> Result<(), ImagePromptError> {
    let bytes = fetch_capped(client, url, MAX_DOWNLOAD_BYTES, timeout).await?;
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || decode_and_save(&bytes, &path))
        .await
        .map_err(|_| ImagePromptError::DecoderCrashed)?
}

/// The body at `url`, refused once it passes `cap` bytes.
pub async fn fetch_capped(
    client: &reqwest::Client,
    url: &str,
    cap: usize,
    timeout: Duration,
) -> Result<Vec<u8>, ImagePromptError> {
    // reqwest's per-request timeout runs until the body is read to its end.
    let mut response = client
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(ImagePromptError::Download)?;
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(ImagePromptError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ImagePromptError::Download)? {
        if body.len() + chunk.len() > cap {
            return Err(ImagePromptError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn decode_and_save(bytes: &[u8], path: &Path) -> Result<(), ImagePromptError> {
    let img = image_input::decode_rgb(bytes)?;
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| ImagePromptError::Save(e.into()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ImagePromptError::Save(e.into()))?;
    }
    write_file_atomically(path, png.get_ref()).map_err(ImagePromptError::Save)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-shot HTTP server that answers with `head` then `body`, and then holds the
    /// connection open when `hang`.
    async fn serve(head: &str, body: Vec<u8>, hang: bool) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/image.png", listener.local_addr().unwrap());
        let head = head.to_string();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            // The client hangs up once it has seen enough.
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(&body).await;
            if hang {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        });
        url
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    #[tokio::test]
    async fn a_body_past_the_cap_is_refused_however_it_is_sent() {
        let ok = serve(
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
            vec![7; 100],
            false,
        );
        let body = fetch_capped(&client(), &ok.await, 1000, DOWNLOAD_TIMEOUT).await;
        assert_eq!(body.unwrap(), vec![7; 100]);
        // No length announced: the body is counted as it arrives.
        let head = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
        let url = serve(head, vec![0; 11 << 20], false).await;
        let err = fetch_capped(&client(), &url, MAX_DOWNLOAD_BYTES, DOWNLOAD_TIMEOUT).await;
        assert!(matches!(err, Err(ImagePromptError::TooLarge)), "{err:?}");
        // A length over the cap is refused before reading a byte of the body.
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 11 << 20);
        let url = serve(&head, Vec::new(), true).await;
        let err = fetch_capped(&client(), &url, MAX_DOWNLOAD_BYTES, DOWNLOAD_TIMEOUT).await;
        assert_eq!(
            err.unwrap_err().to_string(),
            "I could not use the attached image: it is larger than 10 MB."
        );
    }

    #[tokio::test]
    async fn a_download_that_stalls_ends_at_the_deadline() {
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n";
        let url = serve(head, vec![0; 10], true).await;
        let err = fetch_capped(&client(), &url, 10_000, Duration::from_millis(300)).await;
        match err {
            Err(ImagePromptError::Download(e)) => assert!(e.is_timeout(), "{e:?}"),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_jpeg_prompt_is_saved_as_an_upright_rgb_png() {
        let jpeg = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../assets/testdata/images/photo_exif_orientation_6.jpg"
        ))
        .unwrap();
        // Declared as a PNG: the content decides.
        let head = "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n";
        let url = serve(head, jpeg, false).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inputs/1.png");
        save_image_prompt(&client(), &url, &path, DOWNLOAD_TIMEOUT)
            .await
            .unwrap();
        let saved = image::open(&path).unwrap();
        assert_eq!((saved.width(), saved.height()), (32, 48));
        assert_eq!(saved.color(), image::ColorType::Rgb8);
    }
}
