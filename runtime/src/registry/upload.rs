//! Pushing: blob existence checks, cross-repository mounts, monolithic and chunked uploads,
//! and manifest pushes.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use reqwest::blocking::Body;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use reqwest::StatusCode;
use skiff_fs::Digest;

use super::{check_status, Access, Client, RegistryError};
use crate::reference::Reference;

/// How blobs are uploaded.
#[derive(Clone, Copy, Debug)]
pub struct UploadOptions {
    /// Blobs larger than this go up in PATCH chunks of this size; smaller ones in one PUT.
    pub chunk_size: u64,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions { chunk_size: 32 << 20 }
    }
}

/// What a cross-repository mount request did.
#[derive(Debug, PartialEq, Eq)]
pub enum MountOutcome {
    Mounted,
    /// The registry could not mount and opened an upload session instead.
    NotMounted,
}

impl Client {
    /// The blob's size if `reference`'s repository has it.
    pub fn blob_exists(&self, reference: &Reference, digest: &Digest) -> Result<Option<u64>, RegistryError> {
        let what = format!("blob {digest} of {}", reference.name());
        let repo = reference.repository();
        let resp = self.send(reference.registry(), Access::Pull(repo), &what, true, &|http, base| {
            http.head(format!("{base}/v2/{repo}/blobs/{digest}"))
        })?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = check_status(resp, &what, reference.registry())?;
        Ok(resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()))
    }

    /// Asks the registry to link a blob from repository `from` (same registry) into
    /// `reference`'s repository without uploading it.
    pub fn mount_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        from: &str,
    ) -> Result<MountOutcome, RegistryError> {
        let what = format!("mount of blob {digest} from {from} into {}", reference.name());
        let repo = reference.repository();
        let resp =
            self.send(reference.registry(), Access::Mount(repo, from), &what, false, &|http, base| {
                http.post(format!("{base}/v2/{repo}/blobs/uploads/"))
                    .query(&[("mount", digest.to_string().as_str()), ("from", from)])
                    .header(CONTENT_LENGTH, "0")
            })?;
        match resp.status() {
            StatusCode::CREATED => Ok(MountOutcome::Mounted),
            StatusCode::ACCEPTED => {
                // An upload session was opened; close it, the caller uploads afresh.
                if let Some(location) = location_of(&resp) {
                    let url = self.resolve_location(reference.registry(), &location)?;
                    let _ = self.send(reference.registry(), Access::Push(repo), &what, false, &|http, _| {
                        http.delete(&url)
                    });
                }
                Ok(MountOutcome::NotMounted)
            }
            _ => check_status(resp, &what, reference.registry()).map(|_| MountOutcome::NotMounted),
        }
    }

    /// Uploads the blob in file `path` (which must hash to `digest`) into `reference`'s
    /// repository. A failed upload is started over, up to the client's retry count.
    pub fn upload_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        path: &Path,
        options: UploadOptions,
    ) -> Result<(), RegistryError> {
        let mut attempt = 0;
        loop {
            match self.upload_once(reference, digest, path, options) {
                Err(e @ RegistryError::Request { .. }) | Err(e @ RegistryError::Status { .. })
                    if attempt < self.options.retries =>
                {
                    attempt += 1;
                    tracing::debug!(%digest, error = %e, attempt, "upload failed, starting over");
                    std::thread::sleep(self.backoff(attempt));
                }
                other => return other,
            }
        }
    }

    fn upload_once(
        &self,
        reference: &Reference,
        digest: &Digest,
        path: &Path,
        options: UploadOptions,
    ) -> Result<(), RegistryError> {
        let what = format!("upload of blob {digest} to {}", reference.name());
        let registry = reference.registry();
        let repo = reference.repository();
        let io = |source| RegistryError::Io { path: path.to_path_buf(), source };
        let size = std::fs::metadata(path).map_err(io)?.len();

        let resp = self.send(registry, Access::Push(repo), &what, false, &|http, base| {
            http.post(format!("{base}/v2/{repo}/blobs/uploads/")).header(CONTENT_LENGTH, "0")
        })?;
        let resp = check_status(resp, &what, registry)?;
        let mut location = self.session_location(&resp, &what, registry)?;

        if size > options.chunk_size {
            let mut start = 0;
            while start < size {
                let len = options.chunk_size.min(size - start);
                let url = location.clone();
                let body = read_chunk(path, start, len).map_err(io)?;
                let resp = self.send(registry, Access::Push(repo), &what, false, &|http, _| {
                    http.patch(&url)
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_RANGE, format!("{}-{}", start, start + len - 1))
                        .header(CONTENT_LENGTH, len)
                        .body(body.clone())
                })?;
                let resp = check_status(resp, &what, registry)?;
                location = self.session_location(&resp, &what, registry)?;
                start += len;
            }
            let url = with_digest(&location, digest);
            let resp = self.send(registry, Access::Push(repo), &what, false, &|http, _| {
                http.put(&url).header(CONTENT_LENGTH, "0")
            })?;
            check_status(resp, &what, registry)?;
        } else {
            let url = with_digest(&location, digest);
            File::open(path).map_err(io)?;
            let resp = self.send(registry, Access::Push(repo), &what, false, &|http, _| {
                let body = File::open(path).map(|f| Body::sized(f, size));
                http.put(&url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, size)
                    .body(body.unwrap_or_else(|_| Body::from(Vec::new())))
            })?;
            check_status(resp, &what, registry)?;
        }
        Ok(())
    }

    /// Pushes a manifest under `reference`'s tag (or digest); returns its digest, checked
    /// against what the registry computed.
    pub fn put_manifest(
        &self,
        reference: &Reference,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::of(bytes);
        let what = format!("push of manifest {digest} to {reference}");
        let registry = reference.registry();
        let repo = reference.repository();
        let selector = reference.tag().map_or_else(|| digest.to_string(), str::to_string);
        let resp = self.send(registry, Access::Push(repo), &what, true, &|http, base| {
            http.put(format!("{base}/v2/{repo}/manifests/{selector}"))
                .header(CONTENT_TYPE, media_type)
                .body(bytes.to_vec())
        })?;
        let resp = check_status(resp, &what, registry)?;
        if let Some(theirs) = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()) {
            if theirs != digest.to_string() {
                return Err(RegistryError::Protocol {
                    what,
                    why: format!("registry stored it as {theirs}, not {digest}"),
                });
            }
        }
        Ok(digest)
    }

    fn session_location(
        &self,
        resp: &reqwest::blocking::Response,
        what: &str,
        registry: &str,
    ) -> Result<String, RegistryError> {
        let location = location_of(resp).ok_or_else(|| RegistryError::Protocol {
            what: what.to_string(),
            why: "upload answer has no Location header".into(),
        })?;
        self.resolve_location(registry, &location)
    }

    /// Upload locations may be absolute URLs or paths on the registry.
    fn resolve_location(&self, registry: &str, location: &str) -> Result<String, RegistryError> {
        if location.starts_with("http://") || location.starts_with("https://") {
            return Ok(location.to_string());
        }
        Ok(format!("{}{}", self.base_url(registry)?, location))
    }
}

fn location_of(resp: &reqwest::blocking::Response) -> Option<String> {
    resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn with_digest(location: &str, digest: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={}", digest.to_string().replace(':', "%3A"))
}

fn read_chunk(path: &Path, start: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity(len as usize);
    file.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_appended_to_upload_locations() {
        let d = Digest::of(b"");
        let hex = d.hex();
        assert_eq!(
            with_digest("/v2/a/blobs/uploads/u", &d),
            format!("/v2/a/blobs/uploads/u?digest=sha256%3A{hex}")
        );
        assert_eq!(with_digest("/u?_state=x", &d), format!("/u?_state=x&digest=sha256%3A{hex}"));
    }
}
