//! Image references, parsed and normalized the way docker does it.
//!
//! `busybox` is `docker.io/library/busybox:latest`; `host:5000/a/b` names a registry by its
//! first component when that component has a `.` or a `:` or is `localhost`; a reference may
//! carry a tag, a digest, or both (the digest wins when pulling).

use std::fmt;
use std::str::FromStr;

use skiff_fs::Digest;

pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid reference format: {0:?} is empty")]
    Empty(String),
    #[error("invalid reference format: repository name in {0:?} must be lowercase")]
    Uppercase(String),
    #[error("invalid reference format: {reference:?}: {why}")]
    Malformed { reference: String, why: &'static str },
    #[error("invalid reference format: repository name in {0:?} is longer than 255 characters")]
    TooLong(String),
    #[error("invalid reference format: digest in {reference:?}: {source}")]
    Digest {
        reference: String,
        #[source]
        source: skiff_fs::DigestError,
    },
}

/// A fully qualified image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// The registry as users name it (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host (and port) to talk to: Docker Hub's API lives on another name.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The repository path inside the registry (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<Digest> {
        self.digest
    }

    /// What to ask the registry's manifest endpoint for: the digest if there is one, else the tag.
    pub fn manifest_selector(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference { tag: Some(tag.to_string()), digest: None, ..self.clone() }
    }

    /// The same repository pinned to `digest`, without a tag.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference { tag: None, digest: Some(digest), ..self.clone() }
    }

    /// The short form docker prints: `busybox:latest` for Docker Hub's library, else full.
    pub fn familiar_name(&self) -> String {
        if self.registry == DOCKER_HUB {
            if let Some(rest) = self.repository.strip_prefix("library/") {
                return rest.to_string();
            }
            return self.repository.clone();
        }
        self.name()
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Reference, ReferenceError> {
        let malformed = |why| ReferenceError::Malformed { reference: input.to_string(), why };
        if input.is_empty() {
            return Err(ReferenceError::Empty(input.to_string()));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => {
                let digest = d
                    .parse::<Digest>()
                    .map_err(|source| ReferenceError::Digest { reference: input.to_string(), source })?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        // A tag follows the last ':' that comes after the last '/'; earlier colons are ports.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(malformed("tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
            }
        }
        if name.is_empty() {
            return Err(ReferenceError::Empty(input.to_string()));
        }
        let (registry, repository) = split_registry(name);
        if let Some(registry) = registry {
            if !valid_domain(registry) {
                return Err(malformed("registry host is not a valid host[:port]"));
            }
        }
        if repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase(input.to_string()));
        }
        if !repository.split('/').all(valid_path_component) {
            return Err(malformed(
                "repository path components must be lowercase letters and digits separated by '.', '_', '__' or '-'",
            ));
        }
        let mut registry = registry.unwrap_or(DOCKER_HUB).to_string();
        if registry == "index.docker.io" {
            registry = DOCKER_HUB.to_string();
        }
        let mut repository = repository.to_string();
        if registry == DOCKER_HUB && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(ReferenceError::TooLong(input.to_string()));
        }
        let tag = match (tag, digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Reference { registry, repository, tag, digest })
    }
}

/// Splits `host[:port]/path` into its registry and path, by docker's rule.
fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    matches!(chars.next(), Some(c) if word(c))
        && tag.len() <= MAX_TAG_LEN
        && chars.all(|c| word(c) || c == '.' || c == '-')
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        let sep_start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[sep_start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
}

fn valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        // [ipv6]:port
        let Some((addr, after)) = rest.split_once(']') else { return false };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after.strip_prefix(':') {
            Some(port) => ("", Some(port)),
            None if after.is_empty() => ("", None),
            None => return false,
        }
    } else {
        match domain.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (domain, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    host.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    }) || host.is_empty() && domain.starts_with('[')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        s.parse::<Reference>().unwrap_or_else(|e| panic!("{s}: {e}")).to_string()
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalizes_like_docker() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("user/app:v1"), "docker.io/user/app:v1");
        assert_eq!(norm("index.docker.io/user/app"), "docker.io/user/app:latest");
        assert_eq!(norm("docker.io/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(norm("localhost:5000/a/b/c:t"), "localhost:5000/a/b/c:t");
        assert_eq!(norm("127.0.0.1:5000/app"), "127.0.0.1:5000/app:latest");
        assert_eq!(norm("quay.io/org/app_x.y-z__w"), "quay.io/org/app_x.y-z__w:latest");
        assert_eq!(norm("[::1]:5000/app:v2"), "[::1]:5000/app:v2");
        assert_eq!(norm(&format!("busybox@{D}")), format!("docker.io/library/busybox@{D}"));
        assert_eq!(norm(&format!("busybox:1@{D}")), format!("docker.io/library/busybox:1@{D}"));
    }

    #[test]
    fn parts_and_selectors() {
        let r: Reference = format!("reg.example:443/a/b:t@{D}").parse().unwrap();
        assert_eq!(r.registry(), "reg.example:443");
        assert_eq!(r.repository(), "a/b");
        assert_eq!(r.tag(), Some("t"));
        assert_eq!(r.manifest_selector(), D);
        let hub: Reference = "busybox".parse().unwrap();
        assert_eq!(hub.api_host(), "registry-1.docker.io");
        assert_eq!(hub.familiar_name(), "busybox");
        assert_eq!(hub.manifest_selector(), "latest");
    }

    #[test]
    fn rejects_invalid_references() {
        let bad = [
            "",
            "Busybox",
            "busybox:",
            "busybox:-tag",
            "a//b",
            "a/b/",
            "/a",
            "a..b",
            "a-",
            "-a",
            "host:port/app",
            "busybox@sha256:abc",
            "busybox@md5:abcd",
            "exa mple/app",
        ];
        for b in bad {
            assert!(b.parse::<Reference>().is_err(), "{b:?} accepted");
        }
        let long = format!("a/{}", "b".repeat(260));
        assert!(matches!(long.parse::<Reference>(), Err(ReferenceError::TooLong(_))));
        // An uppercase first component names a registry host, as in docker.
        assert_eq!(norm("Upper/app"), "Upper/app:latest");
        assert!(matches!("ex/Upper".parse::<Reference>(), Err(ReferenceError::Uppercase(_))));
    }
}
