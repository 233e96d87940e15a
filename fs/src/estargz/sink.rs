//! The converter's output: a chain of gzip members, with the compressed offset of every
//! member start, and running digests of both the blob and the tar stream it decompresses to.

use std::io::{self, BufWriter, Write};

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::{Digest, Sha256Writer};

enum Output<W: Write> {
    Between(Sha256Writer<BufWriter<W>>),
    // Boxed: a deflate state is large, and the sink moves between the two often.
    InMember(Box<GzEncoder<Sha256Writer<BufWriter<W>>>>),
}

/// Writes uncompressed bytes into the current gzip member, opening one on the first write
/// after [`MemberSink::end_member`], so that no member is ever empty.
pub struct MemberSink<W: Write> {
    /// `None` only after an I/O error, when the conversion is abandoned.
    out: Option<Output<W>>,
    level: Compression,
    member_start: u64,
    member_len: u64,
    tar: Sha256Writer<io::Sink>,
}

/// What the sink wrote, once finished.
pub struct SinkTotals {
    pub blob_digest: Digest,
    pub compressed_size: u64,
    pub diff_id: Digest,
    pub uncompressed_size: u64,
}

fn abandoned() -> io::Error {
    io::Error::other("the output was abandoned after an earlier error")
}

impl<W: Write> MemberSink<W> {
    pub fn new(output: W, level: u32) -> MemberSink<W> {
        MemberSink {
            out: Some(Output::Between(Sha256Writer::new(BufWriter::with_capacity(1 << 20, output)))),
            level: Compression::new(level),
            member_start: 0,
            member_len: 0,
            tar: Sha256Writer::new(io::sink()),
        }
    }

    /// Where the next byte written will be: (compressed offset of its member, offset inside
    /// the decompressed member). With no member open that is the start of the next one.
    pub fn position(&self) -> (u64, u64) {
        match &self.out {
            Some(Output::Between(w)) => (w.written(), 0),
            _ => (self.member_start, self.member_len),
        }
    }

    /// Bytes written into the open member so far (0 when none is open).
    pub fn member_len(&self) -> u64 {
        self.position().1
    }

    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut encoder = match self.out.take().ok_or_else(abandoned)? {
            Output::InMember(encoder) => encoder,
            Output::Between(w) => {
                self.member_start = w.written();
                self.member_len = 0;
                Box::new(GzEncoder::new(w, self.level))
            }
        };
        encoder.write_all(bytes)?;
        self.out = Some(Output::InMember(encoder));
        self.tar.write_all(bytes)?;
        self.member_len += bytes.len() as u64;
        Ok(())
    }

    /// Closes the open member, if any; the next write starts a new one.
    pub fn end_member(&mut self) -> io::Result<()> {
        match self.out.take().ok_or_else(abandoned)? {
            Output::InMember(encoder) => self.out = Some(Output::Between((*encoder).finish()?)),
            between => self.out = Some(between),
        }
        self.member_len = 0;
        Ok(())
    }

    /// Closes the open member and appends `bytes` as they are (a complete gzip member that
    /// decompresses to nothing: the footer).
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.end_member()?;
        match &mut self.out {
            Some(Output::Between(w)) => w.write_all(bytes),
            _ => Err(abandoned()),
        }
    }

    pub fn finish(mut self) -> io::Result<SinkTotals> {
        self.end_member()?;
        let Some(Output::Between(w)) = self.out.take() else { return Err(abandoned()) };
        let compressed_size = w.written();
        let (blob_digest, mut inner) = w.finish();
        inner.flush()?;
        let uncompressed_size = self.tar.written();
        let (diff_id, _) = self.tar.finish();
        Ok(SinkTotals { blob_digest, compressed_size, diff_id, uncompressed_size })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use flate2::read::{GzDecoder, MultiGzDecoder};

    use super::*;

    #[test]
    fn members_start_where_the_previous_ended_and_concatenate() {
        let mut out = Vec::new();
        let mut sink = MemberSink::new(&mut out, 6);
        assert_eq!(sink.position(), (0, 0));
        sink.write(b"first ").unwrap();
        sink.write(b"member").unwrap();
        assert_eq!(sink.position(), (0, 12));
        sink.end_member().unwrap();
        sink.end_member().unwrap();
        let (second, inner) = sink.position();
        assert!(second > 0);
        assert_eq!(inner, 0);
        sink.write(b", second").unwrap();
        assert_eq!(sink.position(), (second, 8));
        let totals = sink.finish().unwrap();
        assert_eq!(totals.compressed_size, out.len() as u64);
        assert_eq!(totals.blob_digest, Digest::of(&out));
        assert_eq!(totals.uncompressed_size, 20);
        assert_eq!(totals.diff_id, Digest::of(b"first member, second"));

        let mut all = String::new();
        MultiGzDecoder::new(&out[..]).read_to_string(&mut all).unwrap();
        assert_eq!(all, "first member, second");
        let mut tail = String::new();
        GzDecoder::new(&out[second as usize..]).read_to_string(&mut tail).unwrap();
        assert_eq!(tail, ", second");
    }
}
