//! The 并州行 platform protocol: envelope, signature, response classification, and a
//! client that signs every attempt afresh against a clock corrected from the platform's
//! `Date` header. See `shared/spec/platform-protocol.md` for the contract this follows.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use md5::{Digest, Md5};
use serde::Deserialize;

use crate::clock::Clock;
use crate::tls::load_ca_file;

use crate::config::{
    AuthCase, DataEncoding, DataEncodingSetting, PlatformConfig, Secret, TsUnit, TsUnitSetting,
};

/// How long the platform honours a request's `ts` (the spec: "a request older than 10 s is
/// rejected"). The uploader sizes its requests to arrive well inside it.
pub const TS_WINDOW: Duration = Duration::from_secs(10);

/// Most bytes of a platform answer that are read. The spec's answers are a few dozen bytes
/// (`{"code":"0","msg":"操作成功","data":""}`); a bigger one is a bad answer, and reading it
/// stops here, so a broken or hostile platform cannot fill the gateway's memory.
pub(crate) const MAX_ANSWER: usize = 64 * 1024;

/// The three commands the gateway sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    Heartbeat,
    ParkSpace,
    CarInOut,
}

impl Cmd {
    /// The `cmd` field.
    pub fn name(self) -> &'static str {
        match self {
            Cmd::Heartbeat => "heartbeat",
            Cmd::ParkSpace => "parkSpace",
            Cmd::CarInOut => "carInOut",
        }
    }
    /// The path appended to the base URL.
    pub fn path(self) -> &'static str {
        match self {
            Cmd::Heartbeat => "/park/heartbeat",
            Cmd::ParkSpace => "/dataSync/parkSpace",
            Cmd::CarInOut => "/dataSync/carInOut",
        }
    }
}

/// `auth = MD5(cmd + lotCode + ts + token)` as 32 hex characters.
pub(crate) fn sign(cmd: &str, lot_code: &str, ts: &str, token: &str, case: AuthCase) -> String {
    let mut h = Md5::new();
    h.update(cmd.as_bytes());
    h.update(lot_code.as_bytes());
    h.update(ts.as_bytes());
    h.update(token.as_bytes());
    let digest = h.finalize();
    match case {
        AuthCase::Lower => hex::encode(digest),
        AuthCase::Upper => hex::encode_upper(digest),
    }
}

/// How the gateway treats a platform answer (the spec's response table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `0` / `200`: delivered.
    Success,
    /// `1004`: data already exists (delivered if one record; split if a batch).
    Exists,
    /// `1501`/`1502`: a record is malformed: isolate and dead-letter it.
    Malformed,
    /// `2001`: business error: transient a few times, then like 1502.
    Business,
    /// `1003`, `1107`, `2000`, HTTP 5xx, other codes: retry with back-off.
    Transient,
    /// `1002`: signature/clock: re-sync and retry once; then a fault.
    AuthFailed,
    /// `1000`, `1001`, `1005`–`1008`, `1014`: configuration fault or gateway bug: keep data,
    /// long back-off, health error.
    Fault,
}

impl Verdict {
    /// The name `/metrics` uses as a request's `outcome`.
    pub fn as_label(self) -> &'static str {
        match self {
            Verdict::Success => "success",
            Verdict::Exists => "exists",
            Verdict::Malformed => "malformed",
            Verdict::Business => "business",
            Verdict::Transient => "transient",
            Verdict::AuthFailed => "auth_failed",
            Verdict::Fault => "fault",
        }
    }

    /// Classify a `code` (already a string).
    pub fn of_code(code: &str) -> Verdict {
        match code.trim() {
            "0" | "200" => Verdict::Success,
            "1004" => Verdict::Exists,
            "1501" | "1502" => Verdict::Malformed,
            "2001" => Verdict::Business,
            "1002" => Verdict::AuthFailed,
            "1000" | "1001" | "1005" | "1006" | "1007" | "1008" | "1014" => Verdict::Fault,
            _ => Verdict::Transient,
        }
    }
}

/// A parsed platform answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The `code`, as a string whatever its JSON type.
    pub code: String,
    /// The `msg`.
    pub msg: String,
    /// What it means for the gateway.
    pub verdict: Verdict,
    /// The `data` field as JSON text (empty when absent or `""`), cut to 200 characters.
    pub data: String,
}

impl Reply {
    /// An answer only a platform that checked our signature gives: anything but `1000` (no
    /// such lot), `1001` (no command) and `1002` (signature refused). Such an answer to a
    /// heartbeat proves the platform is reachable and takes our credentials.
    pub fn is_authenticated(&self) -> bool {
        !matches!(self.code.trim(), "1000" | "1001" | "1002")
    }

    /// Codes the spec's table lists for a command interface the spec does not describe
    /// (`1005` no newer command, `1007` the lot returned nothing, `1008` command not found,
    /// `1107` lot-side processing error): logged with their `data` at debug level and counted.
    pub fn is_command_code(&self) -> bool {
        matches!(self.code.trim(), "1005" | "1007" | "1008" | "1107")
    }
}

/// A request that got no platform answer to classify. All are transient.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// No connection: the request was never sent.
    #[error("cannot connect to the platform: {0}")]
    Connect(String),
    /// The connection failed while the request or its answer was under way: the platform
    /// may have stored it.
    #[error("connection to the platform failed: {0}")]
    Transport(String),
    /// The answer is longer than [`MAX_ANSWER`]: a bad answer (reading stopped there).
    #[error("answer is longer than {limit} bytes (HTTP {status}): not the platform's answer")]
    TooLarge { status: u16, limit: usize },
    #[error("HTTP {status}: {body}")]
    Http { status: u16, body: String },
    #[error("answer is not the platform's JSON (HTTP {status}): {body}")]
    NotJson { status: u16, body: String },
}

impl CallError {
    /// A short code for status and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Timeout(_) => "timeout",
            CallError::Connect(_) | CallError::Transport(_) => "transport",
            CallError::TooLarge { .. } => "answer_too_large",
            CallError::Http { .. } => "http",
            CallError::NotJson { .. } => "not_json",
        }
    }
    /// Whether the spec asks for the long back-off (HTTP 4xx, non-JSON answers).
    pub fn wants_long_backoff(&self) -> bool {
        match self {
            CallError::Http { status, .. } => (400..500).contains(status),
            CallError::NotJson { .. } | CallError::TooLarge { .. } => true,
            _ => false,
        }
    }
    /// Whether the platform may have received the whole request and stored it although no
    /// answer came back (a lost answer): a timeout or a connection that broke after it was
    /// made. Not when no connection was made, nor when an answer came.
    pub fn may_have_arrived(&self) -> bool {
        matches!(self, CallError::Timeout(_) | CallError::Transport(_))
    }
}

#[derive(Deserialize)]
struct RawReply {
    code: serde_json::Value,
    #[serde(default)]
    msg: serde_json::Value,
    #[serde(default)]
    data: serde_json::Value,
}

/// Parse a response body into a [`Reply`]. `None` if it is not the platform's JSON shape.
pub fn parse_reply(body: &[u8]) -> Option<Reply> {
    let raw: RawReply = serde_json::from_slice(body).ok()?;
    let code = match raw.code {
        serde_json::Value::String(s) => s,
        serde_json::Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let msg = match raw.msg {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    let data = match raw.data {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => truncate_chars(&s, 200),
        other => truncate_chars(&other.to_string(), 200),
    };
    let verdict = Verdict::of_code(&code);
    Some(Reply {
        code,
        msg,
        verdict,
        data,
    })
}

/// Cut a string to at most `n` characters, for logging bodies.
pub(crate) fn truncate_chars(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Called when `ts_unit = "auto"` settles on a unit, so it can be persisted.
pub(crate) type UnitListener = Arc<dyn Fn(TsUnit) + Send + Sync>;

/// Called when `data_encoding = "auto"` finds the encoding the platform accepts.
pub(crate) type EncodingListener = Arc<dyn Fn(DataEncoding) + Send + Sync>;

/// The platform client: one `reqwest::Client` for the process, signing every attempt.
pub struct Client {
    http: reqwest::Client,
    base: String,
    lot_code: String,
    token: Secret,
    auth_case: AuthCase,
    encoding_setting: DataEncodingSetting,
    /// The encoding in use: 0 = object, 1 = string.
    encoding: AtomicU8,
    /// With `auto`: the platform accepted a request with `data` in the encoding in use, so
    /// it is never probed again.
    encoding_confirmed: std::sync::atomic::AtomicBool,
    setting: TsUnitSetting,
    /// 0 = ms, 1 = s.
    unit: AtomicU8,
    timeout: Duration,
    ts_window: Duration,
    clock: Arc<Clock>,
    on_unit: Option<UnitListener>,
    on_encoding: Option<EncodingListener>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("lot_code", &self.lot_code)
            .field("token", &self.token)
            .field("unit", &self.unit())
            .field("data_encoding", &self.data_encoding())
            .finish_non_exhaustive()
    }
}

/// Errors building a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

impl Client {
    /// Build a client. `initial_unit` is a unit persisted by an earlier `auto` run, if any.
    pub fn new(
        cfg: &PlatformConfig,
        token: Secret,
        clock: Arc<Clock>,
        initial_unit: Option<TsUnit>,
    ) -> Result<Client, ClientError> {
        Self::with_remembered(cfg, token, clock, initial_unit, None)
    }

    /// [`Client::new`], also with a data encoding an earlier `auto` run settled on (it
    /// counts as confirmed).
    pub fn with_remembered(
        cfg: &PlatformConfig,
        token: Secret,
        clock: Arc<Clock>,
        initial_unit: Option<TsUnit>,
        initial_encoding: Option<DataEncoding>,
    ) -> Result<Client, ClientError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(cfg.request_timeout.min(Duration::from_secs(5)))
            .timeout(cfg.request_timeout)
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!("lotlink/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &cfg.ca_file {
            // A private CA: trust it alone, not the built-in web roots as well.
            builder = builder.tls_built_in_root_certs(false);
            for cert in load_ca_file(path).map_err(ClientError::Build)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        let unit = match cfg.ts_unit {
            TsUnitSetting::Fixed(u) => u,
            TsUnitSetting::Auto => initial_unit.unwrap_or(TsUnit::Ms),
        };
        let (encoding, confirmed) = match cfg.data_encoding {
            DataEncodingSetting::Fixed(e) => (e, true),
            DataEncodingSetting::Auto => match initial_encoding {
                Some(e) => (e, true),
                None => (DataEncoding::Object, false),
            },
        };
        Ok(Client {
            http,
            base: cfg.url.trim_end_matches('/').to_string(),
            lot_code: cfg.lot_code.clone(),
            token,
            auth_case: cfg.auth_case,
            encoding_setting: cfg.data_encoding,
            encoding: AtomicU8::new(encoding_code(encoding)),
            encoding_confirmed: std::sync::atomic::AtomicBool::new(confirmed),
            setting: cfg.ts_unit,
            unit: AtomicU8::new(unit_code(unit)),
            timeout: cfg.request_timeout,
            ts_window: TS_WINDOW,
            clock,
            on_unit: None,
            on_encoding: None,
        })
    }

    /// Be told when `data_encoding = "auto"` settles on an encoding.
    #[must_use]
    pub fn with_encoding_listener(mut self, l: EncodingListener) -> Self {
        self.on_encoding = Some(l);
        self
    }

    /// How long the platform honours a `ts` ([`TS_WINDOW`]; tests that scale time shorten it).
    #[must_use]
    pub fn with_ts_window(mut self, window: Duration) -> Self {
        self.ts_window = window;
        self
    }

    /// See [`Client::with_ts_window`].
    pub fn ts_window(&self) -> Duration {
        self.ts_window
    }

    /// The whole-request timeout.
    pub fn request_timeout(&self) -> Duration {
        self.timeout
    }

    /// The `data` encoding in use.
    pub fn data_encoding(&self) -> DataEncoding {
        if self.encoding.load(Ordering::Relaxed) == 1 {
            DataEncoding::String
        } else {
            DataEncoding::Object
        }
    }

    /// Be told when `auto` settles on a different unit.
    #[must_use]
    pub fn with_unit_listener(mut self, l: UnitListener) -> Self {
        self.on_unit = Some(l);
        self
    }

    /// The `ts` unit in use.
    pub fn unit(&self) -> TsUnit {
        if self.unit.load(Ordering::Relaxed) == 1 {
            TsUnit::S
        } else {
            TsUnit::Ms
        }
    }

    /// The corrected clock.
    pub fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    /// The lot code.
    pub fn lot_code(&self) -> &str {
        &self.lot_code
    }

    fn ts(&self, unit: TsUnit) -> String {
        let ms = self.clock.now_ms();
        match unit {
            TsUnit::Ms => ms.to_string(),
            TsUnit::S => ms.div_euclid(1000).to_string(),
        }
    }

    /// Build the envelope body for one attempt. `data` is the JSON text of the payload.
    pub fn envelope(&self, cmd: Cmd, data: Option<&str>, unit: TsUnit) -> String {
        self.envelope_in(cmd, data, unit, self.data_encoding())
    }

    fn envelope_in(
        &self,
        cmd: Cmd,
        data: Option<&str>,
        unit: TsUnit,
        encoding: DataEncoding,
    ) -> String {
        let ts = self.ts(unit);
        let auth = sign(
            cmd.name(),
            &self.lot_code,
            &ts,
            self.token.expose(),
            self.auth_case,
        );
        let mut body = String::with_capacity(data.map_or(0, str::len) + 160);
        body.push_str("{\"cmd\":");
        body.push_str(&json_str(cmd.name()));
        body.push_str(",\"lotCode\":");
        body.push_str(&json_str(&self.lot_code));
        body.push_str(",\"ts\":");
        body.push_str(&json_str(&ts));
        body.push_str(",\"auth\":");
        body.push_str(&json_str(&auth));
        if let Some(d) = data {
            body.push_str(",\"data\":");
            match encoding {
                DataEncoding::Object => body.push_str(d),
                DataEncoding::String => body.push_str(&json_str(d)),
            }
        }
        body.push('}');
        body
    }

    /// One attempt: sign with a fresh ts, post, learn the clock, parse the answer.
    /// One HTTP request, counted and timed for `/metrics`.
    async fn attempt(
        &self,
        cmd: Cmd,
        data: Option<&str>,
        unit: TsUnit,
        encoding: DataEncoding,
    ) -> Result<Reply, CallError> {
        let started = std::time::Instant::now();
        let r = self.attempt_untimed(cmd, data, unit, encoding).await;
        let outcome = match &r {
            Ok(reply) => reply.verdict.as_label(),
            Err(e) => e.kind(),
        };
        crate::telemetry::platform_request(cmd.name(), outcome, started.elapsed());
        r
    }

    async fn attempt_untimed(
        &self,
        cmd: Cmd,
        data: Option<&str>,
        unit: TsUnit,
        encoding: DataEncoding,
    ) -> Result<Reply, CallError> {
        let body = self.envelope_in(cmd, data, unit, encoding);
        let url = format!("{}{}", self.base, cmd.path());
        let resp = self
            .http
            .post(&url)
            .header("Content-Type", "application/json;charset=UTF-8")
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let local = Clock::local_ms();
        if let Some(date) = resp.headers().get(reqwest::header::DATE) {
            if let Ok(d) = date.to_str() {
                self.clock.learn_from_date(d, local);
            }
        }
        let status = resp.status().as_u16();
        let bytes = self.read_capped(resp, status).await?;
        let text = || truncate_chars(&String::from_utf8_lossy(&bytes), 200);
        match parse_reply(&bytes) {
            Some(r) if (200..300).contains(&status) => Ok(r),
            Some(r) if status >= 500 => Err(CallError::Http {
                status,
                body: format!("code {} {}", r.code, truncate_chars(&r.msg, 100)),
            }),
            Some(r) => Ok(r),
            None if !(200..300).contains(&status) => Err(CallError::Http {
                status,
                body: text(),
            }),
            None => Err(CallError::NotJson {
                status,
                body: text(),
            }),
        }
    }

    /// The answer's body, at most [`MAX_ANSWER`] bytes: reading stops (and the connection is
    /// dropped) as soon as more arrive, whatever `Content-Length` says.
    async fn read_capped(
        &self,
        mut resp: reqwest::Response,
        status: u16,
    ) -> Result<Vec<u8>, CallError> {
        let too_large = CallError::TooLarge {
            status,
            limit: MAX_ANSWER,
        };
        if resp.content_length().is_some_and(|n| n > MAX_ANSWER as u64) {
            return Err(too_large);
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport_error(&e))? {
            if out.len() + chunk.len() > MAX_ANSWER {
                return Err(too_large);
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    fn transport_error(&self, e: &reqwest::Error) -> CallError {
        if e.is_timeout() {
            return CallError::Timeout(self.timeout);
        }
        let connect = e.is_connect();
        // reqwest's Display names the URL, never the body: the token is in the body only.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        let msg = truncate_chars(&msg, 300);
        if connect {
            CallError::Connect(msg)
        } else {
            CallError::Transport(msg)
        }
    }

    /// Send a command: one attempt, and on `1002` the spec's cure: the clock was re-learned
    /// from that answer's `Date`, so retry once at once; with `ts_unit = "auto"`, if that is
    /// still refused, try the other unit once and keep it if it works. A `1002` after an
    /// upload that took half the `ts` window or more is not retried: the request was too
    /// slow, not the clock wrong (the uploader sends less next time).
    ///
    /// With `data_encoding = "auto"`, until the platform has accepted a request with `data`,
    /// a `1501`/`1502` answer makes one more attempt in the other encoding; the other
    /// encoding is kept only if that attempt is accepted (see [`DataEncodingSetting`]).
    pub async fn call(&self, cmd: Cmd, data: Option<&str>) -> Result<Reply, CallError> {
        let encoding = self.data_encoding();
        let reply = self.call_in(cmd, data, encoding).await?;
        if data.is_none() || self.encoding_setting != DataEncodingSetting::Auto {
            return Ok(reply);
        }
        if matches!(reply.verdict, Verdict::Success | Verdict::Exists) {
            self.confirm_encoding(encoding, false);
            return Ok(reply);
        }
        if reply.verdict != Verdict::Malformed || self.encoding_confirmed.load(Ordering::Relaxed) {
            return Ok(reply);
        }
        let other = other_encoding(encoding);
        let probe = self.call_in(cmd, data, other).await?;
        if matches!(probe.verdict, Verdict::Success | Verdict::Exists) {
            self.confirm_encoding(other, true);
            return Ok(probe);
        }
        tracing::debug!(
            cmd = cmd.name(),
            code = %probe.code,
            kept = encoding_name(encoding),
            "data_encoding auto: the other encoding is refused too"
        );
        Ok(reply)
    }

    fn confirm_encoding(&self, encoding: DataEncoding, switched: bool) {
        self.encoding
            .store(encoding_code(encoding), Ordering::Relaxed);
        let was = self.encoding_confirmed.swap(true, Ordering::Relaxed);
        if switched || !was {
            tracing::info!(
                data_encoding = encoding_name(encoding),
                switched,
                "data_encoding auto: the platform accepts data in this encoding; keeping it"
            );
            if let Some(l) = &self.on_encoding {
                l(encoding);
            }
        }
    }

    async fn call_in(
        &self,
        cmd: Cmd,
        data: Option<&str>,
        encoding: DataEncoding,
    ) -> Result<Reply, CallError> {
        let unit = self.unit();
        let started = std::time::Instant::now();
        let first = self.attempt(cmd, data, unit, encoding).await?;
        if first.verdict != Verdict::AuthFailed {
            return Ok(first);
        }
        if started.elapsed() >= self.ts_window / 2 {
            tracing::debug!(
                cmd = cmd.name(),
                elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "1002 after a slow upload: not retried at once"
            );
            return Ok(first);
        }
        tracing::warn!(
            cmd = cmd.name(),
            offset_ms = self.clock.offset_ms(),
            "platform refused the signature (1002); re-synced the clock, retrying once"
        );
        let second = self.attempt(cmd, data, unit, encoding).await?;
        if second.verdict != Verdict::AuthFailed || self.setting != TsUnitSetting::Auto {
            return Ok(second);
        }
        let other = unit.other();
        let third = self.attempt(cmd, data, other, encoding).await?;
        if third.verdict != Verdict::AuthFailed {
            tracing::warn!(
                from = unit.as_str(),
                to = other.as_str(),
                "ts unit switched: the platform accepts ts in this unit"
            );
            self.unit.store(unit_code(other), Ordering::Relaxed);
            if let Some(l) = &self.on_unit {
                l(other);
            }
        }
        Ok(third)
    }
}

fn encoding_code(e: DataEncoding) -> u8 {
    match e {
        DataEncoding::Object => 0,
        DataEncoding::String => 1,
    }
}

fn other_encoding(e: DataEncoding) -> DataEncoding {
    match e {
        DataEncoding::Object => DataEncoding::String,
        DataEncoding::String => DataEncoding::Object,
    }
}

/// The config spelling of an encoding.
pub(crate) fn encoding_name(e: DataEncoding) -> &'static str {
    match e {
        DataEncoding::Object => "object",
        DataEncoding::String => "string",
    }
}

fn unit_code(u: TsUnit) -> u8 {
    match u {
        TsUnit::Ms => 0,
        TsUnit::S => 1,
    }
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Vectors {
        vectors: Vec<Vector>,
    }
    #[derive(Deserialize)]
    struct Vector {
        cmd: String,
        #[serde(rename = "lotCode")]
        lot_code: String,
        ts: String,
        token: String,
        auth: String,
    }

    fn vectors_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/spec/vectors/auth.json")
    }

    #[test]
    fn signatures_match_every_vector_in_the_shared_spec() {
        let text = std::fs::read_to_string(vectors_path()).expect("shared/spec/vectors/auth.json");
        let v: Vectors = serde_json::from_str(&text).expect("vectors parse");
        assert!(v.vectors.len() >= 12);
        for x in &v.vectors {
            assert_eq!(
                sign(&x.cmd, &x.lot_code, &x.ts, &x.token, AuthCase::Lower),
                x.auth,
                "{} {} {}",
                x.cmd,
                x.lot_code,
                x.ts
            );
            assert_eq!(
                sign(&x.cmd, &x.lot_code, &x.ts, &x.token, AuthCase::Upper),
                x.auth.to_uppercase()
            );
        }
    }

    #[test]
    fn zero_and_200_as_strings_or_numbers_are_success() {
        for body in [
            r#"{"code":"0","msg":"操作成功","data":""}"#,
            r#"{"code":0,"msg":"ok"}"#,
            r#"{"code":"200","msg":"ok"}"#,
            r#"{"code":200}"#,
        ] {
            assert_eq!(
                parse_reply(body.as_bytes()).unwrap().verdict,
                Verdict::Success,
                "{body}"
            );
        }
    }

    #[test]
    fn every_code_of_the_spec_table_is_classified_as_the_spec_says() {
        let table = [
            ("1000", Verdict::Fault),
            ("1001", Verdict::Fault),
            ("1002", Verdict::AuthFailed),
            ("1003", Verdict::Transient),
            ("1004", Verdict::Exists),
            ("1005", Verdict::Fault),
            ("1006", Verdict::Fault),
            ("1007", Verdict::Fault),
            ("1008", Verdict::Fault),
            ("1014", Verdict::Fault),
            ("1107", Verdict::Transient),
            ("1501", Verdict::Malformed),
            ("1502", Verdict::Malformed),
            ("2000", Verdict::Transient),
            ("2001", Verdict::Business),
            ("9999", Verdict::Transient),
        ];
        for (code, v) in table {
            assert_eq!(Verdict::of_code(code), v, "{code}");
        }
    }

    #[test]
    fn a_body_that_is_not_the_platform_json_is_not_a_reply() {
        assert!(parse_reply(b"<html>bad gateway</html>").is_none());
        assert!(parse_reply(b"{\"msg\":\"no code\"}").is_none());
        assert!(parse_reply(b"").is_none());
    }

    #[test]
    fn the_envelope_is_signed_and_data_encoded_as_configured() {
        let raw = crate::config::from_str(
            std::path::Path::new("t"),
            "[platform]\nurl='http://127.0.0.1:1'\nlot_code='350'\ntoken='test-token'\ndata_encoding='string'\n[space]\ntotal=5\n",
        )
        .unwrap();
        let client = Client::new(
            &raw.platform,
            Secret::new("test-token"),
            Arc::new(Clock::default()),
            None,
        )
        .unwrap();
        let body = client.envelope(
            Cmd::ParkSpace,
            Some(r#"{"totalSpace":5,"surplusSpace":1}"#),
            TsUnit::S,
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let ts = v["ts"].as_str().unwrap();
        assert!(ts.len() == 10 && ts.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(
            v["auth"],
            sign("parkSpace", "350", ts, "test-token", AuthCase::Lower)
        );
        assert_eq!(v["data"], r#"{"totalSpace":5,"surplusSpace":1}"#);
        assert!(!body.contains("test-token"));
        assert!(!format!("{client:?}").contains("test-token"));
        let hb = client.envelope(Cmd::Heartbeat, None, TsUnit::Ms);
        assert!(!hb.contains("data"));
    }
}
