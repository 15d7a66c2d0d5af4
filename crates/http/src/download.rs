//! File downloads with the registry's content hash as a strong `ETag` (`"sha256-<hex>"`),
//! conditional requests (`If-None-Match` gives 304, `If-Match` 412) and single byte ranges
//! (`Range`, honoured only while `If-Range` names the current ETag), streamed from disk on the
//! blocking pool in 1 MiB chunks, the next one read while the current one is sent.
//!
//! The body is sent as stored: `Content-Encoding: identity` keeps the compression middleware
//! away, so that lengths, ranges and the ETag all describe the file's own bytes.

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom},
    path::PathBuf,
};

use actix_files::HttpRange;
use actix_web::{
    body::SizedStream,
    http::header::{self, ContentDisposition, DispositionParam, DispositionType, EntityTag, IfMatch, IfNoneMatch, IfRange},
    web::{self, Bytes},
    HttpMessage, HttpRequest, HttpResponse, ResponseError,
};
use prometheus_client::metrics::counter::Counter;
use trainyard_domain::registry::ContentHash;

use crate::error::{ApiError, ErrorCode};

/// Bytes read from disk per step of the stream.
const CHUNK: u64 = 1024 * 1024;

/// What the request's conditions and range ask for, given the file's tag and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    NotModified,
    PreconditionFailed,
    Unsatisfiable,
    Whole,
    /// Offset and length of one range.
    Part(u64, u64),
}

fn answer(req: &HttpRequest, etag: Option<&EntityTag>, len: u64) -> Answer {
    if let Some(IfMatch::Items(items)) = req.get_header::<IfMatch>() {
        if !etag.is_some_and(|tag| items.iter().any(|item| item.strong_eq(tag))) {
            return Answer::PreconditionFailed;
        }
    }
    match req.get_header::<IfNoneMatch>() {
        Some(IfNoneMatch::Any) => return Answer::NotModified,
        Some(IfNoneMatch::Items(items)) if etag.is_some_and(|tag| items.iter().any(|item| item.weak_eq(tag))) => {
            return Answer::NotModified;
        }
        _ => {}
    }
    let Some(range) = req.headers().get(header::RANGE) else { return Answer::Whole };
    // A unit other than bytes is not understood, so it is ignored.
    if !range.as_bytes().starts_with(b"bytes=") {
        return Answer::Whole;
    }
    // A range of a representation the client no longer has would splice two files: send it all.
    let current = match req.get_header::<IfRange>() {
        None => true,
        Some(IfRange::EntityTag(tag)) => etag.is_some_and(|ours| tag.strong_eq(ours)),
        Some(IfRange::Date(_)) => false,
    };
    if !current {
        return Answer::Whole;
    }
    match range.to_str().ok().map(|r| HttpRange::parse(r, len)) {
        Some(Ok(ranges)) => match ranges.as_slice() {
            [one] => Answer::Part(one.start, one.length),
            // Several ranges: a server may answer with the whole file instead.
            _ => Answer::Whole,
        },
        Some(Err(_)) | None => Answer::Unsatisfiable,
    }
}

/// Serves the file at `path`, named `download_name` for the client, with `hash` as its ETag.
/// Each chunk is added to `sent_bytes` as it is handed to the connection.
pub(crate) async fn file_response(
    req: &HttpRequest,
    path: PathBuf,
    hash: Option<&ContentHash>,
    download_name: String,
    sent_bytes: Counter,
) -> Result<HttpResponse, ApiError> {
    let shown = path.display().to_string();
    let (mut file, len) = web::block(move || {
        let file = File::open(&path)?;
        let len = file.metadata()?.len();
        Ok::<_, io::Error>((file, len))
    })
    .await?
    .map_err(|e| ApiError::internal(&format!("registry file {shown} unreadable: {e}")))?;
    let etag = hash.map(|h| EntityTag::new_strong(h.etag()));
    let (status, start, length) = match answer(req, etag.as_ref(), len) {
        Answer::NotModified => {
            let mut res = HttpResponse::NotModified();
            if let Some(tag) = etag {
                res.insert_header(header::ETag(tag));
            }
            return Ok(res.finish());
        }
        Answer::PreconditionFailed => {
            return Err(ApiError::new(ErrorCode::PreconditionFailed, "the file changed: If-Match does not name its current ETag"));
        }
        Answer::Unsatisfiable => {
            let mut res = ApiError::new(ErrorCode::RangeNotSatisfiable, format!("the requested range is outside the file's {len} bytes"))
                .error_response();
            res.headers_mut().insert(
                header::CONTENT_RANGE,
                header::HeaderValue::from_str(&format!("bytes */{len}")).map_err(|e| ApiError::internal(&e))?,
            );
            return Ok(res);
        }
        Answer::Whole => (actix_web::http::StatusCode::OK, 0, len),
        Answer::Part(start, length) => (actix_web::http::StatusCode::PARTIAL_CONTENT, start, length),
    };
    if start > 0 {
        file = web::block(move || file.seek(SeekFrom::Start(start)).map(|_| file))
            .await?
            .map_err(|e| ApiError::internal(&format!("cannot seek in a registry file: {e}")))?;
    }
    let mut res = HttpResponse::build(status);
    res.insert_header((header::CONTENT_TYPE, "application/octet-stream"))
        .insert_header(ContentDisposition {
            disposition: DispositionType::Attachment,
            parameters: vec![DispositionParam::Filename(download_name)],
        })
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::CONTENT_ENCODING, "identity"));
    if let Some(tag) = etag {
        res.insert_header(header::ETag(tag));
    }
    if status == actix_web::http::StatusCode::PARTIAL_CONTENT {
        res.insert_header((header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", start + length - 1)));
    }
    Ok(res.body(SizedStream::new(length, chunks(file, length, sent_bytes))))
}

/// A read of the next chunk, running on the blocking pool: the file comes back with the bytes.
type PendingRead = actix_web::rt::task::JoinHandle<io::Result<(File, Vec<u8>)>>;

/// Starts reading `want` bytes of `file` on the blocking pool, into a buffer that is not zeroed
/// first.
fn read_ahead(mut file: File, want: u64) -> PendingRead {
    actix_web::rt::task::spawn_blocking(move || {
        let mut buf = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
        (&mut file).take(want).read_to_end(&mut buf)?;
        if (buf.len() as u64) < want {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while it was sent"));
        }
        Ok((file, buf))
    })
}

/// `remaining` bytes of `file` from where it stands. The next chunk is read while the current
/// one is being sent, so disk and socket work at once; at most two chunks are in memory. Each
/// chunk is counted in `sent` as it is yielded.
fn chunks(file: File, remaining: u64, sent: Counter) -> impl futures_util::Stream<Item = Result<Bytes, io::Error>> {
    let first = (remaining > 0).then(|| read_ahead(file, remaining.min(CHUNK)));
    let left = remaining - remaining.min(CHUNK);
    futures_util::stream::try_unfold((first, left, sent), |(pending, left, sent)| async move {
        let Some(pending) = pending else { return Ok(None) };
        let (file, buf) = pending.await.map_err(io::Error::other)??;
        let next = (left > 0).then(|| read_ahead(file, left.min(CHUNK)));
        sent.inc_by(buf.len() as u64);
        Ok(Some((Bytes::from(buf), (next, left - left.min(CHUNK), sent))))
    })
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn ask(headers: &[(&str, &str)]) -> Answer {
        let mut req = TestRequest::get();
        for (name, value) in headers {
            req = req.insert_header((*name, *value));
        }
        let tag = EntityTag::new_strong(ContentHash::of(b"file").etag());
        answer(&req.to_http_request(), Some(&tag), 1000)
    }

    #[test]
    fn conditions_and_ranges_follow_the_etag() {
        let tag = format!("\"{}\"", ContentHash::of(b"file").etag());
        let weak = format!("W/{tag}");
        assert_eq!(ask(&[]), Answer::Whole);
        assert_eq!(ask(&[("If-None-Match", &tag)]), Answer::NotModified);
        assert_eq!(ask(&[("If-None-Match", &weak)]), Answer::NotModified, "If-None-Match compares weakly");
        assert_eq!(ask(&[("If-None-Match", "*")]), Answer::NotModified);
        assert_eq!(ask(&[("If-None-Match", "\"other\"")]), Answer::Whole);
        assert_eq!(ask(&[("If-Match", "\"other\"")]), Answer::PreconditionFailed);
        assert_eq!(ask(&[("If-Match", &weak)]), Answer::PreconditionFailed, "If-Match compares strongly");
        assert_eq!(ask(&[("If-Match", &tag)]), Answer::Whole);
        assert_eq!(ask(&[("Range", "bytes=0-99")]), Answer::Part(0, 100));
        assert_eq!(ask(&[("Range", "bytes=900-")]), Answer::Part(900, 100));
        assert_eq!(ask(&[("Range", "bytes=-10")]), Answer::Part(990, 10));
        assert_eq!(ask(&[("Range", "bytes=100-"), ("If-Range", &tag)]), Answer::Part(100, 900));
        assert_eq!(ask(&[("Range", "bytes=100-"), ("If-Range", "\"other\"")]), Answer::Whole);
        assert_eq!(ask(&[("Range", "bytes=100-"), ("If-Range", "Wed, 21 Oct 2015 07:28:00 GMT")]), Answer::Whole);
        assert_eq!(ask(&[("Range", "bytes=0-1,5-6")]), Answer::Whole);
        assert_eq!(ask(&[("Range", "bytes=2000-")]), Answer::Unsatisfiable);
        assert_eq!(ask(&[("Range", "bytes=abc")]), Answer::Unsatisfiable);
        assert_eq!(ask(&[("Range", "lines=1-2")]), Answer::Whole, "an unknown unit is ignored");
    }

    #[test]
    fn the_stream_sends_and_counts_exactly_the_bytes_asked_for() {
        use futures_util::StreamExt;

        let bytes: Vec<u8> = (0..CHUNK * 2 + CHUNK / 2).map(|i| (i % 251) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.bin");
        std::fs::write(&path, &bytes).unwrap();
        let sent = Counter::default();
        for (start, length) in [(0, bytes.len() as u64), (CHUNK + 7, 1000), (5, 0)] {
            let before = sent.get();
            let mut file = File::open(&path).unwrap();
            file.seek(SeekFrom::Start(start)).unwrap();
            let got: Vec<u8> = actix_web::rt::System::new().block_on(async {
                let stream = chunks(file, length, sent.clone());
                stream.map(|c| c.unwrap().to_vec()).collect::<Vec<_>>().await.concat()
            });
            let range = usize::try_from(start).unwrap()..usize::try_from(start + length).unwrap();
            assert_eq!(got, bytes[range], "bytes {start}+{length}");
            assert_eq!(sent.get() - before, length, "counted for bytes {start}+{length}");
        }
    }
}
