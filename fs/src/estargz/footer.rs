//! The eStargz footer: an empty gzip member whose header's extra field carries the TOC offset.
//!
//! Current footer (51 bytes): extra field of 26 bytes holding one subfield `SG` of 22 bytes,
//! `%016x` of the TOC offset followed by `STARGZ`. Legacy stargz footer (47 bytes): the 22
//! bytes are the whole extra field, without a subfield header.

pub const FOOTER_SIZE: usize = 51;
pub const LEGACY_FOOTER_SIZE: usize = 47;

const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];
const FLAG_EXTRA: u8 = 0x04;
const MAGIC: &[u8] = b"STARGZ";

/// What a footer says: where the TOC's gzip member starts, and how long the footer itself is
/// (the TOC member ends where the footer begins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    pub toc_offset: u64,
    pub len: usize,
}

/// The TOC offset from the last bytes of a blob (pass at least the last 51 bytes; fewer
/// bytes can only match the legacy footer). `None` when the blob is not (e)stargz.
pub fn parse_footer(tail: &[u8]) -> Option<u64> {
    read_footer(tail).map(|f| f.toc_offset)
}

/// Like [`parse_footer`], also telling which footer generation matched.
pub fn read_footer(tail: &[u8]) -> Option<Footer> {
    if tail.len() >= FOOTER_SIZE {
        let footer = &tail[tail.len() - FOOTER_SIZE..];
        if header_ok(footer)
            && footer[10..12] == [26, 0]
            && &footer[12..14] == b"SG"
            && footer[14..16] == [22, 0]
        {
            if let Some(toc_offset) = payload_offset(&footer[16..38]) {
                return Some(Footer { toc_offset, len: FOOTER_SIZE });
            }
        }
    }
    if tail.len() >= LEGACY_FOOTER_SIZE {
        let footer = &tail[tail.len() - LEGACY_FOOTER_SIZE..];
        if header_ok(footer) && footer[10..12] == [22, 0] {
            let toc_offset = payload_offset(&footer[12..34])?;
            return Some(Footer { toc_offset, len: LEGACY_FOOTER_SIZE });
        }
    }
    None
}

/// The 51-byte footer pointing at a TOC member that starts at `toc_offset`: a gzip header
/// (no mtime, OS unknown) with the `SG` extra subfield, an empty stored deflate block, and the
/// CRC32 and length (both zero) of the empty content.
pub fn footer_bytes(toc_offset: u64) -> [u8; FOOTER_SIZE] {
    let mut f = [0u8; FOOTER_SIZE];
    f[..10].copy_from_slice(&[GZIP_MAGIC[0], GZIP_MAGIC[1], GZIP_MAGIC[2], FLAG_EXTRA, 0, 0, 0, 0, 0, 0xff]);
    f[10..16].copy_from_slice(&[26, 0, b'S', b'G', 22, 0]);
    f[16..38].copy_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    f[38..43].copy_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    f
}

fn header_ok(footer: &[u8]) -> bool {
    footer[..3] == GZIP_MAGIC && footer[3] & FLAG_EXTRA != 0
}

/// `%016x` + `STARGZ` → the offset.
fn payload_offset(payload: &[u8]) -> Option<u64> {
    if &payload[16..22] != MAGIC {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&payload[..16]).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A footer laid out byte by byte as the eStargz spec describes it.
    fn footer(offset: u64, legacy: bool) -> Vec<u8> {
        let mut f = vec![0x1f, 0x8b, 0x08, FLAG_EXTRA, 0, 0, 0, 0, 0, 0xff];
        let payload = format!("{offset:016x}STARGZ");
        if legacy {
            f.extend_from_slice(&[22, 0]);
        } else {
            f.extend_from_slice(&[26, 0, b'S', b'G', 22, 0]);
        }
        f.extend_from_slice(payload.as_bytes());
        // An empty deflate block, CRC32 and ISIZE of an empty member.
        f.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
        f
    }

    #[test]
    fn reads_both_footer_generations() {
        let f = footer(0x1234_5678, false);
        assert_eq!(f.len(), FOOTER_SIZE);
        let mut blob = vec![7u8; 100];
        blob.extend_from_slice(&f);
        assert_eq!(parse_footer(&blob), Some(0x1234_5678));

        let legacy = footer(99, true);
        assert_eq!(legacy.len(), LEGACY_FOOTER_SIZE);
        let mut blob = vec![0u8; 10];
        blob.extend_from_slice(&legacy);
        assert_eq!(parse_footer(&blob), Some(99));
    }

    #[test]
    fn written_footer_is_the_spec_layout_and_valid_gzip() {
        use std::io::Read;
        let f = footer_bytes(0xdead_beef);
        assert_eq!(f.to_vec(), footer(0xdead_beef, false));
        assert_eq!(read_footer(&f), Some(Footer { toc_offset: 0xdead_beef, len: FOOTER_SIZE }));
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&f[..]).read_to_end(&mut out).unwrap();
        assert!(out.is_empty());
        let legacy = footer(7, true);
        assert_eq!(read_footer(&legacy), Some(Footer { toc_offset: 7, len: LEGACY_FOOTER_SIZE }));
    }

    #[test]
    fn plain_gzip_is_not_stargz() {
        assert_eq!(parse_footer(&[0u8; 64]), None);
        let mut f = footer(5, false);
        f[32] = b'X';
        assert_eq!(parse_footer(&f), None);
        assert_eq!(parse_footer(&f[..20]), None);
    }
}
