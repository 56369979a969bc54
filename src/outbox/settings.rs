//! Small persisted values kept in the index (sled), one typed accessor each. No other code
//! names a settings key. They reach the disk with the index's next flush (see [`super`]):
//! losing the last change to a power cut is harmless for each of them (said per accessor).
//! They are lost when sled's files are moved aside and the index rebuilt; the callers then
//! start from their defaults.
//!
//! Keys: `m/ts_unit` (`ms` or `s`), `m/data_encoding` (`object` or `string`),
//! `m/space_state` (JSON of the space tracker's state), `m/occupied` (versions before the
//! space state), `s` (the newest space report), `m/space_sent` (seq of the report the
//! platform has), `m/config_version` (versions before the gateway state file kept the last
//! accepted config push here).

use serde::{Deserialize, Serialize};

use super::{OutboxError, Shared};

const K_TS_UNIT: &[u8] = b"m/ts_unit";
const K_DATA_ENCODING: &[u8] = b"m/data_encoding";
const K_SPACE_STATE: &[u8] = b"m/space_state";
const K_OCCUPIED_V1: &[u8] = b"m/occupied";
const K_SPACE: &[u8] = b"s";
const K_SPACE_SENT: &[u8] = b"m/space_sent";
const K_CONFIG_VERSION_V1: &[u8] = b"m/config_version";

/// The latest space report and whether it has been sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceReport {
    pub total: u64,
    pub surplus: u64,
    /// Grows by one per change.
    pub seq: u64,
}

/// The settings of one outbox (see the module docs).
pub struct Settings<'a> {
    shared: &'a Shared,
}

impl<'a> Settings<'a> {
    pub(super) fn new(shared: &'a Shared) -> Settings<'a> {
        Settings { shared }
    }

    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, OutboxError> {
        Ok(self.shared.db()?.get(k)?.map(|v| v.to_vec()))
    }

    fn get_text(&self, k: &[u8]) -> Result<Option<String>, OutboxError> {
        Ok(self.get(k)?.and_then(|v| String::from_utf8(v).ok()))
    }

    fn put(&self, k: &[u8], v: &[u8]) -> Result<(), OutboxError> {
        self.shared.db()?.insert(k, v)?;
        Ok(())
    }

    /// The `ts` unit `ts_unit = "auto"` settled on (`"ms"` or `"s"`). Lost: learned again.
    pub fn ts_unit(&self) -> Result<Option<String>, OutboxError> {
        self.get_text(K_TS_UNIT)
    }

    /// Remember the `ts` unit that worked.
    pub fn set_ts_unit(&self, unit: &str) -> Result<(), OutboxError> {
        self.put(K_TS_UNIT, unit.as_bytes())
    }

    /// The `data` encoding `data_encoding = "auto"` settled on. Lost: learned again.
    pub fn data_encoding(&self) -> Result<Option<String>, OutboxError> {
        self.get_text(K_DATA_ENCODING)
    }

    /// Remember the `data` encoding that worked.
    pub fn set_data_encoding(&self, encoding: &str) -> Result<(), OutboxError> {
        self.put(K_DATA_ENCODING, encoding.as_bytes())
    }

    /// The space tracker's state (JSON it owns). Lost: the tracker starts from its
    /// default; the caller flushes after a change it must not lose.
    pub fn space_state(&self) -> Result<Option<String>, OutboxError> {
        self.get_text(K_SPACE_STATE)
    }

    /// Store the space tracker's state.
    pub fn set_space_state(&self, json: &str) -> Result<(), OutboxError> {
        self.put(K_SPACE_STATE, json.as_bytes())
    }

    /// The occupied count: from the space state, or as versions before it kept it.
    pub fn space_occupied(&self) -> Result<Option<u64>, OutboxError> {
        if let Some(text) = self.space_state()? {
            let v: Option<serde_json::Value> = serde_json::from_str(&text).ok();
            if let Some(n) = v
                .as_ref()
                .and_then(|v| v.get("occupied"))
                .and_then(serde_json::Value::as_u64)
            {
                return Ok(Some(n));
            }
        }
        self.occupied_v1()
    }

    /// The occupied count as versions before the space state kept it.
    pub fn occupied_v1(&self) -> Result<Option<u64>, OutboxError> {
        Ok(self.get_text(K_OCCUPIED_V1)?.and_then(|s| s.parse().ok()))
    }

    /// The last accepted config-push version as versions before the gateway state file kept
    /// it (read once, to carry it over).
    pub fn config_version_v1(&self) -> Result<Option<u64>, OutboxError> {
        Ok(self
            .get_text(K_CONFIG_VERSION_V1)?
            .and_then(|s| s.parse().ok()))
    }

    /// Record the newest space figures; coalesces: only the newest is kept. Returns the
    /// new report, or `None` if the figures did not change. Wakes the uploader.
    pub fn set_space(&self, total: u64, surplus: u64) -> Result<Option<SpaceReport>, OutboxError> {
        // One caller at a time: the space tracker holds its own lock around this.
        let cur = self.space_latest()?;
        if cur.is_some_and(|c| c.total == total && c.surplus == surplus) {
            return Ok(None);
        }
        let rep = SpaceReport {
            total,
            surplus,
            seq: cur.map_or(1, |c| c.seq + 1),
        };
        self.put(K_SPACE, &serde_json::to_vec(&rep).unwrap_or_default())?;
        self.shared.notify.notify_one();
        Ok(Some(rep))
    }

    /// The newest space report, if any was ever set.
    pub fn space_latest(&self) -> Result<Option<SpaceReport>, OutboxError> {
        Ok(self
            .get(K_SPACE)?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// The space report to send: the newest, if it has not been sent yet (or `force`).
    /// A lost "sent" mark only means the report is sent once more.
    pub fn space_to_send(&self, force: bool) -> Result<Option<SpaceReport>, OutboxError> {
        let Some(latest) = self.space_latest()? else {
            return Ok(None);
        };
        let sent = self
            .get(K_SPACE_SENT)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        Ok((force || sent != latest.seq).then_some(latest))
    }

    /// The platform has the report with this seq.
    pub fn space_sent(&self, seq: u64) -> Result<(), OutboxError> {
        self.put(K_SPACE_SENT, &seq.to_be_bytes())
    }
}
