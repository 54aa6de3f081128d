//! etcd's simple tokens: a random string handed out by Authenticate, valid on the member that
//! issued it until it goes unused for the token TTL (`--auth-token-ttl`, 300 s), the user is
//! deleted or changes password, or auth is disabled.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Letters etcd draws its token prefixes from.
const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const PREFIX_LETTERS: usize = 16;

pub struct Tokens {
    ttl: Duration,
    /// token → (user, when it expires unless used).
    live: HashMap<String, (String, Instant)>,
    /// Makes every token unique, as etcd's raft index suffix does.
    issued: u64,
}

impl Tokens {
    pub fn new(ttl: Duration) -> Tokens {
        Tokens {
            ttl,
            live: HashMap::new(),
            issued: 0,
        }
    }

    /// A new token for `user`, in etcd's form: 16 random letters, a dot, a sequence number.
    pub fn assign(&mut self, user: &str, now: Instant) -> std::io::Result<String> {
        self.live.retain(|_, (_, expires)| *expires > now);
        let mut random = [0u8; PREFIX_LETTERS];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
            .map_err(|_| std::io::Error::other("the system has no randomness to give"))?;
        let prefix: String = random
            .iter()
            .map(|b| LETTERS[*b as usize % LETTERS.len()] as char)
            .collect();
        self.issued += 1;
        let token = format!("{prefix}.{}", self.issued);
        self.live
            .insert(token.clone(), (user.to_owned(), now + self.ttl));
        Ok(token)
    }

    /// The user a live token stands for; using it keeps it alive for another TTL.
    pub fn user(&mut self, token: &str, now: Instant) -> Option<String> {
        let (user, expires) = self.live.get_mut(token)?;
        if *expires <= now {
            self.live.remove(token);
            return None;
        }
        *expires = now + self.ttl;
        Some(user.clone())
    }

    pub fn forget_user(&mut self, user: &str) {
        self.live.retain(|_, (u, _)| u != user);
    }

    pub fn forget_all(&mut self) {
        self.live.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_live_while_used() {
        let start = Instant::now();
        let ttl = Duration::from_secs(300);
        let mut tokens = Tokens::new(ttl);
        let t = tokens.assign("alice", start).unwrap();
        let (prefix, n) = t.split_once('.').unwrap();
        assert_eq!(prefix.len(), PREFIX_LETTERS);
        assert!(prefix.bytes().all(|b| b.is_ascii_alphabetic()));
        assert_eq!(n, "1");
        assert_eq!(tokens.user(&t, start + ttl / 2).as_deref(), Some("alice"));
        // Used half-way, it lives a whole TTL from then.
        assert_eq!(tokens.user(&t, start + ttl).as_deref(), Some("alice"));
        assert_eq!(tokens.user(&t, start + ttl * 3), None);
        assert_eq!(tokens.user("nonsense", start), None);
    }

    #[test]
    fn tokens_are_forgotten_with_their_user() {
        let now = Instant::now();
        let mut tokens = Tokens::new(Duration::from_secs(300));
        let a = tokens.assign("alice", now).unwrap();
        let b = tokens.assign("bob", now).unwrap();
        assert_ne!(a, b);
        tokens.forget_user("alice");
        assert_eq!(tokens.user(&a, now), None);
        assert_eq!(tokens.user(&b, now).as_deref(), Some("bob"));
        tokens.forget_all();
        assert_eq!(tokens.user(&b, now), None);
    }
}
