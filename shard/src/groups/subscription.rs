//! The topics in a Kafka consumer's subscription, read by hand.
//!
//! A member of a group of protocol type `consumer` sends, as its metadata, Kafka's
//! embedded `ConsumerProtocolSubscription`: an `i16` version, then the message in that
//! version. Every version (0 to 3 today) starts with the same field, the one the
//! coordinator needs: the subscribed topics, an `i32` count of `i16`-length UTF-8
//! names. Later fields (user data, owned partitions, generation, rack) are not read, so
//! versions newer than this reader also work, as Kafka's own readers skip what follows.
//!
//! The coordinator reads it (to refuse deleting the offsets of a topic the group
//! consumes) rather than its callers, because it needs every member's subscription, and
//! only the coordinator holds them. The bytes come from clients: every length is
//! checked against what is left before it is used, and anything that does not fit is
//! `None`, never a panic.

/// The topics of a `ConsumerProtocolSubscription`, or `None` if the bytes are not one.
pub fn subscribed_topics(meta: &[u8]) -> Option<Vec<String>> {
    let mut r = Reader(meta);
    let _version = r.take::<2>()?;
    let count = i32::from_be_bytes(r.take::<4>()?);
    // A hostile count is refused before allocating: each name takes two bytes at least.
    let count = usize::try_from(count).ok()?;
    if count > r.0.len() / 2 {
        return None;
    }
    let mut topics = Vec::with_capacity(count);
    for _ in 0..count {
        let len = usize::try_from(i16::from_be_bytes(r.take::<2>()?)).ok()?;
        let name = r.bytes(len)?;
        topics.push(std::str::from_utf8(name).ok()?.to_string());
    }
    Some(topics)
}

/// What is left to read.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(version: i16, topics: &[&str], rest: &[u8]) -> Vec<u8> {
        let mut b = version.to_be_bytes().to_vec();
        b.extend_from_slice(&(topics.len() as i32).to_be_bytes());
        for t in topics {
            b.extend_from_slice(&(t.len() as i16).to_be_bytes());
            b.extend_from_slice(t.as_bytes());
        }
        b.extend_from_slice(rest);
        b
    }

    #[test]
    fn reads_the_topics_of_every_version() {
        // v0: topics, then user data (null); v3 has more after it.
        let v0 = encode(0, &["orders", "audit"], &(-1i32).to_be_bytes());
        assert_eq!(
            subscribed_topics(&v0),
            Some(vec!["orders".to_string(), "audit".to_string()])
        );
        let v9 = encode(9, &["a"], &[0xff; 40]);
        assert_eq!(subscribed_topics(&v9), Some(vec!["a".to_string()]));
        assert_eq!(subscribed_topics(&encode(1, &[], &[])), Some(vec![]));
    }

    #[test]
    fn refuses_what_does_not_fit() {
        assert_eq!(subscribed_topics(&[]), None);
        assert_eq!(subscribed_topics(&[0, 0, 0]), None);
        // A count larger than the bytes could hold, and a negative one.
        assert_eq!(subscribed_topics(&[0, 0, 0x7f, 0xff, 0xff, 0xff]), None);
        assert_eq!(subscribed_topics(&[0, 0, 0xff, 0xff, 0xff, 0xff]), None);
        // A name longer than what is left, a negative length, bad UTF-8.
        assert_eq!(subscribed_topics(&[0, 0, 0, 0, 0, 1, 0, 9, b'a']), None);
        assert_eq!(subscribed_topics(&[0, 0, 0, 0, 0, 1, 0xff, 0xff]), None);
        assert_eq!(subscribed_topics(&[0, 0, 0, 0, 0, 1, 0, 1, 0xff]), None);
    }

    proptest! {
        #[test]
        fn any_bytes_read_without_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = subscribed_topics(&b);
        }

        #[test]
        fn any_subscription_reads_back(
            version in 0i16..8,
            topics in proptest::collection::vec("[a-z._-]{0,20}", 0..8),
        ) {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            prop_assert_eq!(subscribed_topics(&encode(version, &names, &[1, 2])), Some(topics));
        }
    }
}
