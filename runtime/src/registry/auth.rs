//! Registry authentication: `WWW-Authenticate` challenges, stored credentials (docker's
//! `config.json`, so `docker login` and `skiff login` share them) and bearer tokens.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;

use super::RegistryError;

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// Docker keeps Docker Hub's credentials under this historical key.
const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";
/// A token without `expires_in` is good for 60 s (the distribution token spec's default).
const DEFAULT_TOKEN_LIFETIME: u64 = 60;
/// Tokens are renewed this long before they expire, so a request never carries a stale one.
const TOKEN_MARGIN: Duration = Duration::from_secs(10);

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

impl Challenge {
    /// Parses the first challenge skiff can answer, or `None`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
        let params = parse_params(params);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Challenge::Basic),
            "bearer" => Some(Challenge::Bearer {
                realm: params.get("realm")?.clone(),
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
            }),
            _ => None,
        }
    }
}

/// `key="quoted, value",key2=token` → map; keys are lowercased.
fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if chars.next().is_none() {
            return out;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
}

/// A user name and password (or identity token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

/// docker's client config file: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

/// The registry a config.json `auths` key names: keys may carry a scheme and a path.
fn auth_key_registry(key: &str) -> &str {
    if key == DOCKER_HUB_AUTH_KEY || key == "index.docker.io" || key == "registry-1.docker.io" {
        return crate::reference::DOCKER_HUB;
    }
    let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

fn auth_key_for(registry: &str) -> String {
    if registry == crate::reference::DOCKER_HUB {
        DOCKER_HUB_AUTH_KEY.to_string()
    } else {
        registry.to_string()
    }
}

fn read_config(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>, RegistryError> {
    let io = |source| RegistryError::Io { path: path.to_path_buf(), source };
    match std::fs::read(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(Default::default()),
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::Config { path: path.to_path_buf(), why: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(io(e)),
    }
}

/// Looks up stored credentials for `registry` in the docker config at `path`.
pub fn stored_credentials(path: &Path, registry: &str) -> Result<Option<Credentials>, RegistryError> {
    let config = read_config(path)?;
    let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    for (key, entry) in auths {
        if auth_key_registry(key) != registry {
            continue;
        }
        let bad = |why: &str| RegistryError::Config {
            path: path.to_path_buf(),
            why: format!("auths entry {key:?}: {why}"),
        };
        if let Some(token) = entry.get("identitytoken").and_then(|t| t.as_str()) {
            return Ok(Some(Credentials { username: "<token>".into(), password: token.into() }));
        }
        let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) else {
            continue;
        };
        let decoded = BASE64.decode(auth.trim()).map_err(|_| bad("auth is not base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad("auth is not UTF-8"))?;
        let (user, pass) = decoded.split_once(':').ok_or_else(|| bad("auth is not user:password"))?;
        return Ok(Some(Credentials { username: user.into(), password: pass.into() }));
    }
    Ok(None)
}

/// Stores (or with `None`, removes) the credentials for `registry`, keeping everything else
/// in the file. Returns whether anything changed. The file is replaced atomically, mode 0600.
pub fn store_credentials(
    path: &Path,
    registry: &str,
    creds: Option<&Credentials>,
) -> Result<bool, RegistryError> {
    let io = |source| RegistryError::Io { path: path.to_path_buf(), source };
    let mut config = read_config(path)?;
    let auths =
        config.entry("auths").or_insert_with(|| serde_json::json!({})).as_object_mut().ok_or_else(|| {
            RegistryError::Config { path: path.to_path_buf(), why: "auths is not an object".into() }
        })?;
    let before = auths.len();
    auths.retain(|k, _| auth_key_registry(k) != registry);
    let mut changed = auths.len() != before;
    if let Some(c) = creds {
        let auth = BASE64.encode(format!("{}:{}", c.username, c.password));
        auths.insert(auth_key_for(registry), serde_json::json!({ "auth": auth }));
        changed = true;
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let bytes = serde_json::to_vec_pretty(&config).expect("a JSON map always serializes");
    crate::store::write_atomic(path, &bytes, 0o600).map_err(io)?;
    Ok(changed)
}

/// A bearer token and when to stop using it.
#[derive(Clone, Debug)]
pub struct Token {
    pub value: String,
    pub renew_at: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl Token {
    /// Reads a token server's answer.
    pub fn from_response(realm: &str, body: &[u8]) -> Result<Token, RegistryError> {
        let parsed: TokenResponse = serde_json::from_slice(body).map_err(|e| RegistryError::Auth {
            registry: realm.to_string(),
            why: format!("token server answered with invalid JSON: {e}"),
        })?;
        let value = parsed.token.or(parsed.access_token).filter(|t| !t.is_empty()).ok_or_else(|| {
            RegistryError::Auth {
                registry: realm.to_string(),
                why: "token server answered without a token".into(),
            }
        })?;
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(DEFAULT_TOKEN_LIFETIME).max(1));
        Ok(Token { value, renew_at: Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN) })
    }

    pub fn is_fresh(&self) -> bool {
        Instant::now() < self.renew_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull,push".into()),
            })
        );
        assert_eq!(Challenge::parse(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(
            Challenge::parse(r#"bearer realm=http://x/t, service = "a \"b\"""#),
            Some(Challenge::Bearer {
                realm: "http://x/t".into(),
                service: Some(r#"a "b""#.into()),
                scope: None
            })
        );
        assert_eq!(Challenge::parse("Bearer service=x"), None, "a bearer challenge needs a realm");
        assert_eq!(Challenge::parse("Negotiate"), None);
    }

    #[test]
    fn credentials_round_trip_through_docker_config_and_keep_other_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("config.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="}},"credsStore":"x"}"#,
        )
        .unwrap();
        let hub = stored_credentials(&path, "docker.io").unwrap().unwrap();
        assert_eq!((hub.username.as_str(), hub.password.as_str()), ("hub", "secret"));

        let creds = Credentials { username: "u".into(), password: "p:w".into() };
        assert!(store_credentials(&path, "127.0.0.1:5000", Some(&creds)).unwrap());
        assert_eq!(stored_credentials(&path, "127.0.0.1:5000").unwrap(), Some(creds));
        assert!(stored_credentials(&path, "docker.io").unwrap().is_some());
        let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(raw["credsStore"], "x");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        assert!(store_credentials(&path, "127.0.0.1:5000", None).unwrap());
        assert!(!store_credentials(&path, "127.0.0.1:5000", None).unwrap());
        assert_eq!(stored_credentials(&path, "127.0.0.1:5000").unwrap(), None);
    }

    #[test]
    fn malformed_config_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"auths":{"r.io":{"auth":"!!!"}}}"#).unwrap();
        let err = stored_credentials(&path, "r.io").unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains("base64"), "{err}");
    }

    #[test]
    fn token_responses() {
        let t = Token::from_response("r", br#"{"access_token":"abc","expires_in":300}"#).unwrap();
        assert_eq!(t.value, "abc");
        assert!(t.is_fresh());
        assert!(Token::from_response("r", br#"{"expires_in":300}"#).is_err());
        assert!(Token::from_response("r", b"<html>").is_err());
    }
}
