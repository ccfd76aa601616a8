//! Bearer API keys: the secret is hashed with SHA-256 and compared against
//! every configured hash in constant time, so neither a match nor its
//! position leaks through timing.

use crate::throttle::KeyState;
use kiln_policy::ApiKey;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Key id used in development mode, when a request sends no key.
pub const DEV_KEY: &str = "dev";

/// The callers this server knows.
pub struct Auth {
    keys: Vec<([u8; 32], Arc<KeyState>)>,
    /// Development mode: requests without a key act as [`DEV_KEY`].
    dev: Option<Arc<KeyState>>,
}

/// Why the configured keys cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("[server] key {id:?}: sha256 must be 64 hex digits (the SHA-256 of the secret, e.g. `printf %s \"$SECRET\" | sha256sum`)")]
    BadHash { id: String },
    #[error("[server] key id {id:?} appears twice")]
    Duplicate { id: String },
}

impl Auth {
    pub fn new(keys: &[ApiKey], dev: bool) -> Result<Self, KeyError> {
        let mut parsed: Vec<([u8; 32], Arc<KeyState>)> = Vec::new();
        for key in keys {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(key.sha256.trim(), &mut hash)
                .map_err(|_| KeyError::BadHash { id: key.id.clone() })?;
            if parsed.iter().any(|(_, k)| k.key.id == key.id) {
                return Err(KeyError::Duplicate { id: key.id.clone() });
            }
            parsed.push((hash, Arc::new(KeyState::new(key.clone()))));
        }
        let dev = dev.then(|| Arc::new(KeyState::new(dev_key())));
        Ok(Self { keys: parsed, dev })
    }

    /// The caller an `Authorization` header value names, if any.
    pub fn authenticate(&self, header: Option<&str>) -> Option<Arc<KeyState>> {
        let Some(header) = header else {
            return self.dev.clone();
        };
        let secret = header.strip_prefix("Bearer ")?.trim();
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        // Look at every key whatever matches, remembering the match's index.
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, (hash, _)) in self.keys.iter().enumerate() {
            let hit = hash.ct_eq(&digest);
            index = u64::conditional_select(&index, &(i as u64), hit);
            found |= hit;
        }
        bool::from(found).then(|| self.keys[index as usize].1.clone())
    }
}

/// The development caller's quotas: the configuration file's defaults for a key.
fn dev_key() -> ApiKey {
    serde_json::from_value(serde_json::json!({ "id": DEV_KEY, "sha256": "" }))
        .expect("an ApiKey with only id and sha256 takes the defaults")
}

/// SHA-256 hex of `secret`, as `[server] keys` stores it.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, secret: &str) -> ApiKey {
        ApiKey {
            id: id.into(),
            sha256: hash_secret(secret),
            max_sessions: 1,
            max_concurrency: 1,
            requests_per_minute: 60,
        }
    }

    #[test]
    fn the_matching_key_is_found_and_others_are_not() {
        let auth = Auth::new(&[key("a", "sa"), key("b", "sb")], false).unwrap();
        let who = |h: Option<&str>| auth.authenticate(h).map(|k| k.key.id.clone());
        assert_eq!(who(Some("Bearer sa")).as_deref(), Some("a"));
        assert_eq!(who(Some("Bearer sb")).as_deref(), Some("b"));
        assert_eq!(who(Some("Bearer sc")), None);
        assert_eq!(who(Some("sa")), None);
        assert_eq!(who(None), None);
    }

    #[test]
    fn dev_mode_acts_as_dev_without_a_key_but_checks_a_key_sent() {
        let auth = Auth::new(&[key("a", "sa")], true).unwrap();
        let who = |h: Option<&str>| auth.authenticate(h).map(|k| k.key.id.clone());
        assert_eq!(who(None).as_deref(), Some(DEV_KEY));
        assert_eq!(who(Some("Bearer sa")).as_deref(), Some("a"));
        assert_eq!(who(Some("Bearer nope")), None);
    }

    #[test]
    fn bad_hashes_and_duplicate_ids_are_refused() {
        let mut bad = key("a", "x");
        bad.sha256 = "abc".into();
        assert!(matches!(
            Auth::new(&[bad], false),
            Err(KeyError::BadHash { .. })
        ));
        assert!(matches!(
            Auth::new(&[key("a", "x"), key("a", "y")], false),
            Err(KeyError::Duplicate { .. })
        ));
    }
}
