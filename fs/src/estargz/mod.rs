//! eStargz: gzip members with a table of contents (TOC) at the end, located by a footer.
//!
//! So far this module reads the footer; the TOC and the writer come with the lazy layers.

mod footer;

pub use footer::{parse_footer, FOOTER_SIZE, LEGACY_FOOTER_SIZE};

/// Layer annotation holding the digest of the uncompressed TOC JSON.
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Layer annotation holding the uncompressed size of the layer.
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";
