//! Session tickets shared by every worker that holds the same 32-byte secret: the keys of epoch
//! `floor(unix_time / rotation)` are HMAC-SHA256(secret, label || epoch); a ticket is sealed with
//! the current epoch's key and opens under the current or the previous one (lifetime 2 * rotation).

use ring::aead::{self, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bytes naming the epoch's key at the head of a ticket (so a stranger's ticket is refused
/// without an AEAD attempt, and the right one of the two keys is tried).
const NAME_LEN: usize = 16;

/// The clock, as seconds since the epoch with nanoseconds: replaceable in tests.
pub type Clock = Arc<dyn Fn() -> Duration + Send + Sync>;

struct EpochKeys {
    epoch: u64,
    name: [u8; NAME_LEN],
    key: LessSafeKey,
}

/// `rustls::server::ProducesTickets` with keys derived from a secret and the time.
pub struct Ticketer {
    secret: hmac::Key,
    rotation: Duration,
    clock: Clock,
    rng: SystemRandom,
    // The current and previous epochs' keys, derived again only when the epoch moves on.
    keys: Mutex<Option<[Arc<EpochKeys>; 2]>>,
}

impl std::fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticketer").field("rotation", &self.rotation).finish_non_exhaustive()
    }
}

fn wall_clock() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

impl Ticketer {
    pub fn new(secret: &[u8], rotation: Duration) -> Result<Self, super::Error> {
        Self::with_clock(secret, rotation, Arc::new(wall_clock))
    }

    pub fn with_clock(secret: &[u8], rotation: Duration, clock: Clock) -> Result<Self, super::Error> {
        if secret.len() != 32 {
            return Err(super::Error::BadSecret(secret.len()));
        }
        if rotation < Duration::from_secs(1) {
            return Err(super::Error::BadRotation);
        }
        Ok(Ticketer {
            secret: hmac::Key::new(hmac::HMAC_SHA256, secret),
            rotation,
            clock,
            rng: SystemRandom::new(),
            keys: Mutex::new(None),
        })
    }

    fn epoch(&self) -> u64 {
        ((self.clock)().as_nanos() / self.rotation.as_nanos()) as u64
    }

    fn derive(&self, epoch: u64) -> EpochKeys {
        let part = |label: &[u8]| {
            let mut ctx = hmac::Context::with_key(&self.secret);
            ctx.update(label);
            ctx.update(&epoch.to_be_bytes());
            ctx.sign()
        };
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(&part(b"mta ticket name").as_ref()[..NAME_LEN]);
        let raw = part(b"mta ticket key");
        let key = LessSafeKey::new(UnboundKey::new(&aead::AES_256_GCM, raw.as_ref()).expect("32-byte key"));
        EpochKeys { epoch, name, key }
    }

    /// [current, previous] for the clock's epoch.
    fn keys(&self) -> [Arc<EpochKeys>; 2] {
        let epoch = self.epoch();
        let mut held = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        match held.as_ref() {
            Some(k) if k[0].epoch == epoch => return k.clone(),
            _ => {}
        }
        let prev = match held.take() {
            Some([cur, _]) if cur.epoch + 1 == epoch => cur,
            _ => Arc::new(self.derive(epoch.wrapping_sub(1))),
        };
        let k = [Arc::new(self.derive(epoch)), prev];
        *held = Some(k.clone());
        k
    }
}

impl rustls::server::ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        (self.rotation.as_secs().saturating_mul(2)).min(u32::MAX as u64) as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let [cur, _] = self.keys();
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + aead::MAX_TAG_LEN);
        out.extend_from_slice(&cur.name);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        // The name and nonce are authenticated too: a ticket moved to another key fails.
        cur.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aead::Aad::from(&out[..]), &mut body)
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NAME_LEN + NONCE_LEN + aead::AES_256_GCM.tag_len() {
            return None;
        }
        let (head, body) = cipher.split_at(NAME_LEN + NONCE_LEN);
        // Key names are not secret: a plain comparison picks the key.
        let k = self.keys().into_iter().find(|k| k.name[..] == head[..NAME_LEN])?;
        let nonce = Nonce::try_assume_unique_for_key(&head[NAME_LEN..]).ok()?;
        let mut body = body.to_vec();
        let n = k.key.open_in_place(nonce, aead::Aad::from(head), &mut body).ok()?.len();
        body.truncate(n);
        Some(body)
    }
}
