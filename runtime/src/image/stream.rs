//! Reading a layer front to back: fetched from the registry (or the store), checked against
//! its digest and size as it streams, decompressed by its media type, and the decompressed tar
//! checked against the config's diff_id. A mismatch surfaces as a read error at the end of
//! the stream, so no consumer can finish on corrupt data.

use std::fs::File;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};
use skiff_fs::Digest;

use super::{ImageError, LayerFormat};
use crate::manifest::Descriptor;
use crate::reference::Reference;
use crate::registry::Client;
use crate::store::Store;

/// A reader that hashes what passes and fails at the end if it is not `expected`.
pub struct Verifying<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    expected: Digest,
    size: Option<u64>,
    what: String,
}

impl<R: Read> Verifying<R> {
    pub fn new(inner: R, expected: Digest, size: Option<u64>, what: String) -> Verifying<R> {
        Verifying { inner, hasher: Sha256::new(), read: 0, expected, size, what }
    }
}

impl<R: Read> Read for Verifying<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        let over = self.size.is_some_and(|s| self.read > s);
        if over || (n == 0 && !buf.is_empty()) {
            if let Some(size) = self.size.filter(|s| *s != self.read) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: size mismatch: expected {size} bytes, got {}", self.what, self.read),
                ));
            }
            let actual = Digest::from_sha256(self.hasher.clone().finalize().into());
            if actual != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: content does not match its digest: expected {}, got {actual}",
                        self.what, self.expected
                    ),
                ));
            }
        }
        Ok(n)
    }
}

/// The uncompressed tar stream of a layer, verified against `desc` and `diff_id`.
pub fn open_layer(
    client: &Client,
    store: &Store,
    source: &Reference,
    desc: &Descriptor,
    diff_id: Digest,
) -> Result<Box<dyn Read + Send>, ImageError> {
    let what = format!("layer {} of {}", desc.digest, source.name());
    let raw: Box<dyn Read + Send> = if store.has(&desc.digest) {
        let path = store.path_of(&desc.digest);
        Box::new(File::open(&path).map_err(|source| crate::store::StoreError::Io { path, source })?)
    } else {
        Box::new(client.get_blob(source, &desc.digest, None)?)
    };
    let raw = Verifying::new(raw, desc.digest, Some(desc.size), what.clone());
    let tar: Box<dyn Read + Send> = match LayerFormat::declared(desc) {
        LayerFormat::Gzip | LayerFormat::Estargz { .. } => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        LayerFormat::Zstd | LayerFormat::ZstdChunked => Box::new(
            zstd::stream::read::Decoder::new(raw)
                .map_err(|e| ImageError::Invalid { what: what.clone(), why: format!("zstd: {e}") })?,
        ),
        LayerFormat::Uncompressed => Box::new(raw),
        LayerFormat::Unknown(mt) => {
            return Err(ImageError::Invalid { what, why: format!("unsupported layer media type {mt:?}") })
        }
    };
    Ok(Box::new(Verifying::new(tar, diff_id, None, format!("uncompressed {what} (diff_id)"))))
}
