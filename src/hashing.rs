//! argon2id password hashing, off the async workers and outside the RegistrationActor.
//!
//! A hash takes tens of milliseconds of CPU and `argon2_m_kib` of memory. It runs on threads of
//! its own, one per core, so HTTP workers keep serving, and never inside the actor's serialized
//! section so registrations do not queue behind each other's hashing.

use std::sync::{Arc, Mutex};

use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};

use crate::configuration::PasswordSettings;
use crate::domain::Password;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("argon2 hashing failed: {0}")]
    Hash(argon2::Error),
    #[error("could not start a hashing thread: {0}")]
    Spawn(std::io::Error),
    #[error("the hashing threads are gone")]
    Closed,
    /// `password.max_waiting` requests are already waiting for a hashing thread.
    #[error("too many requests are waiting for a hashing thread (password.max_waiting)")]
    Overloaded,
}

/// Hashes passwords with argon2id on `cores` threads of its own, one hash per thread at a time.
///
/// Why dedicated threads rather than tokio's blocking pool: the pool hands successive hashes
/// to whichever of its threads is free (eight different ones under load here), and each hash
/// needs `argon2_m_kib` of working memory. A thread of our own keeps one buffer for its whole
/// life: allocating (and page-faulting) 19 MiB afresh for every OWASP hash cost ~17 % of the
/// hash here (15.2 ms → 12.7 ms). The threads are also the bound: at most one hash per core
/// runs, so a burst of sign-ups queues (bounded memory) instead of thrashing.
#[derive(Clone)]
pub(crate) struct PasswordHasher {
    jobs: mpsc::Sender<Job>,
}

/// Where a hash goes once made. It is handed over on the hashing thread, so a registration's
/// hash can go straight on to the RegistrationActor instead of first waking the request's thread
/// only for that thread to pass it on (one thread wake-up less per registration).
pub(crate) trait HashConsumer: Send + 'static {
    /// False once nobody waits for this hash any more (its request gave up at
    /// `registration.deadline` or its client left): the job is skipped, no CPU spent on it.
    fn wanted(&self) -> bool;
    /// Takes the finished hash (or why there is none).
    fn take(self: Box<Self>, hash: Result<String, HashError>);
}

impl HashConsumer for oneshot::Sender<Result<String, HashError>> {
    fn wanted(&self) -> bool {
        !self.is_closed()
    }

    fn take(self: Box<Self>, hash: Result<String, HashError>) {
        let _ = self.send(hash);
    }
}

enum Job {
    Hash {
        password: Password,
        then: Box<dyn HashConsumer>,
    },
    Verify {
        password: String,
        phc: String,
        reply: oneshot::Sender<bool>,
    },
}

/// Length of the stored hash.
const OUTPUT_LEN: usize = crate::configuration::HASH_OUTPUT_LEN;

impl PasswordHasher {
    /// Starts one hashing thread per core. They stop when the last clone of the hasher is dropped.
    pub(crate) fn new(settings: &PasswordSettings) -> Result<Self, HashError> {
        let params = &settings.params;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        // A job waits here only while every thread is busy; a full queue refuses the next one.
        let (jobs, queue) = mpsc::channel(settings.max_waiting().max(1));
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..cores {
            let queue = Arc::clone(&queue);
            let params = params.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || work(&queue, &params))
                .map_err(HashError::Spawn)?;
        }
        Ok(Self { jobs })
    }

    /// Returns the PHC string (`$argon2id$v=19$m=…`) of `password` with a fresh random salt.
    #[cfg(test)]
    pub(crate) async fn hash(&self, password: Password) -> Result<String, HashError> {
        let (reply, answer) = oneshot::channel();
        self.hash_then(password, reply)?;
        answer.await.map_err(|_| HashError::Closed)?
    }

    /// Queues `password` for hashing; `then` takes the PHC string on the hashing thread. Refused
    /// at once (and `then` dropped unused) when `max_waiting` jobs already wait.
    pub(crate) fn hash_then(
        &self,
        password: Password,
        then: impl HashConsumer,
    ) -> Result<(), HashError> {
        self.submit(Job::Hash {
            password,
            then: Box::new(then),
        })
    }

    /// Queues `job` unless `max_waiting` jobs already wait.
    fn submit(&self, job: Job) -> Result<(), HashError> {
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => HashError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => HashError::Closed,
        })
    }

    /// Whether `password` matches the PHC string `phc`.
    pub(crate) async fn verify(&self, password: &str, phc: &str) -> Result<bool, HashError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Verify {
            password: password.to_owned(),
            phc: phc.to_owned(),
            reply,
        })?;
        answer.await.map_err(|_| HashError::Closed)
    }
}

/// The hashing threads' nice value. A hash is CPU work with nobody waiting on it but its own
/// request; answering the other requests (a 201, a 409, the 503 of shed overload, health) is
/// not. At nice 10 the kernel gives request handling about nine tenths of a core whenever both
/// want it, so a flood of hashes cannot make every other answer wait behind them (measured: the
/// shed 503s' p99 fell from ~110 ms to the figure in the README's flood line).
const HASHING_NICE: i32 = 10;

/// Lowers this thread's priority to [`HASHING_NICE`] (Linux: nice is per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), HASHING_NICE)
    {
        tracing::debug!(error = %e, "cannot lower the hashing thread's priority");
    }
}

/// A hashing thread: takes jobs until every sender is gone, reusing one working memory.
fn work(queue: &Mutex<mpsc::Receiver<Job>>, params: &Params) {
    lower_priority();
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    // Allocated at the first hash, so an idle server does not hold it.
    let mut blocks: Vec<Block> = Vec::new();
    loop {
        // The lock is held only while waiting for the next job, never while hashing, so it
        // cannot be poisoned by a hash; take it even so rather than stop hashing for good.
        let job = queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .blocking_recv();
        let Some(job) = job else { return };
        // A panic fails this one job (its caller sees `Closed`); the thread lives on.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match job {
            Job::Hash { password, then } => {
                if !then.wanted() {
                    return;
                }
                if blocks.is_empty() {
                    blocks = vec![Block::default(); params.block_count()];
                }
                then.take(hash_with(&argon2, params, &password, &mut blocks));
            }
            Job::Verify {
                password,
                phc,
                reply,
            } => {
                let _ = reply.send(verify(&password, &phc));
            }
        }));
    }
}

fn hash_with(
    argon2: &Argon2<'_>,
    params: &Params,
    password: &Password,
    blocks: &mut [Block],
) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let mut output = [0u8; OUTPUT_LEN];
    argon2
        .hash_password_into_with_memory(password.expose().as_bytes(), &salt, &mut output, blocks)
        .map_err(HashError::Hash)?;
    Ok(phc(params, &salt, &output))
}

/// Verification follows the parameters stored in `phc` (they may predate the configured
/// ones), so it uses the crate's verifier and its own memory; it only runs on replays.
fn verify(password: &str, phc: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHash, PasswordVerifier};

    #[tokio::test]
    async fn hashes_are_argon2id_phc_strings_that_verify() {
        let settings = PasswordSettings {
            max_waiting: 0,
            ..PasswordSettings::new(1024, 1, 1).expect("valid parameters")
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

    #[tokio::test]
    async fn many_concurrent_hashes_all_finish_and_verify_follows_the_stored_parameters() {
        let settings = PasswordSettings {
            max_waiting: 16,
            ..PasswordSettings::new(1024, 1, 1).expect("valid parameters")
        };
        let hasher = PasswordHasher::new(&settings).expect("valid parameters");
        // More callers than threads, as many as may wait: every one is answered.
        let hashes = futures_util::future::join_all((0..16).map(|i| {
            let hasher = hasher.clone();
            async move {
                let password = Password::parse(&format!("password {i}"), &[]).expect("valid");
                hasher.hash(password).await.expect("hashes")
            }
        }))
        .await;
        for (i, phc) in hashes.iter().enumerate() {
            assert!(
                hasher
                    .verify(&format!("password {i}"), phc)
                    .await
                    .expect("verifies")
            );
            assert!(
                !hasher
                    .verify("another password", phc)
                    .await
                    .expect("verifies")
            );
        }
        // A hash stored under other parameters (an earlier configuration) still verifies.
        let older = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(2048, 2, 1, None).expect("params"),
        );
        let salt =
            argon2::password_hash::SaltString::encode_b64(b"0123456789abcdef").expect("salt");
        let phc =
            argon2::password_hash::PasswordHasher::hash_password(&older, b"old secret", &salt)
                .expect("hashes")
                .to_string();
        assert!(hasher.verify("old secret", &phc).await.expect("verifies"));
        assert!(
            !hasher
                .verify("old secret", "not a phc string")
                .await
                .expect("answers")
        );
    }

    #[tokio::test]
    async fn callers_beyond_max_waiting_are_refused_at_once_without_hashing() {
        // Slow hashes (64 MiB, 3 passes), one may wait: of many callers at once, those beyond
        // the threads and the one waiting place are refused straight away.
        let settings = PasswordSettings {
            max_waiting: 1,
            ..PasswordSettings::new(64 * 1024, 3, 1).expect("valid parameters")
        };
        let hasher = PasswordHasher::new(&settings).expect("valid parameters");
        let callers = 40;
        let results = futures_util::future::join_all((0..callers).map(|i| {
            let hasher = hasher.clone();
            async move {
                let password = Password::parse(&format!("password {i}"), &[]).expect("valid");
                hasher.hash(password).await
            }
        }))
        .await;
        let refused = results
            .iter()
            .filter(|r| matches!(r, Err(HashError::Overloaded)))
            .count();
        let hashed = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(
            refused + hashed,
            callers,
            "nothing else happens: {results:?}"
        );
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        assert!(
            hashed <= cores + 1,
            "at most one per thread and one waiting were accepted, not {hashed}"
        );
        assert!(hashed >= 1, "the first caller is hashed");
    }

    #[tokio::test]
    async fn a_hash_nobody_waits_for_any_more_is_skipped() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        /// A consumer whose request gave up; counts hashes handed to it and consumers dropped.
        struct GaveUp {
            taken: Arc<AtomicUsize>,
            dropped: Arc<AtomicUsize>,
        }
        impl HashConsumer for GaveUp {
            fn wanted(&self) -> bool {
                false
            }
            fn take(self: Box<Self>, _: Result<String, HashError>) {
                self.taken.fetch_add(1, Ordering::SeqCst);
            }
        }
        impl Drop for GaveUp {
            fn drop(&mut self) {
                self.dropped.fetch_add(1, Ordering::SeqCst);
            }
        }

        let settings = PasswordSettings {
            max_waiting: 64,
            ..PasswordSettings::new(1024, 1, 1).expect("valid parameters")
        };
        let hasher = PasswordHasher::new(&settings).expect("valid parameters");
        let (taken, dropped) = (Arc::default(), Arc::<AtomicUsize>::default());
        let abandoned = 20;
        for _ in 0..abandoned {
            let password = Password::parse("correct horse", &[]).expect("valid password");
            let consumer = GaveUp {
                taken: Arc::clone(&taken),
                dropped: Arc::clone(&dropped),
            };
            hasher.hash_then(password, consumer).expect("queued");
        }
        // Jobs are taken in order: once a later caller's hash is back, the abandoned ones were
        // taken off the queue (dropped once skipped).
        let password = Password::parse("another horse", &[]).expect("valid password");
        hasher.hash(password).await.expect("hashes");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while dropped.load(Ordering::SeqCst) < abandoned {
            assert!(
                std::time::Instant::now() < deadline,
                "the abandoned jobs were never taken"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(
            taken.load(Ordering::SeqCst),
            0,
            "no abandoned job was hashed"
        );
    }
}
