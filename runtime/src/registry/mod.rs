//! The registry client: the OCI distribution API over HTTP(S).
//!
//! One [`Client`] talks to any number of registries. Per registry it finds the scheme once
//! (HTTPS, or plain HTTP for insecure registries), remembers the auth challenge and caches
//! bearer tokens per scope. Every request goes through [`Client::send`], which answers auth
//! challenges and retries connection errors, 429 and 5xx answers with backoff.

mod auth;
mod blob;
mod upload;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client as Http, RequestBuilder, Response};
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use skiff_fs::{Digest, ShortestWait};

pub use auth::{docker_config_path, store_credentials, stored_credentials, Challenge, Credentials};
pub use blob::{FetchStats, RegistryBlob};
pub use upload::{MountOutcome, UploadOptions};

use crate::manifest::{Descriptor, ACCEPTED, MAX_MANIFEST_SIZE};
use crate::reference::Reference;
use auth::Token;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach registry {registry}: {detail}")]
    Connect { registry: String, detail: String },
    #[error("{what}: request failed: {source}")]
    Request {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what}: not found")]
    NotFound { what: String },
    #[error("{what}: access denied ({status}){message}; log in with `skiff login {registry}`")]
    Denied { what: String, registry: String, status: u16, message: String },
    #[error("{what}: registry answered {status}{message}")]
    Status { what: String, status: u16, message: String },
    #[error("authenticating to {registry}: {why}")]
    Auth { registry: String, why: String },
    #[error("{what}: content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { what: String, expected: Digest, actual: Digest },
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { what: String, expected: u64, actual: u64 },
    #[error("{what}: {why}")]
    Protocol { what: String, why: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Config { path: PathBuf, why: String },
}

/// How the client reaches registries.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Registries (`host[:port]`) reached over plain HTTP or HTTPS without verification.
    pub insecure_registries: Vec<String>,
    /// Treat 127.0.0.0/8, ::1 and `localhost` as insecure, as docker does.
    pub loopback_is_insecure: bool,
    /// Directories laid out like docker's `certs.d`: `<dir>/<host[:port]>/*.crt` are CAs.
    pub cert_dirs: Vec<PathBuf>,
    /// docker-style config.json holding credentials; `None` reads none.
    pub auth_file: Option<PathBuf>,
    /// Attempts after the first, for connection errors, 429 and 5xx.
    pub retries: u32,
    pub retry_delay: Duration,
    /// Longest wait for connecting, for headers and for each read of a body.
    pub timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure_registries: Vec::new(),
            loopback_is_insecure: true,
            cert_dirs: vec![PathBuf::from("/etc/docker/certs.d"), PathBuf::from("/etc/containers/certs.d")],
            auth_file: docker_config_path(),
            retries: 3,
            retry_delay: Duration::from_millis(200),
            timeout: Duration::from_secs(60),
        }
    }
}

/// What a request needs from the token server.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Access<'a> {
    Pull(&'a str),
    Push(&'a str),
    /// Push into the first repository, reading the blob from the second.
    Mount(&'a str, &'a str),
}

impl Access<'_> {
    fn scopes(&self) -> Vec<String> {
        match self {
            Access::Pull(r) => vec![format!("repository:{r}:pull")],
            Access::Push(r) => vec![format!("repository:{r}:pull,push")],
            Access::Mount(r, from) => {
                vec![format!("repository:{r}:pull,push"), format!("repository:{from}:pull")]
            }
        }
    }
}

/// Builds a request from the HTTP client and base URL of a registry (probing may build it
/// for each way of reaching the registry, side by side).
pub(crate) type Build<'a> = dyn Fn(&Http, &str) -> RequestBuilder + Sync + 'a;

/// One registry as reached: its base URL, how to authenticate, tokens held.
struct Endpoint {
    registry: String,
    base: String,
    http: Http,
    credentials: Option<Credentials>,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, Token>>,
    /// The shortest wait for an answer to begin of the caller's requests (a probe of its own,
    /// `GET /v2/`, is not one): how far the registry is.
    answered: ShortestWait,
}

impl Endpoint {
    /// Sends `request` (to this registry, or where it redirected), noting how long its answer
    /// took to begin.
    fn send(&self, request: RequestBuilder) -> reqwest::Result<Response> {
        let (resp, waited) = send_timed(request)?;
        self.answered.note(waited);
        Ok(resp)
    }
}

/// Sends `request`; returns the answer and how long it took to begin.
fn send_timed(request: RequestBuilder) -> reqwest::Result<(Response, Duration)> {
    let asked = Instant::now();
    request.send().map(|resp| (resp, asked.elapsed()))
}

pub struct Client {
    options: RegistryOptions,
    /// Built on first use: reading the system's trusted roots costs tens of milliseconds
    /// on a cold page cache, and an insecure registry never needs them.
    verified: OnceLock<Http>,
    unverified: OnceLock<Http>,
    /// The certificates of `options.cert_dirs`, read once.
    extra_roots: Vec<reqwest::Certificate>,
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
    probing: Mutex<()>,
    /// Tables of contents on their way, by layer digest (see [`Client::fetch_toc_ahead`]).
    tocs_ahead: Mutex<HashMap<Digest, TocAhead>>,
}

/// An eStargz layer's table of contents fetched ahead of the layer's opening: the blob it
/// comes from (whose stats count the fetch), the offset fetched from, and the fetch.
pub struct TocAhead {
    pub blob: Arc<RegistryBlob>,
    pub offset: u64,
    pub tail: std::thread::JoinHandle<Result<Option<Vec<u8>>, skiff_fs::estargz::ReadError>>,
}

/// A manifest as served: bytes, digest and the content type the registry gave.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub digest: Digest,
    pub content_type: Option<String>,
}

impl Client {
    pub fn new(options: RegistryOptions) -> Result<Client, RegistryError> {
        // Read now, so that a bad certificate file is reported before any request.
        let extra_roots = load_cert_dirs(&options)?;
        Ok(Client {
            options,
            verified: OnceLock::new(),
            unverified: OnceLock::new(),
            extra_roots,
            endpoints: Mutex::default(),
            probing: Mutex::default(),
            tocs_ahead: Mutex::default(),
        })
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    /// Whether `registry` may be reached without TLS verification.
    pub fn is_insecure(&self, registry: &str) -> bool {
        if self.options.insecure_registries.iter().any(|r| r == registry) {
            return true;
        }
        self.options.loopback_is_insecure && is_loopback(registry)
    }

    /// The URL this client uses for `registry` (`https://…` or `http://…`), probing once.
    pub fn base_url(&self, registry: &str) -> Result<String, RegistryError> {
        Ok(self.endpoint(registry)?.base.clone())
    }

    /// The shortest time a request to `registry` has waited for its answer to begin (see
    /// [`skiff_fs::BlobSource::delay`]); `None` before one has been answered.
    pub fn delay(&self, registry: &str) -> Option<Duration> {
        self.endpoints.lock().unwrap().get(registry)?.answered.get()
    }

    fn endpoint(&self, registry: &str) -> Result<Arc<Endpoint>, RegistryError> {
        Ok(self.endpoint_asking(registry, None)?.0)
    }

    /// The endpoint of `registry`, probing it the first time. Given `first` (a request that
    /// may be sent twice: a GET or HEAD), the probe is that request, sent without auth, and
    /// its answer comes back too; else the probe is `GET /v2/`. A pull's manifest request
    /// then costs no round trip of its own before it.
    fn endpoint_asking(
        &self,
        registry: &str,
        first: Option<&Build<'_>>,
    ) -> Result<(Arc<Endpoint>, Option<Response>), RegistryError> {
        if let Some(ep) = self.endpoints.lock().unwrap().get(registry) {
            return Ok((ep.clone(), None));
        }
        // One probe at a time: the layers of an image, opened in parallel, share the first.
        let _probing = self.probing.lock().unwrap();
        if let Some(ep) = self.endpoints.lock().unwrap().get(registry) {
            return Ok((ep.clone(), None));
        }
        let (ep, answer) = self.probe(registry, first)?;
        let ep = Arc::new(ep);
        self.endpoints.lock().unwrap().insert(registry.to_string(), ep.clone());
        Ok((ep, first.map(|_| answer)))
    }

    /// Finds how to reach `registry` by sending it `first` (else `GET /v2/`): over HTTPS;
    /// for an insecure registry, over HTTPS without verification, else plain HTTP. The two
    /// are asked side by side and HTTPS is taken when it answers: one after the other, a
    /// plain-HTTP registry would cost the round trips of a refused TLS handshake before its
    /// own. Returns the endpoint and the answer.
    fn probe(
        &self,
        registry: &str,
        first: Option<&Build<'_>>,
    ) -> Result<(Endpoint, Response), RegistryError> {
        let host = if registry == crate::reference::DOCKER_HUB { "registry-1.docker.io" } else { registry };
        // An insecure registry is reached as docker reaches one: HTTPS whatever its
        // certificate, else plain HTTP.
        let candidates = if self.is_insecure(registry) {
            let http = self.unverified()?;
            vec![(format!("https://{host}"), http.clone()), (format!("http://{host}"), http.clone())]
        } else {
            vec![(format!("https://{host}"), self.verified()?.clone())]
        };
        let credentials = match &self.options.auth_file {
            Some(path) => stored_credentials(path, registry)?,
            None => None,
        };
        let mut failures = Vec::new();
        for attempt in 0..=self.options.retries {
            if attempt > 0 {
                std::thread::sleep(self.backoff(attempt));
            }
            failures.clear();
            let answers = std::thread::scope(|s| {
                let asked: Vec<_> = candidates
                    .iter()
                    .map(|(base, http)| {
                        s.spawn(move || {
                            send_timed(match first {
                                Some(build) => build(http, base),
                                None => http.get(format!("{base}/v2/")),
                            })
                        })
                    })
                    .collect();
                asked.into_iter().map(|a| a.join().expect("a registry probe panicked")).collect::<Vec<_>>()
            });
            for ((base, http), answer) in candidates.iter().zip(answers) {
                match answer {
                    Ok((resp, waited)) => {
                        let challenge = challenge_of(resp.headers());
                        tracing::debug!(registry, base, status = %resp.status(), "registry probed");
                        let answered = ShortestWait::default();
                        // A request of the caller's, to be timed as the ones after it are; the
                        // wait includes connecting, which only makes it longer.
                        if first.is_some() {
                            answered.note(waited);
                        }
                        let ep = Endpoint {
                            registry: registry.to_string(),
                            base: base.clone(),
                            http: http.clone(),
                            credentials,
                            challenge: Mutex::new(challenge),
                            tokens: Mutex::default(),
                            answered,
                        };
                        return Ok((ep, resp));
                    }
                    Err(e) => failures.push(format!("{base}: {}", error_chain(&e))),
                }
            }
        }
        Err(RegistryError::Connect { registry: registry.to_string(), detail: failures.join("; ") })
    }

    fn verified(&self) -> Result<&Http, RegistryError> {
        if let Some(h) = self.verified.get() {
            return Ok(h);
        }
        let h = build_http(&self.options, &self.extra_roots, false)?;
        Ok(self.verified.get_or_init(|| h))
    }

    fn unverified(&self) -> Result<&Http, RegistryError> {
        if let Some(h) = self.unverified.get() {
            return Ok(h);
        }
        let h = build_http(&self.options, &self.extra_roots, true)?;
        Ok(self.unverified.get_or_init(|| h))
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.options.retry_delay * 2u32.saturating_pow(attempt.saturating_sub(1));
        let jitter = rand::random::<f64>() * 0.25;
        base.mul_f64(1.0 + jitter)
    }

    /// Sends a request to `registry`, built by `build` from the HTTP client and base URL, with
    /// auth for `access`. Answers one 401 by re-authenticating; retries connection errors, 429
    /// and 5xx when `idempotent`. Returns the response whatever its status otherwise.
    pub(crate) fn send(
        &self,
        registry: &str,
        access: Access<'_>,
        what: &str,
        idempotent: bool,
        build: &Build<'_>,
    ) -> Result<Response, RegistryError> {
        let (ep, mut probed) = self.endpoint_asking(registry, idempotent.then_some(build))?;
        let mut reauthenticated = false;
        let mut attempt = 0;
        loop {
            let answer = match probed.take() {
                Some(resp) => Ok(resp),
                None => {
                    let mut request = build(&ep.http, &ep.base);
                    if let Some(header) = self.authorization(&ep, access, false)? {
                        request = request.header(AUTHORIZATION, header);
                    }
                    ep.send(request)
                }
            };
            let retry_after = match answer {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !reauthenticated => {
                    reauthenticated = true;
                    let fresh = challenge_of(resp.headers());
                    if fresh.is_none() {
                        return Ok(resp);
                    }
                    *ep.challenge.lock().unwrap() = fresh;
                    self.authorization(&ep, access, true)?;
                    continue;
                }
                Ok(resp) if idempotent && is_retryable(resp.status()) && attempt < self.options.retries => {
                    tracing::debug!(what, status = %resp.status(), attempt, "retrying");
                    retry_after_of(resp.headers())
                }
                Ok(resp) => return Ok(resp),
                Err(e)
                    if idempotent && (e.is_connect() || e.is_timeout()) && attempt < self.options.retries =>
                {
                    tracing::debug!(what, error = %error_chain(&e), attempt, "retrying");
                    None
                }
                Err(source) => return Err(RegistryError::Request { what: what.to_string(), source }),
            };
            attempt += 1;
            std::thread::sleep(retry_after.unwrap_or_else(|| self.backoff(attempt)));
        }
    }

    /// The Authorization header for `access`, fetching a bearer token when needed.
    fn authorization(
        &self,
        ep: &Endpoint,
        access: Access<'_>,
        renew: bool,
    ) -> Result<Option<String>, RegistryError> {
        let challenge = ep.challenge.lock().unwrap().clone();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(ep.credentials.as_ref().map(basic_header)),
            Some(Challenge::Bearer { realm, service, .. }) => {
                let scopes = access.scopes();
                let key = scopes.join(" ");
                if !renew {
                    if let Some(t) = ep.tokens.lock().unwrap().get(&key).filter(|t| t.is_fresh()) {
                        return Ok(Some(format!("Bearer {}", t.value)));
                    }
                }
                let token =
                    self.fetch_token(ep, &realm, service.as_deref(), &scopes, ep.credentials.as_ref())?;
                let header = format!("Bearer {}", token.value);
                ep.tokens.lock().unwrap().insert(key, token);
                Ok(Some(header))
            }
        }
    }

    fn fetch_token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        credentials: Option<&Credentials>,
    ) -> Result<Token, RegistryError> {
        let auth_err = |why: String| RegistryError::Auth { registry: ep.registry.clone(), why };
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        for s in scopes {
            query.push(("scope", s));
        }
        let mut request = ep.http.get(realm).query(&query);
        if let Some(c) = credentials {
            request = request.header(AUTHORIZATION, basic_header(c));
        }
        let resp =
            request.send().map_err(|e| auth_err(format!("token server {realm}: {}", error_chain(&e))))?;
        let status = resp.status();
        let body =
            resp.bytes().map_err(|e| auth_err(format!("token server {realm}: {}", error_chain(&e))))?;
        if !status.is_success() {
            let why = match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "credentials were refused".to_string(),
                _ => format!("answered {status}"),
            };
            return Err(auth_err(format!("token server {realm}: {why}{}", error_message(&body))));
        }
        Token::from_response(&ep.registry, &body)
    }

    /// Checks `credentials` against `registry` without storing them (for `skiff login`).
    pub fn verify_credentials(&self, registry: &str, credentials: &Credentials) -> Result<(), RegistryError> {
        let ep = self.endpoint(registry)?;
        let challenge = ep.challenge.lock().unwrap().clone();
        let refused =
            || RegistryError::Auth { registry: registry.to_string(), why: "credentials were refused".into() };
        match challenge {
            None => Ok(()),
            Some(Challenge::Bearer { realm, service, .. }) => {
                self.fetch_token(&ep, &realm, service.as_deref(), &[], Some(credentials)).map(drop)
            }
            Some(Challenge::Basic) => {
                let what = format!("login to {registry}");
                let resp = ep
                    .http
                    .get(format!("{}/v2/", ep.base))
                    .header(AUTHORIZATION, basic_header(credentials))
                    .send()
                    .map_err(|source| RegistryError::Request { what, source })?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(refused())
                }
            }
        }
    }

    /// Fetches the manifest `reference` names (its digest, else its tag), verified against the
    /// reference's digest or, failing that, the registry's `Docker-Content-Digest`.
    pub fn get_manifest(&self, reference: &Reference) -> Result<FetchedManifest, RegistryError> {
        let what = format!("manifest {reference}");
        let repo = reference.repository();
        let selector = reference.manifest_selector();
        let resp = self.send(reference.registry(), Access::Pull(repo), &what, true, &|http, base| {
            http.get(format!("{base}/v2/{repo}/manifests/{selector}")).header(ACCEPT, ACCEPTED.join(", "))
        })?;
        let resp = check_status(resp, &what, reference.registry())?;
        let content_type =
            resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(|s| s.to_string());
        let header_digest =
            resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = read_limited(resp, &what, MAX_MANIFEST_SIZE as u64)?;
        let digest = Digest::of(&bytes);
        let expected = match (reference.digest(), header_digest) {
            (Some(d), _) => Some(d),
            (None, Some(h)) => Some(h.parse().map_err(|_| RegistryError::Protocol {
                what: what.clone(),
                why: format!("registry sent an invalid Docker-Content-Digest {h:?}"),
            })?),
            (None, None) => None,
        };
        if let Some(expected) = expected {
            if expected != digest {
                return Err(RegistryError::DigestMismatch { what, expected, actual: digest });
            }
        }
        Ok(FetchedManifest { bytes, digest, content_type })
    }

    /// Fetches a small blob (a config) whole, checking its size and digest.
    pub fn get_blob_bytes(
        &self,
        reference: &Reference,
        desc: &Descriptor,
        limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let what = format!("blob {} of {}", desc.digest, reference.name());
        if desc.size > limit {
            return Err(RegistryError::Protocol {
                what,
                why: format!(
                    "declared size {} is over the {limit}-byte limit for this kind of blob",
                    desc.size
                ),
            });
        }
        let resp = self.get_blob(reference, &desc.digest, None)?;
        let bytes = read_limited(resp, &what, desc.size)?;
        if bytes.len() as u64 != desc.size {
            return Err(RegistryError::SizeMismatch {
                what,
                expected: desc.size,
                actual: bytes.len() as u64,
            });
        }
        let actual = Digest::of(&bytes);
        if actual != desc.digest {
            return Err(RegistryError::DigestMismatch { what, expected: desc.digest, actual });
        }
        Ok(bytes)
    }

    /// Starts a GET of a blob, from byte `from` on when given (the response may still be a
    /// 200 with the whole blob if the server ignores ranges: check the status).
    pub fn get_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        from: Option<u64>,
    ) -> Result<Response, RegistryError> {
        let what = format!("blob {digest} of {}", reference.name());
        let repo = reference.repository();
        let resp = self.send(reference.registry(), Access::Pull(repo), &what, true, &|http, base| {
            let request = http.get(format!("{base}/v2/{repo}/blobs/{digest}"));
            match from {
                Some(offset) if offset > 0 => {
                    request.header(reqwest::header::RANGE, format!("bytes={offset}-"))
                }
                _ => request,
            }
        })?;
        check_status(resp, &what, reference.registry())
    }

    /// A random-access reader of one blob; it trusts `size` (from a verified manifest).
    pub fn blob_source(self: &Arc<Self>, reference: &Reference, digest: Digest, size: u64) -> RegistryBlob {
        RegistryBlob::new(self.clone(), reference.clone(), digest, size)
    }

    /// Starts fetching the table of contents of eStargz layer `desc` of `reference` from
    /// `offset` (its manifest's hint), in the background, for an opening of the layer in
    /// this process to take ([`Client::take_toc_ahead`]). A pull for a mount calls this as
    /// soon as it has the manifest, so the bytes travel while it fetches the config and
    /// stores the image, and while the container is made.
    pub fn fetch_toc_ahead(self: &Arc<Self>, reference: &Reference, desc: &Descriptor, offset: u64) {
        let blob = Arc::new(self.blob_source(reference, desc.digest, desc.size));
        let source = blob.clone();
        let spawned = std::thread::Builder::new()
            .name("skiff-toc".into())
            .spawn(move || skiff_fs::estargz::EstargzReader::fetch_tail(&*source, offset));
        // Without a thread, the layer's opening fetches it as it would have.
        if let Ok(tail) = spawned {
            self.tocs_ahead.lock().unwrap().insert(desc.digest, TocAhead { blob, offset, tail });
        }
    }

    /// The table of contents of layer `digest` on its way, if one was started.
    pub fn take_toc_ahead(&self, digest: &Digest) -> Option<TocAhead> {
        self.tocs_ahead.lock().unwrap().remove(digest)
    }

    /// The layers whose tables of contents were fetched ahead and not taken yet.
    pub fn tocs_ahead(&self) -> Vec<Digest> {
        self.tocs_ahead.lock().unwrap().keys().copied().collect()
    }
}

fn build_http(
    options: &RegistryOptions,
    extra_roots: &[reqwest::Certificate],
    accept_invalid_certs: bool,
) -> Result<Http, RegistryError> {
    let mut builder = Http::builder()
        .user_agent(concat!("skiff/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(options.timeout.min(Duration::from_secs(15)))
        .timeout(options.timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .danger_accept_invalid_certs(accept_invalid_certs)
        // A client that verifies nothing needs no trusted roots (and skips reading them).
        .tls_built_in_root_certs(!accept_invalid_certs);
    for cert in extra_roots {
        builder = builder.add_root_certificate(cert.clone());
    }
    builder
        .build()
        .map_err(|e| RegistryError::Config { path: PathBuf::from("(TLS setup)"), why: error_chain(&e) })
}

/// The extra trusted certificates: `*.crt` files in a directory per registry host under each
/// of `options.cert_dirs`, as docker's `certs.d`.
fn load_cert_dirs(options: &RegistryOptions) -> Result<Vec<reqwest::Certificate>, RegistryError> {
    let mut out = Vec::new();
    for dir in &options.cert_dirs {
        let Ok(hosts) = std::fs::read_dir(dir) else { continue };
        for host in hosts.flatten() {
            let Ok(files) = std::fs::read_dir(host.path()) else { continue };
            for file in files.flatten() {
                let path = file.path();
                if path.extension().is_some_and(|e| e == "crt") {
                    let pem = std::fs::read(&path)
                        .map_err(|source| RegistryError::Io { path: path.clone(), source })?;
                    let certs =
                        reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| RegistryError::Config {
                            path: path.clone(),
                            why: format!("not a PEM certificate: {e}"),
                        })?;
                    out.extend(certs);
                }
            }
        }
    }
    Ok(out)
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn challenge_of(headers: &HeaderMap) -> Option<Challenge> {
    headers.get_all(WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok()).find_map(Challenge::parse)
}

fn basic_header(c: &Credentials) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password))
    )
}

fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

fn retry_after_of(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(10)))
}

/// Maps a non-success status to an error naming `what`; passes success through.
pub(crate) fn check_status(resp: Response, what: &str, registry: &str) -> Result<Response, RegistryError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.bytes().unwrap_or_default();
    let message = error_message(&body);
    let what = what.to_string();
    Err(match status {
        StatusCode::NOT_FOUND => RegistryError::NotFound { what },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            RegistryError::Denied { what, registry: registry.to_string(), status: status.as_u16(), message }
        }
        _ => RegistryError::Status { what, status: status.as_u16(), message },
    })
}

/// The registry's error message from a distribution error body, as ": CODE: message".
fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(body) {
        let parts: Vec<String> = e
            .errors
            .iter()
            .map(|e| {
                [e.code.as_deref(), e.message.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(": ")
            })
            .collect();
        if !parts.is_empty() {
            return format!(": {}", parts.join("; "));
        }
    }
    String::new()
}

/// Reads a whole body, refusing more than `limit` bytes.
fn read_limited(resp: Response, what: &str, limit: u64) -> Result<Vec<u8>, RegistryError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    resp.take(limit + 1).read_to_end(&mut bytes).map_err(|e| RegistryError::Protocol {
        what: what.to_string(),
        why: format!("reading the body: {e}"),
    })?;
    if bytes.len() as u64 > limit {
        return Err(RegistryError::Protocol {
            what: what.to_string(),
            why: format!("body is larger than {limit} bytes"),
        });
    }
    Ok(bytes)
}

/// An error with its causes, for messages: reqwest's top-level text alone says little.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_recognized() {
        for r in ["localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000"] {
            assert!(is_loopback(r), "{r}");
        }
        for r in ["docker.io", "10.0.0.1:5000", "example.com:443", "[::2]:1"] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn distribution_error_bodies_become_messages() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(error_message(body), ": MANIFEST_UNKNOWN: manifest unknown");
        assert_eq!(error_message(b"<html>"), "");
    }

    #[test]
    fn scopes_per_access() {
        assert_eq!(Access::Pull("a/b").scopes(), ["repository:a/b:pull"]);
        assert_eq!(Access::Mount("a", "b").scopes(), ["repository:a:pull,push", "repository:b:pull"]);
    }
}
