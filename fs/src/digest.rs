//! Content digests (`sha256:<64 hex>`): parsing, computing and verifying.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A sha256 content digest. Only sha256 is accepted: it is what every registry and image
/// format skiff reads uses, and a single algorithm keeps cache keys comparable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    Invalid(String),
    #[error("unsupported digest algorithm in {0:?}: only sha256 is supported")]
    Algorithm(String),
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// The digest whose sha256 bytes are `bytes` (as a hasher returns them).
    pub fn from_sha256(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    /// The 64 hex digits, without the `sha256:` prefix (the name of a content file).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Checks `bytes` against this digest.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        Digest::of(bytes) == *self
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Digest, DigestError> {
        let Some((algorithm, hex_part)) = s.split_once(':') else {
            return Err(DigestError::Invalid(s.to_string()));
        };
        if algorithm != "sha256" {
            if algorithm.is_empty() || hex_part.is_empty() {
                return Err(DigestError::Invalid(s.to_string()));
            }
            return Err(DigestError::Algorithm(s.to_string()));
        }
        // Lowercase hex only, as the OCI spec writes sha256 digests; checked while decoding
        // (a TOC holds thousands of these).
        let nibble = |b: u8| match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        };
        let hex_bytes = hex_part.as_bytes();
        if hex_bytes.len() != 64 {
            return Err(DigestError::Invalid(s.to_string()));
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex_bytes.chunks_exact(2)) {
            match (nibble(pair[0]), nibble(pair[1])) {
                (Some(high), Some(low)) => *byte = high << 4 | low,
                _ => return Err(DigestError::Invalid(s.to_string())),
            }
        }
        Ok(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `sha256:<hex>` in text formats (JSON); the 32 bytes in binary ones (a stored layer index).
impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        if d.is_human_readable() {
            d.deserialize_str(DigestText)
        } else {
            let bytes = <&[u8]>::deserialize(d)?;
            let bytes =
                bytes.try_into().map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"32 bytes"))?;
            Ok(Digest(bytes))
        }
    }
}

/// Parses `sha256:<hex>` from a string as the deserializer lends it (no copy).
struct DigestText;

impl serde::de::Visitor<'_> for DigestText {
    type Value = Digest;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a digest, sha256:<64 lowercase hex digits>")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Digest, E> {
        s.parse().map_err(E::custom)
    }
}

/// A writer that hashes and counts everything written through it, passing the bytes on to
/// `inner`. Used to verify blobs while they stream to disk.
pub struct Sha256Writer<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Sha256Writer<W> {
    pub fn new(inner: W) -> Self {
        Sha256Writer { inner, hasher: Sha256::new(), written: 0 }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The digest of everything written, and the inner writer.
    pub fn finish(self) -> (Digest, W) {
        (Digest(self.hasher.finalize().into()), self.inner)
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digest_of_empty_input_round_trips() {
        let d = Digest::of(b"");
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(EMPTY.parse::<Digest>().unwrap(), d);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{EMPTY}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        // An escaped character makes serde_json hand over a copy, not a borrow.
        assert_eq!(serde_json::from_str::<Digest>(&json.replacen('e', "\\u0065", 1)).unwrap(), d);
        assert!(d.matches(b""));
        assert!(!d.matches(b"x"));
    }

    #[test]
    fn rejects_malformed_digests() {
        let one_off = |at: usize, with: &str| format!("{}{with}{}", &EMPTY[..at], &EMPTY[at + 1..]);
        for bad in [
            "",
            "sha256:",
            "sha256:abc",
            "e3b0c442",
            &EMPTY.to_uppercase(),
            &one_off(7, "E"),
            &one_off(70, "g"),
            &format!("{EMPTY}0"),
            // 64 bytes, 63 characters.
            &format!("sha256:\u{e9}{}", "a".repeat(62)),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} accepted");
            let json = serde_json::to_string(bad).unwrap();
            assert!(serde_json::from_str::<Digest>(&json).is_err(), "{json} accepted");
        }
        let sha512 = format!("sha512:{}", "a".repeat(128));
        assert_eq!(sha512.parse::<Digest>(), Err(DigestError::Algorithm(sha512.clone())));
    }

    #[test]
    fn writer_hashes_what_passes_through() {
        let mut w = Sha256Writer::new(Vec::new());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        assert_eq!(w.written(), 11);
        let (d, inner) = w.finish();
        assert_eq!(inner, b"hello world");
        assert_eq!(d, Digest::of(b"hello world"));
    }
}
