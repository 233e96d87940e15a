//! What a dynamically linked ELF file will have the dynamic loader open: the libraries it
//! needs (`DT_NEEDED`) and where it says to look for them (`DT_RUNPATH`, else `DT_RPATH`),
//! read from its program headers and dynamic section. Every size and offset comes from the
//! file, so each is checked and bounded: a hostile file yields nothing, never a panic or a
//! large read.

use std::io;

/// The loader's view of one ELF file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Needs {
    /// `e_machine`: which multiarch directories the loader searches.
    pub machine: u16,
    /// The sonames of `DT_NEEDED`, in order.
    pub libraries: Vec<String>,
    /// The directories of `DT_RUNPATH` (else `DT_RPATH`), `$ORIGIN` unexpanded.
    pub search: Vec<String>,
}

pub(crate) const MAGIC: &[u8; 4] = b"\x7fELF";
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;
/// Bounds on what is read: real files stay far below them.
const MAX_HEADERS: usize = 128;
const MAX_DYNAMIC: u64 = 64 << 10;
const MAX_STRINGS: u64 = 1 << 20;
const MAX_NEEDED: usize = 256;

/// The needs of the ELF file `read_at` reads (exactly the bytes asked, at an offset);
/// `None` for anything but a 64-bit little-endian ELF file with a dynamic section, or one
/// whose headers do not hold together.
pub(crate) fn needs(read_at: &dyn Fn(u64, &mut [u8]) -> io::Result<()>) -> Option<Needs> {
    let mut header = [0u8; 64];
    read_at(0, &mut header).ok()?;
    // 64-bit (class 2), little-endian (data 1).
    if &header[..4] != MAGIC || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let machine = u16_at(&header, 18);
    let (phoff, phentsize, phnum) = (u64_at(&header, 32), u16_at(&header, 54), u16_at(&header, 56) as usize);
    if phentsize != 56 || phnum == 0 || phnum > MAX_HEADERS {
        return None;
    }
    let mut table = vec![0u8; phnum * 56];
    read_at(phoff, &mut table).ok()?;
    let mut loads = Vec::new();
    let mut dynamic = None;
    for ph in table.chunks_exact(56) {
        let (offset, vaddr, filesz) = (u64_at(ph, 8), u64_at(ph, 16), u64_at(ph, 32));
        match u32_at(ph, 0) {
            PT_LOAD => loads.push((offset, vaddr, filesz)),
            PT_DYNAMIC => dynamic = Some((offset, filesz.min(MAX_DYNAMIC))),
            _ => {}
        }
    }
    let (offset, size) = dynamic?;
    let mut entries = vec![0u8; (size as usize) / 16 * 16];
    read_at(offset, &mut entries).ok()?;
    let (mut needed, mut strtab, mut strsz, mut rpath, mut runpath) = (Vec::new(), None, None, None, None);
    for entry in entries.chunks_exact(16) {
        let (tag, value) = (u64_at(entry, 0), u64_at(entry, 8));
        match tag {
            DT_NULL => break,
            DT_NEEDED if needed.len() < MAX_NEEDED => needed.push(value),
            DT_STRTAB => strtab = Some(value),
            DT_STRSZ => strsz = Some(value.min(MAX_STRINGS)),
            DT_RPATH => rpath = Some(value),
            DT_RUNPATH => runpath = Some(value),
            _ => {}
        }
    }
    // The string table is named by its address once loaded: back to a file offset.
    let (strtab, strsz) = (strtab?, strsz?);
    let file_offset = loads
        .iter()
        .find(|&&(_, vaddr, filesz)| strtab >= vaddr && strtab - vaddr < filesz)
        .map(|&(offset, vaddr, _)| offset.checked_add(strtab - vaddr))??;
    let mut strings = vec![0u8; strsz as usize];
    read_at(file_offset, &mut strings).ok()?;
    let string = |at: u64| -> Option<String> {
        let tail = strings.get(at as usize..)?;
        let end = tail.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&tail[..end]).ok().filter(|s| !s.is_empty()).map(str::to_owned)
    };
    let search = runpath.or(rpath).and_then(string);
    Some(Needs {
        machine,
        libraries: needed.into_iter().filter_map(string).collect(),
        search: search
            .map(|s| s.split(':').filter(|d| !d.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default(),
    })
}

/// The directories the loader searches for `machine`'s libraries after the file's own,
/// as a Debian-style system lists them (multiarch first), relative to the root.
pub(crate) fn system_dirs(machine: u16) -> Vec<String> {
    let triplet = match machine {
        62 => Some("x86_64-linux-gnu"),
        183 => Some("aarch64-linux-gnu"),
        243 => Some("riscv64-linux-gnu"),
        21 => Some("powerpc64le-linux-gnu"),
        22 => Some("s390x-linux-gnu"),
        _ => None,
    };
    let mut dirs = Vec::new();
    if let Some(t) = triplet {
        dirs.extend([format!("lib/{t}"), format!("usr/lib/{t}")]);
    }
    dirs.extend(["lib64".to_string(), "usr/lib64".to_string(), "lib".to_string(), "usr/lib".to_string()]);
    dirs
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Test support: a minimal dynamically linked ELF file.
#[cfg(test)]
pub(crate) fn test_file(needed: &[&str], runpath: Option<&str>) -> Vec<u8> {
    // Layout: header (64), 2 program headers (112) at 64, strings at 0x200, dynamic at 0x400;
    // one PT_LOAD maps the whole file at address 0x10000.
    let base = 0x10000u64;
    let mut strings = vec![0u8];
    let mut offsets = Vec::new();
    for s in needed.iter().copied().chain(runpath) {
        offsets.push(strings.len() as u64);
        strings.extend_from_slice(s.as_bytes());
        strings.push(0);
    }
    let mut dynamic: Vec<(u64, u64)> = offsets[..needed.len()].iter().map(|&o| (DT_NEEDED, o)).collect();
    if runpath.is_some() {
        dynamic.push((DT_RUNPATH, offsets[needed.len()]));
    }
    dynamic.extend([(DT_STRTAB, base + 0x200), (DT_STRSZ, strings.len() as u64), (DT_NULL, 0)]);
    let mut file = vec![0u8; 0x400 + dynamic.len() * 16];
    file[..4].copy_from_slice(MAGIC);
    file[4] = 2;
    file[5] = 1;
    file[18..20].copy_from_slice(&62u16.to_le_bytes());
    file[32..40].copy_from_slice(&64u64.to_le_bytes());
    file[54..56].copy_from_slice(&56u16.to_le_bytes());
    file[56..58].copy_from_slice(&2u16.to_le_bytes());
    let len = file.len() as u64;
    for (i, (kind, offset, vaddr, size)) in
        [(PT_LOAD, 0u64, base, len), (PT_DYNAMIC, 0x400, base + 0x400, len - 0x400)].into_iter().enumerate()
    {
        let ph = &mut file[64 + i * 56..64 + (i + 1) * 56];
        ph[..4].copy_from_slice(&kind.to_le_bytes());
        ph[8..16].copy_from_slice(&offset.to_le_bytes());
        ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
        ph[32..40].copy_from_slice(&size.to_le_bytes());
    }
    file[0x200..0x200 + strings.len()].copy_from_slice(&strings);
    for (i, (tag, value)) in dynamic.into_iter().enumerate() {
        file[0x400 + i * 16..0x408 + i * 16].copy_from_slice(&tag.to_le_bytes());
        file[0x408 + i * 16..0x410 + i * 16].copy_from_slice(&value.to_le_bytes());
    }
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(file: &[u8]) -> impl Fn(u64, &mut [u8]) -> io::Result<()> + '_ {
        move |at, buf| {
            let at = usize::try_from(at).map_err(|_| io::ErrorKind::InvalidInput)?;
            let bytes =
                file.get(at..).and_then(|t| t.get(..buf.len())).ok_or(io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(bytes);
            Ok(())
        }
    }

    #[test]
    fn a_files_needed_libraries_and_run_path_are_read_from_its_dynamic_section() {
        let file = test_file(&["libfoo.so.1", "libc.so.6"], Some("$ORIGIN/../lib:/opt/x"));
        let needs = needs(&reader(&file)).unwrap();
        assert_eq!(needs.machine, 62);
        assert_eq!(needs.libraries, ["libfoo.so.1", "libc.so.6"]);
        assert_eq!(needs.search, ["$ORIGIN/../lib", "/opt/x"]);
        assert_eq!(system_dirs(62)[..2], ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"]);
    }

    #[test]
    fn anything_else_or_a_file_whose_headers_do_not_hold_together_needs_nothing() {
        assert_eq!(needs(&reader(b"#!/bin/sh\necho hello\n")), None);
        let good = test_file(&["libfoo.so.1"], None);
        assert_eq!(needs(&reader(&good[..100])), None, "cut short");
        let mut bad = good.clone();
        bad[56..58].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(needs(&reader(&bad)), None, "too many program headers");
        let mut bad = good.clone();
        bad[64 + 56 + 8..64 + 56 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(needs(&reader(&bad)), None, "a dynamic section past the end");
        let mut bad = good.clone();
        bad[0x408..0x410].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(needs(&reader(&bad)).unwrap().libraries, Vec::<String>::new(), "a name past the strings");
        let mut bad = good;
        bad[4] = 1;
        assert_eq!(needs(&reader(&bad)), None, "32-bit");
    }
}
