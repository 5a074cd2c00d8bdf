//! Version tokens: what a transaction wrote, as a string a client can carry to
//! any node.

use std::fmt;
use std::str::FromStr;

use litemesh_storage::{ActorId, Knowledge};

use crate::error::Error;

/// Names versions (`actor:version` pairs). A read given a token waits until
/// the node has applied all of them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Token(Vec<(ActorId, u64)>);

impl Token {
    /// A token for one version.
    pub fn new(actor: ActorId, version: u64) -> Token {
        Token(vec![(actor, version)])
    }

    /// The versions it names.
    pub fn versions(&self) -> &[(ActorId, u64)] {
        &self.0
    }

    /// The first version named that `k` does not hold, if any.
    pub fn missing_in(&self, k: &Knowledge) -> Option<(ActorId, u64)> {
        self.0.iter().copied().find(|(a, v)| !k.contains(a, *v))
    }

    /// Combines two tokens (for monotonic reads across several writes).
    pub fn merge(&mut self, other: &Token) {
        for &(a, v) in &other.0 {
            match self.0.iter_mut().find(|(x, _)| *x == a) {
                // A later version of the same actor implies nothing about
                // earlier ones (they may be cleared or lost), so keep both.
                Some((_, w)) if *w == v => {}
                _ => self.0.push((a, v)),
            }
        }
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(a, v)| format!("{a}:{v}")).collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for Token {
    type Err = Error;
    fn from_str(s: &str) -> Result<Token, Error> {
        let bad = || Error::InvalidToken(s.chars().take(80).collect());
        if s.is_empty() || s.len() > 64 * 1024 {
            return Err(bad());
        }
        let mut out = Vec::new();
        for part in s.split(',') {
            let (a, v) = part.split_once(':').ok_or_else(bad)?;
            let actor = ActorId::from_hex(a).ok_or_else(bad)?;
            let version: u64 = v.parse().map_err(|_| bad())?;
            if version == 0 {
                return Err(bad());
            }
            out.push((actor, version));
        }
        Ok(Token(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let t = Token::new(ActorId([0xab; 16]), 42);
        let s = t.to_string();
        assert_eq!(s.parse::<Token>().unwrap(), t);
        for bad in [
            "",
            "x",
            "ab:1",
            &format!("{}:0", "ab".repeat(16)),
            &format!("{}:z", "ab".repeat(16)),
        ] {
            assert!(bad.parse::<Token>().is_err(), "{bad}");
        }
    }
}
