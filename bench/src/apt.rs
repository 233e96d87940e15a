//! The Debian mirror apt uses, read from its sources (one-line and deb822 formats).

use std::path::PathBuf;

/// The mirror of `suite` in the texts of apt source files, in order.
pub fn mirror_in(sources: &[String], suite: &str) -> Option<String> {
    let clean = |uri: &str| uri.trim_end_matches('/').to_string();
    for text in sources {
        // `deb [options] URI SUITE COMPONENTS…`
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().filter(|w| !w.starts_with('[')).collect();
            if words.len() >= 3 && words[0] == "deb" && words[2] == suite {
                return Some(clean(words[1]));
            }
        }
        // deb822 stanzas, separated by blank lines.
        for stanza in text.split("\n\n") {
            let field = |name: &str| stanza.lines().find_map(|l| l.strip_prefix(name).map(str::trim));
            let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) else { continue };
            let deb = field("Types:").is_none_or(|t| t.split_whitespace().any(|t| t == "deb"));
            if deb && suites.split_whitespace().any(|s| s == suite) {
                return uris.split_whitespace().next().map(clean);
            }
        }
    }
    None
}

/// The mirror this machine's apt uses for `suite`: `/etc/apt/sources.list`, then the
/// `.list` and `.sources` files of `/etc/apt/sources.list.d` in name order.
pub fn host_mirror(suite: &str) -> Option<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources"))
            .collect();
        more.sort();
        files.extend(more);
    }
    let texts: Vec<String> = files.iter().filter_map(|p| std::fs::read_to_string(p).ok()).collect();
    mirror_in(&texts, suite)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_from_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
                      URIs: http://deb.debian.org/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
                      Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n";
        let nodesource = "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n";
        assert_eq!(
            mirror_in(&[nodesource.into(), deb822.into()], "bookworm").as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let one_line = "# comment\ndeb [arch=amd64] http://mirror.example/debian/ bookworm main\n";
        assert_eq!(
            mirror_in(&[one_line.into()], "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(mirror_in(&["deb http://x/debian bullseye main\n".into()], "bookworm"), None);
        assert_eq!(mirror_in(&["deb http://x/debian cloud-sdk-bookworm main\n".into()], "bookworm"), None);
    }
}
