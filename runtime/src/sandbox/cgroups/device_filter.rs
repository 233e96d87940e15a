//! Device access on cgroup v2, which has no `devices` controller: an eBPF program of type
//! `BPF_PROG_TYPE_CGROUP_DEVICE`, attached to the container's cgroup, that the kernel runs at
//! every open or mknod of a device node by a process in it. The program allows what the rules
//! allow (the v1 `devices.allow` syntax: `c 1:3 rwm`, `b *:* m`) and denies the rest, as the
//! v1 controller does after `devices.deny a`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// The kernel's `struct bpf_cgroup_dev_ctx`: `access_type` is the access (mknod 1, read 2,
/// write 4) shifted left 16 bits, or'ed with the node's type (block 1, char 2); then the
/// major and minor numbers.
const CTX_ACCESS_TYPE: i16 = 0;
const CTX_MAJOR: i16 = 4;
const CTX_MINOR: i16 = 8;

const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Programs of the cgroups above (systemd's, say) run too, and all must allow.
const BPF_F_ALLOW_MULTI: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("device rule {rule:?}: {why}")]
    Rule { rule: String, why: &'static str },
    #[error("loading the device filter into the kernel: {source}{log}")]
    Load { source: std::io::Error, log: String },
    #[error("opening cgroup {path}: {source}")]
    Open { path: std::path::PathBuf, source: std::io::Error },
    #[error("attaching the device filter to cgroup {path}: {source}")]
    Attach { path: std::path::PathBuf, source: std::io::Error },
}

/// One allow rule: `None` matches any type, major or minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    kind: Option<i32>,
    major: Option<u32>,
    minor: Option<u32>,
    /// The accesses allowed (mknod 1, read 2, write 4).
    access: i32,
}

impl std::str::FromStr for Rule {
    type Err = FilterError;

    /// `a` (everything), or `TYPE MAJOR:MINOR ACCESS` with `*` for any number.
    fn from_str(rule: &str) -> Result<Rule, FilterError> {
        let bad = |why| FilterError::Rule { rule: rule.to_string(), why };
        let words: Vec<&str> = rule.split_whitespace().collect();
        let (kind, numbers, access) = match words.as_slice() {
            ["a"] => {
                return Ok(Rule {
                    kind: None,
                    major: None,
                    minor: None,
                    access: ACC_MKNOD | ACC_READ | ACC_WRITE,
                })
            }
            [kind, numbers, access] => (*kind, *numbers, *access),
            _ => return Err(bad("expected `a` or `TYPE MAJOR:MINOR ACCESS`")),
        };
        let kind = match kind {
            "a" => None,
            "b" => Some(DEV_BLOCK),
            "c" => Some(DEV_CHAR),
            _ => return Err(bad("the type is a, b or c")),
        };
        let (major, minor) = numbers.split_once(':').ok_or_else(|| bad("expected MAJOR:MINOR"))?;
        let number = |n: &str| match n {
            "*" => Ok(None),
            n => n.parse().map(Some).map_err(|_| bad("a device number is a number or *")),
        };
        let mut bits = 0;
        for c in access.chars() {
            bits |= match c {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                _ => return Err(bad("the access is made of r, w and m")),
            };
        }
        Ok(Rule { kind, major: number(major)?, minor: number(minor)?, access: bits })
    }
}

/// One eBPF instruction, as the kernel reads it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u8,
    /// Destination register in the low 4 bits, source register in the high 4.
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: dst | (src << 4), off, imm }
}

// Opcodes: class | operation | source.
const LDX_MEM_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const ALU32_AND_K: u8 = 0x54; // dst &= imm (32 bits)
const ALU32_RSH_K: u8 = 0x74; // dst >>= imm (32 bits)
const ALU32_MOV_X: u8 = 0xbc; // dst = src (32 bits)
const ALU64_MOV_K: u8 = 0xb7; // dst = imm
const JMP_JNE_K: u8 = 0x55; // if dst != imm: pc += off
const JMP_JNE_X: u8 = 0x5d; // if dst != src: pc += off
const JMP_EXIT: u8 = 0x95;

/// The program: r2 = type, r3 = access, r4 = major, r5 = minor; then, for each rule, a block
/// that jumps past itself at the first mismatch and otherwise returns 1 (allowed); at the
/// end, 0 (denied).
fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut out = vec![
        insn(LDX_MEM_W, 2, 1, CTX_ACCESS_TYPE, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, CTX_ACCESS_TYPE, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, CTX_MAJOR, 0),
        insn(LDX_MEM_W, 5, 1, CTX_MINOR, 0),
    ];
    for rule in rules {
        let mut block = Vec::new();
        // Jumps are patched to the block's end once its length is known.
        if let Some(kind) = rule.kind {
            block.push(insn(JMP_JNE_K, 2, 0, 0, kind));
        }
        if rule.access != ACC_MKNOD | ACC_READ | ACC_WRITE {
            // Every access asked for must be allowed: (asked & allowed) == asked.
            block.push(insn(ALU32_MOV_X, 1, 3, 0, 0));
            block.push(insn(ALU32_AND_K, 1, 0, 0, rule.access));
            block.push(insn(JMP_JNE_X, 1, 3, 0, 0));
        }
        if let Some(major) = rule.major {
            block.push(insn(JMP_JNE_K, 4, 0, 0, major as i32));
        }
        if let Some(minor) = rule.minor {
            block.push(insn(JMP_JNE_K, 5, 0, 0, minor as i32));
        }
        block.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (pc, i) in block.iter_mut().enumerate() {
            if i.code == JMP_JNE_K || i.code == JMP_JNE_X {
                i.off = (len - pc - 1) as i16;
            }
        }
        out.extend(block);
    }
    out.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    out.push(insn(JMP_EXIT, 0, 0, 0, 0));
    out
}

/// `union bpf_attr` for BPF_PROG_LOAD, up to the fields skiff sets (the kernel takes a
/// shorter attr as zeros for the rest).
#[repr(C)]
#[derive(Default)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

#[allow(unsafe_code)]
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialized `union bpf_attr` prefix of the size passed, and
    // every pointer in it points at memory that outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Loads the program for `rules`; the kernel checks it first.
fn load(rules: &[Rule]) -> Result<OwnedFd, FilterError> {
    let insns = program(rules);
    let license = c"Apache-2.0";
    let mut attr = LoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..LoadAttr::default()
    };
    attr.prog_name[..12].copy_from_slice(b"skiff_device");
    let fd = match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => fd,
        Err(source) => {
            // Loaded again with the verifier's log, to say why it refused.
            let mut log = vec![0u8; 64 << 10];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &mut attr);
            let text =
                String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(0)]).into_owned();
            let log = if text.trim().is_empty() { String::new() } else { format!(" ({})", text.trim()) };
            return Err(FilterError::Load { source, log });
        }
    };
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    #[allow(unsafe_code)]
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    Ok(fd)
}

/// Allows the processes of cgroup `dir` (a cgroup2 directory) what `rules` allow of device
/// nodes, and nothing else. The program stays attached while the cgroup lives.
pub fn attach(dir: &Path, rules: &[Rule]) -> Result<(), FilterError> {
    let program = load(rules)?;
    let cgroup =
        std::fs::File::open(dir).map_err(|source| FilterError::Open { path: dir.to_path_buf(), source })?;
    let mut attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: program.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..AttachAttr::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr)
        .map_err(|source| FilterError::Attach { path: dir.to_path_buf(), source })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_as_the_v1_controller_takes_them() {
        assert_eq!(
            "c 1:3 rwm".parse::<Rule>().unwrap(),
            Rule { kind: Some(DEV_CHAR), major: Some(1), minor: Some(3), access: 7 }
        );
        assert_eq!(
            "b *:* m".parse::<Rule>().unwrap(),
            Rule { kind: Some(DEV_BLOCK), major: None, minor: None, access: ACC_MKNOD }
        );
        assert_eq!("a".parse::<Rule>().unwrap(), Rule { kind: None, major: None, minor: None, access: 7 });
        assert_eq!("c 136:* rw".parse::<Rule>().unwrap().minor, None);
        for bad in ["", "x 1:3 r", "c 1 r", "c 1:x r", "c 1:3 rx", "c 1:3"] {
            assert!(bad.parse::<Rule>().is_err(), "{bad:?}");
        }
    }

    /// Runs `program` as the kernel would on one access (an interpreter of the few opcodes
    /// it uses), so its logic is checked without loading it.
    fn run(program: &[Insn], kind: i32, access: i32, major: u32, minor: u32) -> u64 {
        let ctx = [((access << 16) | kind) as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0;
        loop {
            let i = program[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => r[dst] = u64::from(ctx[(i.off / 4) as usize]),
                ALU32_AND_K => r[dst] = u64::from(r[dst] as u32 & i.imm as u32),
                ALU32_RSH_K => r[dst] = u64::from((r[dst] as u32) >> i.imm),
                ALU32_MOV_X => r[dst] = u64::from(r[src] as u32),
                ALU64_MOV_K => r[dst] = i.imm as i64 as u64,
                JMP_JNE_K if r[dst] != i.imm as i64 as u64 => pc += i.off as usize,
                JMP_JNE_X if r[dst] != r[src] => pc += i.off as usize,
                JMP_JNE_K | JMP_JNE_X => {}
                JMP_EXIT => return r[0],
                other => panic!("opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn the_program_allows_what_the_rules_allow_and_nothing_else() {
        let rules: Vec<Rule> =
            ["c *:* m", "c 1:3 rwm", "c 136:* rw", "b 8:0 r"].iter().map(|r| r.parse().unwrap()).collect();
        let p = program(&rules);
        let rw = ACC_READ | ACC_WRITE;
        assert_eq!(run(&p, DEV_CHAR, rw, 1, 3), 1, "/dev/null");
        assert_eq!(run(&p, DEV_CHAR, ACC_MKNOD, 4, 4), 1, "mknod of any char device");
        assert_eq!(run(&p, DEV_CHAR, rw, 136, 7), 1, "a pty");
        assert_eq!(run(&p, DEV_CHAR, rw | ACC_MKNOD, 136, 7), 0, "mknod is not allowed on the ptys");
        assert_eq!(run(&p, DEV_CHAR, rw, 1, 5), 0, "/dev/zero is not allowed");
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 8, 0), 1, "reading sda");
        assert_eq!(run(&p, DEV_BLOCK, ACC_WRITE, 8, 0), 0, "writing sda");
        assert_eq!(run(&p, DEV_BLOCK, ACC_MKNOD, 8, 1), 0, "mknod of a block device");
        assert_eq!(run(&program(&[]), DEV_CHAR, ACC_READ, 1, 3), 0, "no rule: nothing");
        assert_eq!(run(&program(&["a".parse().unwrap()]), DEV_BLOCK, 7, 9, 9), 1, "a: everything");
    }
}
