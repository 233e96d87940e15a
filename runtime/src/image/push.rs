//! `push`: send a stored image to a registry. Blobs the destination has are skipped, blobs
//! in another repository of the same registry are mounted, local blobs are uploaded, and
//! blobs the store never downloaded (lazy pulls) are fetched from their source first.

use std::sync::Arc;

use skiff_fs::Digest;

use super::pull::download_blob;
use super::{ImageError, Progress};
use crate::manifest::{Descriptor, ImageManifest, Manifest};
use crate::reference::Reference;
use crate::registry::{Client, MountOutcome, UploadOptions};
use crate::store::{ImageRecord, Store};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushResult {
    pub digest: Option<Digest>,
    pub uploaded: usize,
    pub mounted: usize,
    pub skipped: usize,
}

/// One push in progress.
struct Pusher<'a> {
    client: &'a Arc<Client>,
    store: &'a Store,
    /// Where blobs missing from the store can be read.
    source: Reference,
    dest: &'a Reference,
    options: UploadOptions,
    progress: &'a dyn Progress,
    result: PushResult,
}

pub fn push(
    client: &Arc<Client>,
    store: &Store,
    record: &ImageRecord,
    dest: &Reference,
    options: UploadOptions,
    progress: &dyn Progress,
) -> Result<PushResult, ImageError> {
    let source =
        format!("{}@{}", record.source, record.manifest).parse().map_err(|e| ImageError::Invalid {
            what: format!("image {}", record.name),
            why: format!("its source repository is not a valid reference: {e}"),
        })?;
    let mut pusher = Pusher { client, store, source, dest, options, progress, result: PushResult::default() };

    let top_bytes = store.read(&record.digest)?;
    let what = format!("manifest {} of {}", record.digest, record.name);
    let top = Manifest::parse(&what, &top_bytes, None)?;
    let digest = match top {
        // An index goes up whole when the store has every manifest it lists (images built or
        // copied locally); a lazily pulled index has only this platform's, which goes alone.
        Manifest::Index { media_type, index } if index.manifests.iter().all(|m| store.has(&m.digest)) => {
            for child in &index.manifests {
                pusher.push_manifest(&dest.with_digest(child.digest), &child.digest)?;
            }
            client.put_manifest(dest, &top_bytes, &media_type)?
        }
        _ => pusher.push_manifest(dest, &record.manifest)?,
    };
    pusher.result.digest = Some(digest);
    Ok(pusher.result)
}

impl Pusher<'_> {
    /// Pushes the blobs of the stored image manifest `digest`, then the manifest as `target`.
    fn push_manifest(&mut self, target: &Reference, digest: &Digest) -> Result<Digest, ImageError> {
        let bytes = self.store.read(digest)?;
        let what = format!("manifest {digest}");
        let Manifest::Image { media_type, manifest } = Manifest::parse(&what, &bytes, None)? else {
            return Err(ImageError::Invalid { what, why: "an index inside an index".into() });
        };
        self.push_blobs(&manifest)?;
        Ok(self.client.put_manifest(target, &bytes, &media_type)?)
    }

    fn push_blobs(&mut self, manifest: &ImageManifest) -> Result<(), ImageError> {
        for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
            self.push_blob(desc)?;
        }
        Ok(())
    }

    fn push_blob(&mut self, desc: &Descriptor) -> Result<(), ImageError> {
        let (client, dest) = (self.client, self.dest);
        if client.blob_exists(dest, &desc.digest)?.is_some() {
            self.result.skipped += 1;
            return Ok(());
        }
        // A mount moves no bytes, so it beats even an upload from the store.
        let same_registry =
            self.source.registry() == dest.registry() && self.source.repository() != dest.repository();
        if same_registry
            && client.mount_blob(dest, &desc.digest, self.source.repository())? == MountOutcome::Mounted
        {
            self.result.mounted += 1;
            return Ok(());
        }
        if self.store.has(&desc.digest) {
            client.upload_blob(dest, &desc.digest, &self.store.path_of(&desc.digest), self.options)?;
            self.result.uploaded += 1;
            return Ok(());
        }
        // Not local and not mountable: fetch it from where the image came from, verified.
        let fetched = download_blob(client, self.store, &self.source, desc, self.progress)?;
        client.upload_blob(dest, &desc.digest, fetched.path(), self.options)?;
        self.result.uploaded += 1;
        Ok(())
    }
}
