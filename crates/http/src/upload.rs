//! Streaming multipart uploads into a registry's staging directory: bounded memory (two 1 MiB
//! buffers, one being received while the other is hashed and written), a size limit enforced
//! while reading, the SHA-256 computed on the bytes as they are written (the file is never read
//! back), and a temporary file that disappears unless imported, also when the client goes away
//! mid-upload or sends nothing for the body idle timeout (a 408).

use std::{io::Write, path::PathBuf, time::Duration};

use actix_multipart::Multipart;
use actix_web::{http::header, web, HttpRequest};
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use tempfile::NamedTempFile;
use trainyard_domain::{
    catalog::Upload,
    registry::{ContentHash, ContentHasher},
};

use crate::error::{ApiError, ErrorCode};

/// Bytes gathered before each write to disk.
const WRITE_BUFFER: usize = 1024 * 1024;
/// Leading bytes kept for format detection.
const HEAD_BYTES: usize = 64;

/// A fully received upload, staged on disk.
#[derive(Debug)]
pub(crate) struct Received {
    pub file: NamedTempFile,
    pub file_name: Option<String>,
    pub size: u64,
    pub head: Vec<u8>,
    pub content_hash: ContentHash,
}

impl Received {
    /// The upload as the catalog takes it.
    pub fn upload(&self) -> Upload<'_> {
        Upload {
            staged: self.file.path(),
            file_name: self.file_name.as_deref(),
            size_bytes: self.size,
            head: &self.head,
            content_hash: Some(&self.content_hash),
        }
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(ErrorCode::PayloadTooLarge, format!("upload larger than the limit of {limit} bytes"))
        .with_details(serde_json::json!({ "limit_bytes": limit }))
}

fn idle(timeout: Duration) -> ApiError {
    let secs = timeout.as_secs();
    ApiError::new(ErrorCode::RequestTimeout, format!("no upload data received for {secs} s; the upload was discarded"))
        .with_details(serde_json::json!({ "body_idle_timeout_secs": secs }))
}

/// The next item of `stream`, or a 408 when none comes within `timeout`.
async fn next_within<S: futures_util::Stream + Unpin>(stream: &mut S, timeout: Duration) -> Result<Option<S::Item>, ApiError> {
    actix_web::rt::time::timeout(timeout, stream.next()).await.map_err(|_| idle(timeout))
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidUpload, message)
}

/// Refuses at once a request whose declared length is over `limit`.
pub(crate) fn check_declared_length(req: &HttpRequest, limit: u64) -> Result<(), ApiError> {
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit.saturating_add(64 * 1024) => Err(too_large(limit)),
        _ => Ok(()),
    }
}

/// Reads the multipart field `file` into a temporary file in `staging`. Other fields are
/// ignored; a second `file` field is an error. A wait of more than `idle_timeout` for the next
/// bytes ends the upload with a 408 and removes the staged file. Each byte of the file received
/// is added to `received_bytes` as it arrives, also when the upload is refused later.
pub(crate) async fn receive(
    req: &HttpRequest,
    payload: web::Payload,
    staging: PathBuf,
    limit: u64,
    idle_timeout: Duration,
    received_bytes: &Counter,
) -> Result<Received, ApiError> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.to_ascii_lowercase().starts_with("multipart/form-data") {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "expected a multipart/form-data upload with the file in the field 'file'",
        ));
    }
    let mut multipart = Multipart::new(req.headers(), payload);
    let mut received: Option<Received> = None;
    while let Some(field) = next_within(&mut multipart, idle_timeout).await? {
        let mut field = field.map_err(|e| invalid(format!("invalid multipart upload: {e}")))?;
        if field.name() != Some("file") {
            while let Some(chunk) = next_within(&mut field, idle_timeout).await? {
                chunk.map_err(|e| invalid(format!("invalid multipart upload: {e}")))?;
            }
            continue;
        }
        if received.is_some() {
            return Err(invalid("only one field named 'file' may be sent"));
        }
        let file_name = field.content_disposition().and_then(|cd| cd.get_filename()).map(str::to_owned);
        let dir = staging.clone();
        let file = web::block(move || tempfile::Builder::new().prefix(".upload-").tempfile_in(dir))
            .await?
            .map_err(|e| ApiError::internal(&format!("cannot create a staging file: {e}")))?;
        let mut writer = Writer::Idle(Sink { file, hasher: ContentHasher::new(), spare: Vec::with_capacity(WRITE_BUFFER) });
        let mut size = 0u64;
        let mut head = Vec::with_capacity(HEAD_BYTES);
        let mut buf = Vec::with_capacity(WRITE_BUFFER);
        loop {
            let chunk = match next_within(&mut field, idle_timeout).await {
                Ok(Some(Ok(chunk))) => chunk,
                Ok(None) => break,
                Err(timed_out) => return Err(writer.abandon(timed_out).await),
                Ok(Some(Err(e))) => return Err(writer.abandon(invalid(format!("upload interrupted: {e}"))).await),
            };
            size += chunk.len() as u64;
            received_bytes.inc_by(chunk.len() as u64);
            if size > limit {
                return Err(writer.abandon(too_large(limit)).await);
            }
            if head.len() < HEAD_BYTES {
                let take = (HEAD_BYTES - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
            }
            buf.extend_from_slice(&chunk);
            if buf.len() >= WRITE_BUFFER {
                (writer, buf) = writer.write(buf).await?;
            }
        }
        if !buf.is_empty() {
            (writer, _) = writer.write(buf).await?;
        }
        let Sink { file, hasher, .. } = writer.finish().await?;
        received = Some(Received { file, file_name, size, head, content_hash: hasher.finish() });
    }
    let received = received.ok_or_else(|| invalid("the multipart field 'file' is missing"))?;
    if received.size == 0 {
        return Err(invalid("the uploaded file is empty"));
    }
    Ok(received)
}

/// The staged file, the hash of what it holds, and an empty buffer to fill next.
#[derive(Debug)]
struct Sink {
    file: NamedTempFile,
    hasher: ContentHasher,
    spare: Vec<u8>,
}

/// Writes to the staged file on the blocking pool while the next buffer is received: at most
/// one write is in flight, so memory stays at two buffers.
#[derive(Debug)]
enum Writer {
    Idle(Sink),
    Busy(actix_web::rt::task::JoinHandle<std::io::Result<Sink>>),
}

impl Writer {
    /// Waits for the write in flight, if any.
    async fn finish(self) -> Result<Sink, ApiError> {
        match self {
            Self::Idle(sink) => Ok(sink),
            Self::Busy(write) => write.await.map_err(|e| ApiError::internal(&e))?.map_err(|e| write_error(&e)),
        }
    }

    /// Gives up on the upload: waits for the write in flight and removes the staged file, so
    /// that nothing is left once the error is answered; returns `error`.
    async fn abandon(self, error: ApiError) -> ApiError {
        drop(self.finish().await);
        error
    }

    /// Starts hashing and appending `full` once the previous write is done; hands back an
    /// empty buffer for the next bytes.
    async fn write(self, full: Vec<u8>) -> Result<(Self, Vec<u8>), ApiError> {
        let Sink { mut file, mut hasher, spare } = self.finish().await?;
        let write = actix_web::rt::task::spawn_blocking(move || {
            let mut full = full;
            hasher.update(&full);
            file.write_all(&full)?;
            full.clear();
            Ok(Sink { file, hasher, spare: full })
        });
        Ok((Self::Busy(write), spare))
    }
}

fn write_error(e: &std::io::Error) -> ApiError {
    if e.kind() == std::io::ErrorKind::StorageFull {
        ApiError::new(ErrorCode::StorageBusy, "the disk is full; the upload was discarded")
    } else {
        ApiError::internal(&format!("cannot write the upload: {e}"))
    }
}

#[cfg(test)]
mod tests;
