//! The signed config push message on `{prefix}/config/set`: what its HMAC covers, how it is
//! parsed and checked (pure; [`crate::manage`] handles what a valid push does, `lotlink push`
//! in [`crate::fleet`] signs one), and the result published for it.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};

/// Outcome of one push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushResult {
    /// The pushed version (0 when the message had none).
    pub version: u64,
    /// `applied`, `rejected`, `rolled_back` or `unchanged`.
    pub outcome: &'static str,
    /// Why.
    pub reason: String,
}

impl PushResult {
    pub(crate) fn new(version: u64, outcome: &'static str, reason: impl Into<String>) -> Self {
        PushResult {
            version,
            outcome,
            reason: reason.into(),
        }
    }
    pub(crate) fn to_json(&self) -> Value {
        json!({ "version": self.version, "outcome": self.outcome, "reason": self.reason })
    }
}

/// A config push as it arrives on `{prefix}/config/set`. No `Debug`: the text holds the token.
#[derive(serde::Deserialize)]
pub struct Push {
    /// Must be greater than the applied version.
    pub version: u64,
    /// The whole TOML file (absent for a revert).
    #[serde(default)]
    pub config: Option<String>,
    /// Go back to the local config file (remove the pushed one).
    #[serde(default)]
    pub revert: bool,
    /// Hex HMAC-SHA256 of [`mac_input`].
    pub hmac: Option<String>,
}

/// What a push is bound to: the receiving gateway's lot code and topic prefix.
#[derive(Debug, Clone, Copy)]
pub struct PushTarget<'a> {
    /// `[platform] lot_code`.
    pub lot_code: &'a str,
    /// `[management] topic_prefix`, `{lot_code}` replaced.
    pub prefix: &'a str,
}

/// The bytes a push's HMAC covers: `"lotlink-push/2\n{action}\n{lot_code}\n{prefix}\n{version}\n"`
/// then the config text (empty for a revert); action is `set` or `revert`.
pub(crate) fn mac_input(
    target: PushTarget<'_>,
    version: u64,
    revert: bool,
    config: &str,
) -> Vec<u8> {
    let action = if revert { "revert" } else { "set" };
    let mut m = format!(
        "lotlink-push/2\n{action}\n{}\n{}\n{version}\n",
        target.lot_code, target.prefix
    )
    .into_bytes();
    m.extend_from_slice(config.as_bytes());
    m
}

/// Parse a push message and check its HMAC under `key` for `target`. Pure; the error is the
/// `rejected` result to publish. Fed arbitrary bytes by the fuzz target `config_push`.
pub fn parse_push(msg: &[u8], key: &[u8], target: PushTarget<'_>) -> Result<Push, PushResult> {
    let push: Push = serde_json::from_slice(msg).map_err(|e| {
        PushResult::new(
            0,
            "rejected",
            format!("not a config push ({{\"version\", \"config\", \"hmac\"}}): {e}"),
        )
    })?;
    if push.config.is_none() && !push.revert {
        return Err(PushResult::new(
            push.version,
            "rejected",
            "no \"config\" (and not a \"revert\")",
        ));
    }
    let text = if push.revert {
        ""
    } else {
        push.config.as_deref().unwrap_or("")
    };
    let ok = push
        .hmac
        .as_deref()
        .is_some_and(|h| hmac_ok(key, &mac_input(target, push.version, push.revert, text), h));
    if !ok {
        return Err(PushResult::new(
            push.version,
            "rejected",
            format!(
                "bad or missing hmac (a push is signed for one lot: lot code {}, topic prefix {})",
                target.lot_code, target.prefix
            ),
        ));
    }
    Ok(push)
}

/// The hex HMAC-SHA256 a push must carry, over [`mac_input`].
pub fn push_hmac(
    key: &[u8],
    target: PushTarget<'_>,
    version: u64,
    revert: bool,
    config: &str,
) -> String {
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(&mac_input(target, version, revert, config));
    hex::encode(mac.finalize().into_bytes())
}

fn hmac_ok(key: &[u8], input: &[u8], given: &str) -> bool {
    let Ok(given) = hex::decode(given.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(input);
    mac.verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hmac_binds_the_lot_the_prefix_the_action_the_version_and_the_text() {
        let key = b"0123456789abcdef";
        let a = PushTarget {
            lot_code: "TY0350",
            prefix: "lotlink/TY0350",
        };
        let text = "[platform]\n";
        let h = push_hmac(key, a, 7, false, text);
        assert_eq!(h.len(), 64);
        let ok = |t: PushTarget<'_>, v: u64, revert: bool, text: &str, h: &str| {
            hmac_ok(key, &mac_input(t, v, revert, text), h)
        };
        assert!(ok(a, 7, false, text, &h));
        assert!(ok(a, 7, false, text, &h.to_uppercase()));
        assert!(!ok(a, 8, false, text, &h), "another version");
        assert!(!ok(a, 7, false, "[platform] \n", &h), "another text");
        assert!(!ok(a, 7, true, text, &h), "a revert");
        let b = PushTarget {
            lot_code: "TY0351",
            prefix: "lotlink/TY0351",
        };
        assert!(!ok(b, 7, false, text, &h), "another lot");
        let other_prefix = PushTarget {
            lot_code: "TY0350",
            prefix: "site2/TY0350",
        };
        assert!(!ok(other_prefix, 7, false, text, &h), "another prefix");
        assert!(!hmac_ok(
            b"another-key-0000",
            &mac_input(a, 7, false, text),
            &h
        ));
        assert!(!ok(a, 7, false, text, "not hex"));
        assert_eq!(
            mac_input(a, 7, false, text),
            b"lotlink-push/2\nset\nTY0350\nlotlink/TY0350\n7\n[platform]\n".to_vec(),
            "the MAC input the README documents"
        );
        // A push signed for lot A is rejected by lot B.
        let msg = json!({"version": 7, "config": text, "hmac": h}).to_string();
        assert!(parse_push(msg.as_bytes(), key, a).is_ok());
        let r = parse_push(msg.as_bytes(), key, b).err().expect("refused");
        assert_eq!((r.version, r.outcome), (7, "rejected"));
        assert!(r.reason.contains("TY0351"), "{}", r.reason);
    }
}
