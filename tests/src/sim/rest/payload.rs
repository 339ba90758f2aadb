//! Request bodies as Discord reads them: plain JSON, or multipart with `payload_json` and
//! `files[n]` parts.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::HeaderMap;
use serde_json::Value;

use crate::sim::transcript::FileSummary;

#[derive(Clone, Debug)]
pub(crate) struct UploadedFile {
    pub field: String,
    pub filename: String,
    pub content_type: String,
    pub bytes: Bytes,
}

/// The parsed body of one request, handed to handlers as an extension.
#[derive(Clone, Debug, Default)]
pub(crate) struct Payload {
    pub json: Value,
    pub files: Vec<UploadedFile>,
}

impl Payload {
    pub(crate) fn summaries(&self) -> Vec<FileSummary> {
        self.files
            .iter()
            .map(|f| FileSummary {
                field: f.field.clone(),
                filename: f.filename.clone(),
                size: f.bytes.len(),
            })
            .collect()
    }

    pub(crate) fn file_sizes(&self) -> Vec<usize> {
        self.files.iter().map(|f| f.bytes.len()).collect()
    }
}

pub(crate) async fn parse(headers: &HeaderMap, bytes: Bytes) -> Payload {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("multipart/form-data") {
        return parse_multipart(headers, bytes).await;
    }
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    Payload {
        json,
        files: Vec::new(),
    }
}

async fn parse_multipart(headers: &HeaderMap, bytes: Bytes) -> Payload {
    let mut request = Request::new(Body::from(bytes));
    *request.headers_mut() = headers.clone();
    let mut payload = Payload::default();
    let Ok(mut multipart) = Multipart::from_request(request, &()).await else {
        return payload;
    };
    while let Ok(Some(field)) = multipart.next_field().await {
        let name = field.name().unwrap_or("").to_owned();
        let filename = field.file_name().map(str::to_owned);
        let content_type = field
            .content_type()
            .unwrap_or("application/octet-stream")
            .to_owned();
        let Ok(data) = field.bytes().await else { break };
        if name == "payload_json" {
            payload.json = serde_json::from_slice(&data).unwrap_or(Value::Null);
        } else {
            let filename = filename.unwrap_or_else(|| name.clone());
            payload.files.push(UploadedFile {
                field: name,
                filename,
                content_type,
                bytes: data,
            });
        }
    }
    payload
}
