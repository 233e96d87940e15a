//! Which format a layer is in, from its media type and annotations (and, for gzip layers
//! without annotations, from the eStargz footer at the blob's end).

use std::fmt;

use skiff_fs::estargz::{parse_footer, FOOTER_SIZE, TOC_DIGEST_ANNOTATION, TOC_OFFSET_ANNOTATION};
use skiff_fs::{BlobSource, SourceError};

use crate::manifest::Descriptor;

pub const ZSTD_CHUNKED_MANIFEST_POSITION: &str = "io.github.containers.zstd-chunked.manifest-position";

/// Where an eStargz layer's table of contents starts, as `skiff convert` writes it beside the
/// TOC digest; an offset that does not parse is no hint at all.
pub fn toc_offset_hint(desc: &Descriptor) -> Option<u64> {
    desc.annotations.get(TOC_OFFSET_ANNOTATION)?.parse().ok()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerFormat {
    Uncompressed,
    Gzip,
    Zstd,
    /// eStargz; `annotated` says whether the TOC digest annotation is present.
    Estargz {
        annotated: bool,
    },
    ZstdChunked,
    Unknown(String),
}

impl LayerFormat {
    /// The format the descriptor declares, without reading the blob.
    pub fn declared(desc: &Descriptor) -> LayerFormat {
        let mt = desc.media_type.as_str();
        let compression = if mt.ends_with("+gzip") || mt.ends_with(".tar.gzip") {
            "gzip"
        } else if mt.ends_with("+zstd") || mt.ends_with(".tar.zstd") {
            "zstd"
        } else if mt.ends_with(".tar") || mt.ends_with(".rootfs.diff.tar") {
            "tar"
        } else {
            return LayerFormat::Unknown(mt.to_string());
        };
        match compression {
            "gzip" if desc.annotations.contains_key(TOC_DIGEST_ANNOTATION) => {
                LayerFormat::Estargz { annotated: true }
            }
            "gzip" => LayerFormat::Gzip,
            "zstd" if desc.annotations.contains_key(ZSTD_CHUNKED_MANIFEST_POSITION) => {
                LayerFormat::ZstdChunked
            }
            "zstd" => LayerFormat::Zstd,
            _ => LayerFormat::Uncompressed,
        }
    }

    /// The declared format, refined by reading the footer of a gzip layer that carries no
    /// eStargz annotation (such a layer is still eStargz if it ends with the footer).
    pub fn probe(desc: &Descriptor, blob: &dyn BlobSource) -> Result<LayerFormat, SourceError> {
        let declared = LayerFormat::declared(desc);
        if declared != LayerFormat::Gzip || blob.size() < FOOTER_SIZE as u64 {
            return Ok(declared);
        }
        let mut tail = [0u8; FOOTER_SIZE];
        blob.read_exact_at(blob.size() - FOOTER_SIZE as u64, &mut tail)?;
        Ok(match parse_footer(&tail) {
            Some(_) => LayerFormat::Estargz { annotated: false },
            None => LayerFormat::Gzip,
        })
    }
}

impl fmt::Display for LayerFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerFormat::Uncompressed => f.write_str("uncompressed"),
            LayerFormat::Gzip => f.write_str("gzip"),
            LayerFormat::Zstd => f.write_str("zstd"),
            LayerFormat::Estargz { annotated: true } => f.write_str("eStargz"),
            LayerFormat::Estargz { annotated: false } => {
                f.write_str("eStargz (no TOC digest annotation: the TOC cannot be verified)")
            }
            LayerFormat::ZstdChunked => f.write_str("zstd:chunked"),
            LayerFormat::Unknown(mt) => write!(f, "unknown ({mt})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(media_type: &str, annotation: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: skiff_fs::Digest::of(b""),
            size: 0,
            urls: None,
            annotations: annotation.map(|a| (a.to_string(), "x".to_string())).into_iter().collect(),
            platform: None,
        }
    }

    #[test]
    fn declared_formats() {
        let cases = [
            ("application/vnd.oci.image.layer.v1.tar+gzip", None, LayerFormat::Gzip),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", None, LayerFormat::Gzip),
            ("application/vnd.oci.image.layer.v1.tar", None, LayerFormat::Uncompressed),
            ("application/vnd.docker.image.rootfs.diff.tar", None, LayerFormat::Uncompressed),
            ("application/vnd.oci.image.layer.v1.tar+zstd", None, LayerFormat::Zstd),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Some(TOC_DIGEST_ANNOTATION),
                LayerFormat::Estargz { annotated: true },
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Some(ZSTD_CHUNKED_MANIFEST_POSITION),
                LayerFormat::ZstdChunked,
            ),
            ("application/x-foo", None, LayerFormat::Unknown("application/x-foo".into())),
        ];
        for (mt, ann, want) in cases {
            assert_eq!(LayerFormat::declared(&desc(mt, ann)), want, "{mt}");
        }
    }
}
