//! What skiff's benchmarks share with its end-to-end tests: both build real Debian images with
//! debootstrap, from the mirror the machine's apt uses.

pub mod apt;
