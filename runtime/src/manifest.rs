//! Manifests and indexes: media types, parsing and validation, platform selection.
//!
//! Docker v2 schema 2 and OCI manifests share one shape, as do Docker manifest lists and OCI
//! indexes, so each pair parses into one type. Schema 1 is recognized only to be refused.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use skiff_fs::Digest;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const SCHEMA1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// Every manifest type skiff reads, in the order it prefers them (the `Accept` header).
pub const ACCEPTED: [&str; 4] = [OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// Registries refuse manifests over 4 MiB; a larger answer is not a manifest.
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{what} is not valid JSON: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{what} is a Docker image manifest v2 schema 1, which is deprecated and not supported; \
         push the image again with a current tool to convert it to schema 2 or OCI"
    )]
    Schema1 { what: String },
    #[error("{what} has unsupported media type {media_type:?}")]
    MediaType { what: String, media_type: String },
    #[error("{what} has schemaVersion {version}, expected 2")]
    SchemaVersion { what: String, version: u64 },
    #[error("{what} is invalid: {why}")]
    Invalid { what: String, why: String },
    #[error("{what} has no image for platform {platform}; it has: {available}")]
    NoPlatform { what: String, platform: String, available: String },
    #[error("invalid platform {0:?}: expected os/arch[/variant], for example linux/amd64")]
    PlatformSyntax(String),
}

/// A pointer to content: what it is, its digest and its size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// An image manifest: a config and layers (Docker schema 2 or OCI).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A list of manifests, one per platform (Docker manifest list or OCI index).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A parsed manifest of either kind, with the media type it was served as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Manifest {
    Image { media_type: String, manifest: Box<ImageManifest> },
    Index { media_type: String, index: ImageIndex },
}

impl Manifest {
    /// Parses `bytes`, served with `content_type`. `what` names the manifest in errors (the
    /// reference and digest).
    pub fn parse(what: &str, bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
        let json = |source| ManifestError::Json { what: what.to_string(), source };
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(json)?;
        let Some(object) = value.as_object() else {
            return Err(ManifestError::Invalid { what: what.to_string(), why: "not a JSON object".into() });
        };
        let version = object.get("schemaVersion").and_then(|v| v.as_u64());
        let body_type = object.get("mediaType").and_then(|v| v.as_str());
        let header_type = content_type.map(|c| c.split(';').next().unwrap_or("").trim());
        if version == Some(1) || [body_type, header_type].iter().flatten().any(|t| SCHEMA1.contains(t)) {
            return Err(ManifestError::Schema1 { what: what.to_string() });
        }
        if version != Some(2) {
            return Err(ManifestError::SchemaVersion {
                what: what.to_string(),
                version: version.unwrap_or(0),
            });
        }
        // The body's own mediaType wins; OCI allows leaving it out, then the header decides,
        // and a generic header leaves the shape of the document to decide.
        let media_type = match (body_type, header_type) {
            (Some(t), _) => t.to_string(),
            (None, Some(t)) if ACCEPTED.contains(&t) => t.to_string(),
            (None, _) if object.contains_key("manifests") => OCI_INDEX.to_string(),
            (None, _) if object.contains_key("layers") => OCI_MANIFEST.to_string(),
            (None, t) => {
                return Err(ManifestError::MediaType {
                    what: what.to_string(),
                    media_type: t.unwrap_or("(none)").to_string(),
                })
            }
        };
        match media_type.as_str() {
            DOCKER_MANIFEST | OCI_MANIFEST => {
                let manifest: Box<ImageManifest> = serde_json::from_value(value).map_err(json)?;
                manifest.validate(what)?;
                Ok(Manifest::Image { media_type, manifest })
            }
            DOCKER_MANIFEST_LIST | OCI_INDEX => {
                let index: ImageIndex = serde_json::from_value(value).map_err(json)?;
                Ok(Manifest::Index { media_type, index })
            }
            _ => Err(ManifestError::MediaType { what: what.to_string(), media_type }),
        }
    }

    pub fn media_type(&self) -> &str {
        match self {
            Manifest::Image { media_type, .. } | Manifest::Index { media_type, .. } => media_type,
        }
    }
}

impl ImageManifest {
    fn validate(&self, what: &str) -> Result<(), ManifestError> {
        let invalid = |why: String| ManifestError::Invalid { what: what.to_string(), why };
        let config_type = self.config.media_type.as_str();
        if ACCEPTED.contains(&config_type) || config_type.contains("layer") {
            return Err(invalid(format!("config has media type {config_type:?}, which is not a config")));
        }
        for layer in &self.layers {
            if ACCEPTED.contains(&layer.media_type.as_str()) {
                return Err(invalid(format!("layer {} has a manifest media type", layer.digest)));
            }
        }
        Ok(())
    }

    /// Compressed bytes of the config and every layer.
    pub fn total_size(&self) -> u64 {
        self.config.size + self.layers.iter().map(|l| l.size).sum::<u64>()
    }
}

impl ImageIndex {
    /// The manifest for `platform`; the most specific match wins.
    pub fn select(&self, what: &str, platform: &Platform) -> Result<&Descriptor, ManifestError> {
        self.manifests
            .iter()
            .filter(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
            .max_by_key(|d| d.platform.as_ref().map_or(0, |p| usize::from(p.variant == platform.variant)))
            .ok_or_else(|| ManifestError::NoPlatform {
                what: what.to_string(),
                platform: platform.to_string(),
                available: self
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// An OS/architecture pair, as in an index entry or `--platform os/arch[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(rename = "os.version", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
}

impl Platform {
    /// The platform this machine runs, named as Go names it (what image indexes use).
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "riscv64" => ("riscv64", None),
            "s390x" => ("s390x", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
            os_version: None,
        }
    }

    /// Whether an index entry's `candidate` platform can run where `self` is wanted. A wanted
    /// variant must match; arm64's default variant v8 matches an entry that names none.
    pub fn matches(&self, candidate: &Platform) -> bool {
        let normalize = |p: &Platform| match (p.architecture.as_str(), p.variant.as_deref()) {
            ("arm64", None) => Some("v8".to_string()),
            _ => p.variant.clone(),
        };
        self.os == candidate.os
            && self.architecture == candidate.architecture
            && (self.variant.is_none() || normalize(self) == normalize(candidate))
    }
}

impl FromStr for Platform {
    type Err = ManifestError;

    fn from_str(s: &str) -> Result<Platform, ManifestError> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok =
            |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| ok(p)) {
            return Err(ManifestError::PlatformSyntax(s.to_string()));
        }
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture: parts[1].to_ascii_lowercase(),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
            os_version: None,
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn image_json(media_type: Option<&str>) -> String {
        let mt = media_type.map(|m| format!(r#""mediaType":"{m}","#)).unwrap_or_default();
        format!(
            r#"{{"schemaVersion":2,{mt}"config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":10}},
               "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":20}}]}}"#,
            digest(1),
            digest(2)
        )
    }

    #[test]
    fn parses_image_manifests_with_or_without_media_type() {
        let m =
            Manifest::parse("m", image_json(Some(DOCKER_MANIFEST)).as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(m.media_type(), DOCKER_MANIFEST, "the body's media type wins");
        let m = Manifest::parse("m", image_json(None).as_bytes(), Some(OCI_MANIFEST)).unwrap();
        let Manifest::Image { manifest, .. } = m else { panic!("not an image") };
        assert_eq!(manifest.total_size(), 30);
        let m = Manifest::parse("m", image_json(None).as_bytes(), Some("application/json")).unwrap();
        assert_eq!(m.media_type(), OCI_MANIFEST);
    }

    #[test]
    fn refuses_schema1_wrong_types_and_garbage() {
        let s1 = r#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        assert!(matches!(Manifest::parse("m", s1.as_bytes(), None), Err(ManifestError::Schema1 { .. })));
        let bad = image_json(Some("text/html"));
        assert!(matches!(Manifest::parse("m", bad.as_bytes(), None), Err(ManifestError::MediaType { .. })));
        assert!(matches!(Manifest::parse("m", b"{not json", None), Err(ManifestError::Json { .. })));
        let no_layers = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}"}}"#);
        assert!(matches!(Manifest::parse("m", no_layers.as_bytes(), None), Err(ManifestError::Json { .. })));
        let bad_digest = image_json(None).replace(&digest(2), "sha256:zz");
        assert!(Manifest::parse("m", bad_digest.as_bytes(), None).is_err());
    }

    #[test]
    fn selects_platforms() {
        let entry = |n, arch: &str, variant: Option<&str>| {
            let v = variant.map(|v| format!(r#","variant":"{v}""#)).unwrap_or_default();
            format!(
                r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"{arch}"{v}}}}}"#,
                digest(n)
            )
        };
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{},{},{},{}]}}"#,
            entry(1, "amd64", None),
            entry(2, "arm", Some("v6")),
            entry(3, "arm", Some("v7")),
            entry(4, "arm64", None)
        );
        let Manifest::Index { index, .. } = Manifest::parse("i", json.as_bytes(), None).unwrap() else {
            panic!("not an index")
        };
        let pick = |p: &str| index.select("i", &p.parse().unwrap()).map(|d| d.digest.to_string());
        assert_eq!(pick("linux/amd64").unwrap(), digest(1));
        assert_eq!(pick("linux/arm/v7").unwrap(), digest(3));
        assert_eq!(pick("linux/arm64/v8").unwrap(), digest(4));
        let err = pick("linux/s390x").unwrap_err().to_string();
        assert!(err.contains("linux/arm/v6") && err.contains("linux/s390x"), "{err}");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux/amd64/v2/x".parse::<Platform>().is_err());
    }
}
