//! Reading an uncompressed tar stream entry by entry for the converter: each entry's header
//! blocks (including its PAX and GNU long-name extension headers) are kept byte for byte, so
//! the converted layer carries exactly the metadata of the input, and the metadata the TOC
//! needs is decoded from them.

use std::collections::BTreeMap;
use std::io::{self, Read};

use super::toc::{normalize_name, EntryKind, NameError};

const BLOCK: usize = 512;
/// PAX and GNU long-name payloads are names and xattrs; anything bigger is not a real layer.
const MAX_EXTENSION: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("reading the input tar at byte {at}")]
    Io {
        at: u64,
        #[source]
        source: io::Error,
    },
    #[error("the input tar ends inside the block at byte {at}")]
    Truncated { at: u64 },
    #[error("the tar header at byte {at} has a bad checksum")]
    Checksum { at: u64 },
    #[error("the tar header at byte {at} has a malformed {field} field")]
    Field { at: u64, field: &'static str },
    #[error("the extension header at byte {at} has a malformed PAX record")]
    Pax { at: u64 },
    #[error("the extension header at byte {at} holds {size} bytes, more than the {MAX_EXTENSION} allowed")]
    ExtensionTooLarge { at: u64, size: u64 },
    #[error("the extension headers at byte {at} describe no entry")]
    DanglingExtension { at: u64 },
    #[error("the {what} of the tar entry at byte {at} is not UTF-8: {lossy:?}")]
    NotUtf8 { at: u64, what: &'static str, lossy: String },
    #[error("tar entry {name:?}: {reason}")]
    Name { name: String, reason: NameError },
    #[error("tar entry {name:?} has type {typeflag:?}; only files, directories, links, devices and fifos are supported")]
    UnsupportedType { name: String, typeflag: char },
    #[error("tar entry {name:?} is a {kind} with {size} bytes of data")]
    UnexpectedData { name: String, kind: &'static str, size: u64 },
}

/// One entry of the input and the metadata decoded from its headers.
#[derive(Clone, Debug)]
pub struct TarEntry {
    /// Where `raw_header` starts in the input.
    pub header_offset: u64,
    /// The entry's header blocks, extension headers first, as they were in the input.
    pub raw_header: Vec<u8>,
    /// Normalized (see [`normalize_name`]).
    pub name: String,
    pub kind: EntryKind,
    /// Bytes of content following the header.
    pub size: u64,
    /// The header's mode field (permissions, setuid/setgid/sticky, sometimes type bits).
    pub mode: u64,
    pub uid: u64,
    pub gid: u64,
    pub user_name: String,
    pub group_name: String,
    pub mtime: i64,
    /// Symlinks: the target as written. Hardlinks: normalized.
    pub link_name: String,
    pub dev_major: u64,
    pub dev_minor: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// A tar stream being read: [`TarStream::next_entry`] yields headers, and reading from the
/// stream yields the current entry's content.
pub struct TarStream<R> {
    input: R,
    position: u64,
    /// Unread content of the current entry, then its padding.
    remaining: u64,
    padding: u64,
    /// `g` records apply to every later entry.
    global: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<R: Read> TarStream<R> {
    pub fn new(input: R) -> TarStream<R> {
        TarStream { input, position: 0, remaining: 0, padding: 0, global: Vec::new() }
    }

    /// The next entry, after skipping what is left of the current one; `None` at the end of
    /// the archive (a zero block or the end of the input).
    pub fn next_entry(&mut self) -> Result<Option<TarEntry>, TarError> {
        self.skip(self.remaining + self.padding)?;
        (self.remaining, self.padding) = (0, 0);
        let header_offset = self.position;
        let mut raw = Vec::new();
        let mut long_name = None;
        let mut long_link = None;
        let mut local: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        loop {
            let at = self.position;
            let Some(block) = self.read_block()? else {
                return if raw.is_empty() { Ok(None) } else { Err(TarError::DanglingExtension { at }) };
            };
            if block.iter().all(|&b| b == 0) {
                return if raw.is_empty() { Ok(None) } else { Err(TarError::DanglingExtension { at }) };
            }
            check_checksum(&block, at)?;
            raw.extend_from_slice(&block);
            let typeflag = block[156];
            if !matches!(typeflag, b'L' | b'K' | b'x' | b'g') {
                let head = Head { block: &block, at, long_name, long_link, local, global: &self.global };
                let entry = head.entry(header_offset, raw)?;
                self.remaining = entry.size;
                self.padding = padding(entry.size);
                return Ok(Some(entry));
            }
            let size = number(&block[124..136]).ok_or(TarError::Field { at, field: "size" })?;
            if size > MAX_EXTENSION {
                return Err(TarError::ExtensionTooLarge { at, size });
            }
            let mut data = vec![0u8; (size + padding(size)) as usize];
            self.read_exact(&mut data)?;
            raw.extend_from_slice(&data);
            data.truncate(size as usize);
            match typeflag {
                b'L' => long_name = Some(until_nul(&data).to_vec()),
                b'K' => long_link = Some(until_nul(&data).to_vec()),
                b'x' => local.extend(pax_records(&data).ok_or(TarError::Pax { at })?),
                _ => self.global.extend(pax_records(&data).ok_or(TarError::Pax { at })?),
            }
        }
    }

    fn read_block(&mut self) -> Result<Option<[u8; BLOCK]>, TarError> {
        let mut block = [0u8; BLOCK];
        let mut filled = 0;
        while filled < BLOCK {
            match self.input.read(&mut block[filled..]) {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => return Err(TarError::Truncated { at: self.position }),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(TarError::Io { at: self.position + filled as u64, source }),
            }
        }
        self.position += BLOCK as u64;
        Ok(Some(block))
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), TarError> {
        let at = self.position;
        self.input.read_exact(buf).map_err(|source| match source.kind() {
            io::ErrorKind::UnexpectedEof => TarError::Truncated { at },
            _ => TarError::Io { at, source },
        })?;
        self.position += buf.len() as u64;
        Ok(())
    }

    fn skip(&mut self, n: u64) -> Result<(), TarError> {
        let at = self.position;
        let copied = io::copy(&mut (&mut self.input).take(n), &mut io::sink())
            .map_err(|source| TarError::Io { at, source })?;
        self.position += copied;
        if copied < n {
            return Err(TarError::Truncated { at: self.position });
        }
        Ok(())
    }
}

/// Reads the current entry's content; returns 0 at its end.
impl<R: Read> Read for TarStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(self.remaining.min(usize::MAX as u64) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.input.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the input tar ends inside an entry"));
        }
        self.remaining -= n as u64;
        self.position += n as u64;
        Ok(n)
    }
}

/// The zero bytes that pad `size` bytes of content to a whole block.
pub fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// An entry's own header block with what its extension headers said.
struct Head<'a> {
    block: &'a [u8; BLOCK],
    at: u64,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    local: Vec<(Vec<u8>, Vec<u8>)>,
    global: &'a [(Vec<u8>, Vec<u8>)],
}

impl Head<'_> {
    /// The last PAX value of `key`, local records over global ones; an empty value unsets.
    fn pax(&self, key: &str) -> Option<&[u8]> {
        fn find<'r>(records: &'r [(Vec<u8>, Vec<u8>)], key: &str) -> Option<&'r [u8]> {
            records.iter().rev().find(|(k, _)| k == key.as_bytes()).map(|(_, v)| v.as_slice())
        }
        find(&self.local, key).or_else(|| find(self.global, key)).filter(|v| !v.is_empty())
    }

    fn pax_number(&self, key: &str) -> Result<Option<u64>, TarError> {
        match self.pax(key) {
            None => Ok(None),
            Some(v) => decimal(v).map(Some).ok_or(TarError::Pax { at: self.at }),
        }
    }

    fn field(&self, range: std::ops::Range<usize>, field: &'static str) -> Result<u64, TarError> {
        number(&self.block[range]).ok_or(TarError::Field { at: self.at, field })
    }

    fn text(&self, bytes: Vec<u8>, what: &'static str) -> Result<String, TarError> {
        String::from_utf8(bytes).map_err(|e| TarError::NotUtf8 {
            at: self.at,
            what,
            lossy: String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    fn entry(self, header_offset: u64, raw_header: Vec<u8>) -> Result<TarEntry, TarError> {
        let b = self.block;
        let ustar = &b[257..263] == b"ustar\0";
        let raw_name = match (self.pax("path"), &self.long_name) {
            (Some(p), _) => p.to_vec(),
            (None, Some(l)) => l.clone(),
            (None, None) if ustar && b[345] != 0 => {
                [until_nul(&b[345..500]), b"/", until_nul(&b[..100])].concat()
            }
            (None, None) => until_nul(&b[..100]).to_vec(),
        };
        let raw_name = self.text(raw_name, "name")?;
        let name =
            normalize_name(&raw_name).map_err(|reason| TarError::Name { name: raw_name.clone(), reason })?;
        let kind = match b[156] {
            0 if raw_name.ends_with('/') => EntryKind::Dir,
            0 | b'0' | b'7' => EntryKind::Reg,
            b'1' => EntryKind::Hardlink,
            b'2' => EntryKind::Symlink,
            b'3' => EntryKind::Char,
            b'4' => EntryKind::Block,
            b'5' => EntryKind::Dir,
            b'6' => EntryKind::Fifo,
            t => return Err(TarError::UnsupportedType { name: raw_name, typeflag: t as char }),
        };
        let size = match self.pax_number("size")? {
            Some(size) => size,
            None => self.field(124..136, "size")?,
        };
        if kind != EntryKind::Reg && size > 0 {
            return Err(TarError::UnexpectedData { name: raw_name, kind: kind.as_str(), size });
        }
        let link_name = match kind {
            EntryKind::Symlink | EntryKind::Hardlink => {
                let raw_link = match (self.pax("linkpath"), &self.long_link) {
                    (Some(p), _) => p.to_vec(),
                    (None, Some(l)) => l.clone(),
                    (None, None) => until_nul(&b[157..257]).to_vec(),
                };
                let link = self.text(raw_link, "link target")?;
                if kind == EntryKind::Hardlink {
                    normalize_name(&link).map_err(|reason| TarError::Name { name: link.clone(), reason })?
                } else {
                    link
                }
            }
            _ => String::new(),
        };
        let owner_name = |key: &str, range: std::ops::Range<usize>| {
            let bytes = self.pax(key).unwrap_or(if ustar || is_gnu(b) { until_nul(&b[range]) } else { b"" });
            String::from_utf8_lossy(bytes).into_owned()
        };
        let mtime = match self.pax("mtime") {
            Some(v) => pax_seconds(v).ok_or(TarError::Pax { at: self.at })?,
            None => signed_number(&b[136..148]).ok_or(TarError::Field { at: self.at, field: "mtime" })?,
        };
        let (dev_major, dev_minor) = if ustar || is_gnu(b) {
            (self.field(329..337, "devmajor")?, self.field(337..345, "devminor")?)
        } else {
            (0, 0)
        };
        let mut xattrs = BTreeMap::new();
        for (key, value) in self.global.iter().chain(&self.local) {
            if let Some(xattr) = key.strip_prefix(b"SCHILY.xattr.") {
                xattrs.insert(self.text(xattr.to_vec(), "xattr name")?, value.clone());
            }
        }
        Ok(TarEntry {
            header_offset,
            raw_header,
            name,
            kind,
            size,
            mode: self.field(100..108, "mode")?,
            uid: self.pax_number("uid")?.map_or_else(|| self.field(108..116, "uid"), Ok)?,
            gid: self.pax_number("gid")?.map_or_else(|| self.field(116..124, "gid"), Ok)?,
            user_name: owner_name("uname", 265..297),
            group_name: owner_name("gname", 297..329),
            mtime,
            link_name,
            dev_major,
            dev_minor,
            xattrs,
        })
    }
}

fn is_gnu(block: &[u8; BLOCK]) -> bool {
    &block[257..265] == b"ustar  \0"
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    bytes.iter().position(|&b| b == 0).map_or(bytes, |i| &bytes[..i])
}

/// The stored checksum must equal the sum of the header's bytes with the checksum field read
/// as spaces (unsigned, or signed as some old tars computed it).
fn check_checksum(block: &[u8; BLOCK], at: u64) -> Result<(), TarError> {
    let stored = number(&block[148..156]).ok_or(TarError::Field { at, field: "checksum" })?;
    let spaces = 8 * u64::from(b' ');
    let outside = || block[..148].iter().chain(&block[156..]).copied();
    let unsigned: u64 = outside().map(u64::from).sum::<u64>() + spaces;
    let signed: i64 = outside().map(|b| i64::from(b as i8)).sum::<i64>() + spaces as i64;
    if stored == unsigned || stored as i64 == signed {
        Ok(())
    } else {
        Err(TarError::Checksum { at })
    }
}

/// A numeric header field: octal text (NUL/space padded, empty = 0) or GNU base-256.
fn number(field: &[u8]) -> Option<u64> {
    match field.first() {
        Some(&first) if first & 0x80 != 0 && first != 0xff => field[1..]
            .iter()
            .try_fold(u64::from(first & 0x7f), |n, &b| n.checked_mul(256).map(|n| n | u64::from(b))),
        Some(0xff) => None,
        _ => {
            let text = std::str::from_utf8(until_nul(field)).ok()?.trim_matches(' ');
            if text.is_empty() {
                Some(0)
            } else {
                u64::from_str_radix(text, 8).ok()
            }
        }
    }
}

/// Like [`number`], allowing the negative base-256 form (mtimes before 1970).
fn signed_number(field: &[u8]) -> Option<i64> {
    if field.first() == Some(&0xff) {
        let magnitude = field.iter().try_fold(0i128, |n, &b| Some(n * 256 + i128::from(b)))?;
        let value = magnitude - (1i128 << (8 * field.len()));
        return i64::try_from(value).ok();
    }
    number(field).and_then(|n| i64::try_from(n).ok())
}

fn decimal(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// A PAX time (`-?seconds[.fraction]`), rounded to whole seconds like stargz-snapshotter.
fn pax_seconds(text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?;
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rounds_up = fraction.bytes().next().is_some_and(|b| b >= b'5');
    let magnitude = whole.parse::<i64>().ok()?.checked_add(i64::from(rounds_up))?;
    Some(if negative { -magnitude } else { magnitude })
}

/// PAX records (`<len> <key>=<value>\n`, where len counts the whole record). Values are
/// bytes and may hold newlines (xattr values do), so records are cut by their length.
fn pax_records(mut data: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut records = Vec::new();
    while let Some(&first) = data.first() {
        if first == 0 {
            break;
        }
        let space = data.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&data[..space]).ok()?.parse().ok()?;
        if len <= space + 1 || len > data.len() {
            return None;
        }
        let record = data[space + 1..len].strip_suffix(b"\n")?;
        let eq = record.iter().position(|&b| b == b'=')?;
        records.push((record[..eq].to_vec(), record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Some(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, value: &[u8]) -> Vec<u8> {
        let body = [b" ", key.as_bytes(), b"=", value, b"\n"].concat();
        let mut len = body.len() + 1;
        while len.to_string().len() + body.len() != len {
            len += 1;
        }
        [len.to_string().as_bytes(), &body].concat()
    }

    #[test]
    fn pax_records_are_cut_by_length_not_newlines() {
        let data = [record("path", "a/b".as_bytes()), record("SCHILY.xattr.user.bin", b"x\ny=z\n")].concat();
        let records = pax_records(&data).unwrap();
        assert_eq!(records[0], (b"path".to_vec(), b"a/b".to_vec()));
        assert_eq!(records[1], (b"SCHILY.xattr.user.bin".to_vec(), b"x\ny=z\n".to_vec()));
        assert!(pax_records(b"99 path=a\n").is_none());
        assert!(pax_records(b"8 path=a\n").is_none());
        assert_eq!(pax_records(b"9 path=a\n").unwrap(), [(b"path".to_vec(), b"a".to_vec())]);
    }

    #[test]
    fn numeric_fields_in_every_encoding() {
        assert_eq!(number(b"0000644\0"), Some(0o644));
        assert_eq!(number(b"  755 \0\0"), Some(0o755));
        assert_eq!(number(b"\0\0\0\0\0\0\0\0"), Some(0));
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]), Some(1 << 32));
        assert_eq!(number(b"12x45670"), None);
        assert_eq!(signed_number(&[0xff; 12]), Some(-1));
        assert_eq!(pax_seconds(b"1600000000.75"), Some(1_600_000_001));
        assert_eq!(pax_seconds(b"-12.2"), Some(-12));
        assert_eq!(pax_seconds(b"12.x"), None);
    }

    #[test]
    fn refuses_escaping_names_and_unsupported_types() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        h.as_old_mut().name[..8].copy_from_slice(b"../evil\0");
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        let err = TarStream::new(&b.into_inner().unwrap()[..]).next_entry().unwrap_err();
        assert!(err.to_string().contains("../evil"), "{err}");

        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::new(b'V'));
        h.set_path("volume").unwrap();
        h.set_size(0);
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        let err = TarStream::new(&b.into_inner().unwrap()[..]).next_entry().unwrap_err();
        assert!(matches!(err, TarError::UnsupportedType { typeflag: 'V', .. }), "{err}");
    }

    #[test]
    fn a_corrupt_header_is_refused_with_its_offset() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_path("a").unwrap();
        h.set_size(3);
        h.set_cksum();
        b.append(&h, &b"abc"[..]).unwrap();
        b.append(&h, &b"abc"[..]).unwrap();
        let mut bytes = b.into_inner().unwrap();
        bytes[1024 + 10] = b'!';
        let mut stream = TarStream::new(&bytes[..]);
        assert_eq!(stream.next_entry().unwrap().unwrap().name, "a");
        let err = stream.next_entry().unwrap_err();
        assert!(matches!(err, TarError::Checksum { at: 1024 }), "{err}");
    }
}
