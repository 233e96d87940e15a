//! `RegistryBlob`: HTTP range reads of one registry blob, the registry's `BlobSource`.
//!
//! The first range request goes to the registry; if it redirects to blob storage, later
//! ranges go straight to the final URL (no auth round trip), falling back to the registry
//! when that URL stops working (signed URLs expire). A server that answers a range request
//! with the whole blob (200) is handled by skipping to the range.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use reqwest::blocking::Response;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use skiff_fs::{BlobSource, Digest, SourceError};

use super::{check_status, Access, Client, RegistryError};
use crate::reference::Reference;

/// Bytes and requests fetched from the registry for one blob.
#[derive(Debug, Default)]
pub struct FetchStats {
    pub bytes: AtomicU64,
    pub requests: AtomicU64,
}

pub struct RegistryBlob {
    client: Arc<Client>,
    reference: Reference,
    digest: Digest,
    size: u64,
    /// Where the registry redirected the last range request to.
    location: Mutex<Option<String>>,
    stats: Arc<FetchStats>,
}

impl RegistryBlob {
    pub(super) fn new(client: Arc<Client>, reference: Reference, digest: Digest, size: u64) -> RegistryBlob {
        RegistryBlob { client, reference, digest, size, location: Mutex::new(None), stats: Arc::default() }
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }

    pub fn stats(&self) -> Arc<FetchStats> {
        self.stats.clone()
    }

    fn what(&self) -> String {
        format!("blob {} of {}", self.digest, self.reference.name())
    }

    /// One range request for `start..end`, to the remembered location or the registry.
    fn request_range(&self, start: u64, end: u64) -> Result<Response, RegistryError> {
        let range = format!("bytes={}-{}", start, end - 1);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let remembered = self.location.lock().unwrap().clone();
        if let Some(url) = remembered {
            let ep = self.client.endpoint(self.reference.registry())?;
            match ep.send(ep.http.get(&url).header(RANGE, &range)) {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    tracing::debug!(url, status = %resp.status(), "redirected blob URL stopped working")
                }
                Err(e) => tracing::debug!(url, error = %e, "redirected blob URL failed"),
            }
            *self.location.lock().unwrap() = None;
        }
        let what = self.what();
        let repo = self.reference.repository();
        let digest = self.digest;
        let requested =
            format!("{}/v2/{repo}/blobs/{digest}", self.client.base_url(self.reference.registry())?);
        let resp =
            self.client.send(self.reference.registry(), Access::Pull(repo), &what, true, &|http, _| {
                http.get(&requested).header(RANGE, &range)
            })?;
        let resp = check_status(resp, &what, self.reference.registry())?;
        if resp.url().as_str() != requested {
            *self.location.lock().unwrap() = Some(resp.url().to_string());
        }
        Ok(resp)
    }

    /// The body of a range request for `start..end`, positioned at `start`.
    fn open_range(&self, start: u64, end: u64) -> Result<Response, RegistryError> {
        let what = self.what();
        let mut resp = self.request_range(start, end)?;
        let protocol = |why: String| RegistryError::Protocol { what: what.clone(), why };
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let header = resp.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
                if parse_content_range_start(header) != Some(start) {
                    return Err(protocol(format!(
                        "asked for bytes {start}..{end}, got Content-Range {header:?}"
                    )));
                }
            }
            StatusCode::OK => {
                // The server ignored the range: skip to it in the whole body.
                let skipped = std::io::copy(&mut (&mut resp).take(start), &mut std::io::sink())
                    .map_err(|e| protocol(format!("reading the body: {e}")))?;
                if skipped < start {
                    return Err(RegistryError::SizeMismatch { what, expected: self.size, actual: skipped });
                }
            }
            other => return Err(protocol(format!("answered {other} to a range request"))),
        }
        Ok(resp)
    }

    fn read_range(&self, start: u64, buf: &mut [u8]) -> Result<(), RegistryError> {
        let end = start + buf.len() as u64;
        let mut body = Body { resp: self.open_range(start, end)?, stats: &self.stats };
        let mut done = 0;
        while done < buf.len() {
            match body.read(&mut buf[done..]) {
                Ok(0) => {
                    return Err(RegistryError::SizeMismatch {
                        what: self.what(),
                        expected: self.size,
                        actual: start + done as u64,
                    })
                }
                Ok(n) => done += n,
                Err(e) => {
                    let why = format!("reading bytes {start}..{end}: {e}");
                    return Err(RegistryError::Protocol { what: self.what(), why });
                }
            }
        }
        Ok(())
    }

    fn read_error(&self, start: u64, end: u64) -> impl FnOnce(RegistryError) -> SourceError + '_ {
        move |e| SourceError::Read { blob: self.what(), start, end, source: Box::new(e) }
    }
}

/// A range's body as it arrives, counted in the blob's stats.
struct Body<'a> {
    resp: Response,
    stats: &'a FetchStats,
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.resp.read(buf)?;
        self.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The first byte of `bytes START-END/TOTAL`.
fn parse_content_range_start(header: &str) -> Option<u64> {
    let rest = header.trim().strip_prefix("bytes ")?;
    rest.split('-').next()?.trim().parse().ok()
}

impl BlobSource for RegistryBlob {
    fn name(&self) -> String {
        self.what()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let len = buf.len().min((self.size - offset) as usize);
        self.read_range(offset, &mut buf[..len]).map_err(self.read_error(offset, offset + len as u64))?;
        Ok(len)
    }

    fn read_streamed(&self, start: u64, end: u64) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        if end > self.size || start > end {
            return Err(SourceError::OutOfRange { blob: self.what(), start, end, size: self.size });
        }
        let resp = self.open_range(start, end).map_err(self.read_error(start, end))?;
        Ok(Box::new(Body { resp, stats: &self.stats }.take(end - start)))
    }

    fn delay(&self) -> Option<std::time::Duration> {
        self.client.delay(self.reference.registry())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_start() {
        assert_eq!(parse_content_range_start("bytes 10-19/100"), Some(10));
        assert_eq!(parse_content_range_start("bytes 0-0/*"), Some(0));
        assert_eq!(parse_content_range_start("items 1-2/3"), None);
        assert_eq!(parse_content_range_start(""), None);
    }
}
