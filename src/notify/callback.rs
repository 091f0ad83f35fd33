//! `callback_data` of the card's gate buttons (B-11): the action, the task,
//! the stage version the button was drawn for and a MAC under a key of ours,
//! so a forged tap and a stale one (the stage moved since, or the head a
//! Confirm Deploy names is no longer the task's) do nothing. Confirm Deploy
//! binds the head commit inside the MAC: the commit is not in the data (64
//! bytes would not hold it), the verifier recomputes with the task's head now.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::card::GateAction;
use crate::config::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Telegram's limit for `callback_data`.
pub const MAX_BYTES: usize = 64;
/// MAC bytes kept (hex in the data: twice as many characters).
const MAC_BYTES: usize = 8;
const PREFIX: &str = "g1";

/// A decoded tap, not verified yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap {
    pub action: GateAction,
    pub task_id: i64,
    pub stage_version: i64,
    mac: Vec<u8>,
}

#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(***)")
    }
}

impl Signer {
    /// The key is derived from the bot token: only whoever holds the token
    /// can draw buttons that reach us anyway, and no second secret has to
    /// be configured or stored.
    pub fn from_bot_token(token: &Secret) -> Signer {
        let mut m = HmacSha256::new_from_slice(token.expose().as_bytes())
            .expect("HMAC takes a key of any length");
        m.update(b"orchestrator callback_data key v1");
        Signer {
            key: m.finalize().into_bytes().to_vec(),
        }
    }

    fn mac(&self, action: GateAction, task_id: i64, version: i64, head: &str) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        m.update(format!("{PREFIX}:{}:{task_id}:{version}:{head}", action.code()).as_bytes());
        m
    }

    /// The data of a button. `head` is the commit a Confirm Deploy is bound
    /// to ("" for the other actions).
    pub fn encode(&self, action: GateAction, task_id: i64, version: i64, head: &str) -> String {
        let tag = self
            .mac(action, task_id, version, head)
            .finalize()
            .into_bytes();
        format!(
            "{PREFIX}:{}:{task_id}:{version}:{}",
            action.code(),
            hex::encode(&tag[..MAC_BYTES])
        )
    }

    /// Parse the data of a tap; `None` when it is not one of ours.
    pub fn decode(data: &str) -> Option<Tap> {
        if data.len() > MAX_BYTES {
            return None;
        }
        let mut parts = data.split(':');
        if parts.next()? != PREFIX {
            return None;
        }
        let code = parts.next()?;
        let mut chars = code.chars();
        let action = GateAction::from_code(chars.next()?)?;
        if chars.next().is_some() {
            return None;
        }
        let task_id = parts.next()?.parse().ok()?;
        let stage_version = parts.next()?.parse().ok()?;
        let mac = hex::decode(parts.next()?).ok()?;
        if parts.next().is_some() || mac.len() != MAC_BYTES {
            return None;
        }
        Some(Tap {
            action,
            task_id,
            stage_version,
            mac,
        })
    }

    /// Was `tap` drawn by us for this task at `version` (and `head`)? The
    /// comparison is constant-time (`hmac`'s verify, through `subtle`).
    pub fn verify(&self, tap: &Tap, version: i64, head: &str) -> bool {
        tap.stage_version == version
            && self
                .mac(tap.action, tap.task_id, version, head)
                .verify_truncated_left(&tap.mac)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_button_fits_and_only_its_own_task_version_and_head_verify() {
        let s = Signer::from_bot_token(&Secret::new("1:abc"));
        let data = s.encode(GateAction::ConfirmDeploy, i64::MAX, i64::MAX, "deadbeef");
        assert!(data.len() <= MAX_BYTES, "{} bytes", data.len());
        let tap = Signer::decode(&data).unwrap();
        assert_eq!(
            (tap.action, tap.task_id),
            (GateAction::ConfirmDeploy, i64::MAX)
        );
        assert!(s.verify(&tap, i64::MAX, "deadbeef"));
        assert!(!s.verify(&tap, i64::MAX, "cafe"), "another head");

        let data = s.encode(GateAction::Approve, 7, 3, "");
        let tap = Signer::decode(&data).unwrap();
        assert!(s.verify(&tap, 3, ""));
        assert!(!s.verify(&tap, 4, ""), "the stage moved since");
        // Another key (a forger without the token), another action, a
        // changed task id: all refused.
        assert!(!Signer::from_bot_token(&Secret::new("1:other")).verify(&tap, 3, ""));
        let forged = data.replacen(":A:", ":D:", 1);
        assert!(!s.verify(&Signer::decode(&forged).unwrap(), 3, ""));
        let forged = data.replacen(":7:", ":8:", 1);
        assert!(!s.verify(&Signer::decode(&forged).unwrap(), 3, ""));
        for junk in [
            "",
            "g1",
            "g1:X:1:1:00",
            "g2:A:1:1:0011223344556677",
            "g1:A:1:1:zz",
            "g1:AA:1:1:0011223344556677",
        ] {
            assert!(Signer::decode(junk).is_none(), "{junk}");
        }
    }
}
