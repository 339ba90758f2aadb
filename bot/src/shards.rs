//! Sharding: which of the bot's Discord gateway shards this process runs (`--shards A-B
//! --shard-total N`), and so which guilds' jobs are its own.
//!
//! Discord sends a guild's events and interactions only to shard `(guild_id >> 22) % N`, and
//! DMs only to shard 0. A large bot splits its shards over several gateway processes that
//! share one store (PostgreSQL) and one queue (JetStream). Ownership of a job follows the same
//! rule, so a gateway restarting recovers only the jobs of its own guilds and never those a
//! live neighbour is running.

use std::fmt;

use anyhow::{bail, Result};

/// More shards than this is a typo, not a bot: Discord allows 2,500 guilds per shard, so this
/// covers ten million guilds.
pub const MAX_SHARDS: u32 = 4096;

/// The shards `first..=last` of `total`, run by this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardRange {
    first: u32,
    last: u32,
    total: u32,
}

impl Default for ShardRange {
    /// Unsharded: the one shard of one, as `imagine bot` has always run.
    fn default() -> Self {
        ShardRange {
            first: 0,
            last: 0,
            total: 1,
        }
    }
}

impl ShardRange {
    /// From `--shards` (`A-B`, or `A` for one shard) and `--shard-total` (`N`). Neither: the
    /// one shard of one. A total alone: all of its shards in this process.
    pub fn resolve(range: Option<&str>, total: Option<u32>) -> Result<ShardRange> {
        let range = range.map(str::trim).filter(|r| !r.is_empty());
        let total = match (range, total) {
            (None, None) => return Ok(ShardRange::default()),
            (Some(r), None) => bail!(
                "shards {r:?} needs shard_total, the number of shards all gateways together run \
                 (--shard-total, IMAGINE_SHARD_TOTAL)"
            ),
            (_, Some(n)) if n == 0 || n > MAX_SHARDS => bail!(
                "shard_total must be between 1 and {MAX_SHARDS}, got {n} (--shard-total, \
                 IMAGINE_SHARD_TOTAL)"
            ),
            (_, Some(n)) => n,
        };
        let Some(range) = range else {
            return Ok(ShardRange {
                first: 0,
                last: total - 1,
                total,
            });
        };
        let (first, last) = parse_range(range)?;
        if first > last {
            bail!("shards {range:?}: the first shard comes after the last; write A-B with A <= B (--shards, IMAGINE_SHARDS)");
        }
        if last >= total {
            bail!(
                "shards {range:?}: shard ids run from 0 to shard_total - 1 = {}, so shard {last} \
                 does not exist (--shards, IMAGINE_SHARDS)",
                total - 1
            );
        }
        Ok(ShardRange { first, last, total })
    }

    pub fn first(&self) -> u32 {
        self.first
    }

    pub fn last(&self) -> u32 {
        self.last
    }

    pub fn total(&self) -> u32 {
        self.total
    }

    /// Whether this process runs every shard (then it is the only gateway).
    pub fn is_whole(&self) -> bool {
        self.first == 0 && self.last + 1 == self.total
    }

    /// The shard Discord sends a place's events and interactions to: the guild's, or shard 0
    /// for DMs and group DMs.
    pub fn shard_of(guild: Option<u64>, total: u32) -> u32 {
        match guild {
            Some(id) => ((id >> 22) % u64::from(total.max(1))) as u32,
            None => 0,
        }
    }

    /// Whether the events of `guild` (`None`: DMs) come to this process.
    pub fn covers(&self, guild: Option<u64>) -> bool {
        (self.first..=self.last).contains(&ShardRange::shard_of(guild, self.total))
    }
}

impl fmt::Display for ShardRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{} of {}", self.first, self.last, self.total)
    }
}

/// `A-B` or `A`: shard ids in plain decimal digits, nothing else.
fn parse_range(text: &str) -> Result<(u32, u32)> {
    let id = |part: &str| -> Result<u32> {
        let part = part.trim();
        if part.is_empty() || part.len() > 5 || !part.bytes().all(|b| b.is_ascii_digit()) {
            bail!(
                "shards {text:?} is not a shard range such as 0-3 (or one shard, such as 2) \
                 (--shards, IMAGINE_SHARDS)"
            );
        }
        Ok(part.parse()?)
    };
    match text.split_once('-') {
        Some((a, b)) => Ok((id(a)?, id(b)?)),
        None => {
            let one = id(text)?;
            Ok((one, one))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(range: Option<&str>, total: Option<u32>) -> String {
        ShardRange::resolve(range, total).unwrap_err().to_string()
    }

    #[test]
    fn ranges_and_totals_are_read_strictly() {
        assert_eq!(
            ShardRange::resolve(None, None).unwrap(),
            ShardRange::default()
        );
        let r = ShardRange::resolve(Some("1-2"), Some(4)).unwrap();
        assert_eq!((r.first(), r.last(), r.total()), (1, 2, 4));
        assert!(!r.is_whole());
        assert_eq!(r.to_string(), "1-2 of 4");
        let one = ShardRange::resolve(Some(" 3 "), Some(4)).unwrap();
        assert_eq!((one.first(), one.last()), (3, 3));
        // A total alone runs every shard here.
        let all = ShardRange::resolve(None, Some(3)).unwrap();
        assert_eq!((all.first(), all.last(), all.is_whole()), (0, 2, true));
        assert!(ShardRange::resolve(Some("0-1"), Some(2))
            .unwrap()
            .is_whole());
    }

    #[test]
    fn bad_ranges_say_what_is_wrong_and_where_to_fix_it() {
        assert!(err(Some("0-1"), None).contains("IMAGINE_SHARD_TOTAL"));
        assert!(err(Some("0"), Some(0)).contains("between 1 and 4096"));
        assert!(err(None, Some(MAX_SHARDS + 1)).contains("between 1 and 4096"));
        assert!(err(Some("2-1"), Some(4)).contains("A <= B"));
        assert!(err(Some("0-2"), Some(2)).contains("shard 2 does not exist"));
        assert!(err(Some("2"), Some(2)).contains("0 to shard_total - 1 = 1"));
        for bad in [
            "a-b", "-1", "1-", "0--1", "+1", "0-1-2", "1 2", "0x1", "999999",
        ] {
            let e = err(Some(bad), Some(4));
            assert!(e.contains("IMAGINE_SHARDS"), "{bad}: {e}");
        }
    }

    #[test]
    fn guilds_go_to_the_shard_discord_sends_their_events_to() {
        // Discord's formula: (guild_id >> 22) % num_shards; DMs to shard 0.
        let guild = 41_771_983_423_143_937_u64;
        assert_eq!(ShardRange::shard_of(Some(guild), 1), 0);
        assert_eq!(
            ShardRange::shard_of(Some(guild), 2),
            ((guild >> 22) % 2) as u32
        );
        assert_eq!(ShardRange::shard_of(Some(5 << 22), 4), 1);
        assert_eq!(ShardRange::shard_of(None, 4), 0);
        let second = ShardRange::resolve(Some("1-1"), Some(4)).unwrap();
        assert!(second.covers(Some(5 << 22)));
        assert!(!second.covers(Some(4 << 22)));
        assert!(!second.covers(None), "DMs come to shard 0");
        assert!(ShardRange::default().covers(None));
        assert!(ShardRange::default().covers(Some(guild)));
    }
}
