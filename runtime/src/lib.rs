//! skiff: a lazy-pull container runtime.
//!
//! This library holds everything the `skiff` binary does: image references, the registry
//! client, the local image store, and pulling and pushing images. The filesystem side lives
//! in `skiff-fs`.
#![deny(unsafe_code)]

pub mod container;
pub mod image;
pub mod layers;
pub mod manifest;
pub mod mount;
pub mod mountinfo;
pub mod plan;
pub mod reference;
pub mod registry;
pub mod sandbox;
pub mod size;
pub mod store;
pub mod usage;

pub use reference::Reference;
pub use skiff_fs::Digest;
