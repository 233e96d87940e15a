//! One module per verb: parse its flags, call the library, add context to errors.

pub mod cache;
pub mod changes;
pub mod convert;
pub mod images;
pub mod inspect;
pub mod login;
pub mod mount;
pub mod pull;
pub mod push;
pub mod rmi;
pub mod tag;

/// Parses a user's image reference, with the error naming it.
pub fn parse_reference(input: &str) -> anyhow::Result<skiff::Reference> {
    Ok(input.parse::<skiff::Reference>()?)
}
