//! skiff-fs: everything that turns an image's layers into files, without a network or a CLI.
//!
//! This crate owns the seams the rest of skiff plugs into. So far: [`Digest`], the content
//! address used everywhere, and [`BlobSource`], the random-access reader of one blob that the
//! registry client and local files implement.
#![forbid(unsafe_code)]

mod digest;
pub mod index;
pub mod estargz;
mod source;

pub use digest::{Digest, DigestError, Sha256Writer};
pub use source::{BlobSource, FileSource, SourceError};
