//! skiff-fs: everything that turns an image's layers into files, without a network or a CLI.
//!
//! This crate owns the seams the rest of skiff plugs into. So far: [`Digest`], the content
//! address used everywhere, and [`BlobSource`], the random-access reader of one blob that the
//! registry client and local files implement.
#![forbid(unsafe_code)]

mod cache;
mod digest;
pub mod estargz;
mod idmap;
pub mod index;
pub mod lazy;
mod source;
pub mod tarindex;
pub mod union;

pub use cache::{CacheError, CacheStats, ChunkCache, ChunkHandle, Claim};
pub use digest::{Digest, DigestError, Sha256Writer};
pub use idmap::{IdMap, IdRange, OVERFLOW_ID};
pub use source::{BlobSource, FileSource, ShortestWait, SourceError};
