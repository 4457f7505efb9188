//! The bounded pre-pass over a Kafka request: every length in it is checked against the
//! bytes that are really there before the `kafka-protocol` decoder sees it.
//!
//! Why: the decoder reserves a `Vec` of the element count a request claims before it
//! reads the elements (`Vec::with_capacity(n)` in `types::Array` and
//! `types::CompactArray`). A 20-byte request claiming 2^31 topics asks for hundreds of
//! GB, the allocator refuses, and Rust aborts the process. [`check`] walks the header
//! and body exactly as the decoder will read them, skipping bytes instead of building
//! values, and refuses:
//!
//! - an array whose claimed element count exceeds the bytes that remain (every element
//!   takes at least one byte, save structs that read nothing in their version, which
//!   the count bound still covers), and then walks every element, so once the pre-pass
//!   accepts, every count in the request is a count of elements present in the body;
//! - a string or bytes field longer than the bytes that remain, any truncated field;
//! - what the decoder itself refuses: negative lengths other than the null marker, null
//!   where the field is not nullable, strings that are not UTF-8, versions a type does
//!   not have, known tagged fields in versions without them.
//!
//! After it, the decoder's reservations are bounded by the frame (which the connection
//! layer caps) times the element type's size. The pre-pass itself allocates nothing:
//! its loops are bounded by the body's length (each array count is checked before the
//! loop; each tagged field reads at least two bytes).
//!
//! The walk functions per request type are generated (`bounds_generated.rs`, by
//! `kafka/gen/bounds.py` from the crate's `Decodable` impls); this module holds the
//! primitives they call ([`Walker`]) and the typed refusal ([`Refused`]).

use std::fmt;

use kafka_protocol::messages::ApiKey;

use crate::bounds_generated as generated;

/// Walks the request header (of `header_version`, 1 or 2) and the body of `api` in
/// `version` as `RequestHeader::decode` and `RequestKind::decode` read them, without
/// building anything. `Ok` means every length and count in the request is backed by
/// bytes of `body`.
pub(crate) fn check(
    api: ApiKey,
    version: i16,
    header_version: i16,
    body: &[u8],
) -> Result<(), Refused> {
    let mut r = Walker::new(body);
    generated::request_header(&mut r, header_version)?;
    generated::request(api, &mut r, version)
}

/// Whether a field may be null (its Rust type is an `Option`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Null {
    /// The null marker (length -1, or 0 for compact lengths) is a value.
    Allowed,
    /// The null marker is refused, as the decoder refuses it.
    Refused,
}

/// Why the pre-pass refused a request: the field (`Type.field`) and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) field: &'static str,
    pub(crate) kind: RefusedKind,
}

/// What was wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RefusedKind {
    /// The field needs more bytes than remain.
    Truncated {
        needed_bytes: u64,
        remaining_bytes: usize,
    },
    /// An array claims more elements than there are bytes left.
    CountBeyondBody { count: u64, remaining_bytes: usize },
    /// A length below -1.
    NegativeLength(i64),
    /// The null marker where the field is not nullable.
    Null,
    /// A string that is not UTF-8.
    NotUtf8,
    /// A type read in a version it does not have.
    Version(i16),
    /// A known tagged field in a version that does not have it.
    Tag { tag: u32, version: i16 },
    /// An API the generated walkers do not cover.
    NotCovered(i16),
}

impl Refused {
    fn new(field: &'static str, kind: RefusedKind) -> Refused {
        Refused { field, kind }
    }

    /// `type_name` read in a version it does not have.
    pub(crate) fn version(type_name: &'static str, version: i16) -> Refused {
        Refused::new(type_name, RefusedKind::Version(version))
    }

    /// A known tagged field of `type_name` in a version without it.
    pub(crate) fn tag(type_name: &'static str, tag: u32, version: i16) -> Refused {
        Refused::new(type_name, RefusedKind::Tag { tag, version })
    }

    /// An API the generated walkers do not cover.
    pub(crate) fn not_covered(api: ApiKey) -> Refused {
        Refused::new("request", RefusedKind::NotCovered(api as i16))
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = self.field;
        match self.kind {
            RefusedKind::Truncated {
                needed_bytes,
                remaining_bytes,
            } => write!(
                f,
                "{field} needs {needed_bytes} bytes, {remaining_bytes} remain"
            ),
            RefusedKind::CountBeyondBody {
                count,
                remaining_bytes,
            } => write!(
                f,
                "{field} claims {count} elements, only {remaining_bytes} bytes remain"
            ),
            RefusedKind::NegativeLength(n) => write!(f, "{field} has a negative length ({n})"),
            RefusedKind::Null => write!(f, "{field} is null, which it may not be"),
            RefusedKind::NotUtf8 => write!(f, "{field} is not UTF-8"),
            RefusedKind::Version(v) => write!(f, "{field} has no version {v}"),
            RefusedKind::Tag { tag, version } => {
                write!(f, "{field} has no tagged field {tag} in version {version}")
            }
            RefusedKind::NotCovered(key) => write!(f, "API key {key} has no pre-pass"),
        }
    }
}

impl std::error::Error for Refused {}

/// A cursor over a request's bytes that skips fields as the decoder would read them.
pub(crate) struct Walker<'a> {
    rest: &'a [u8],
    /// Where each array count was read, for the tests that forge counts.
    #[cfg(test)]
    pub(crate) counts: Vec<CountAt>,
    #[cfg(test)]
    body_bytes: usize,
}

/// Where an array count was read: its offset and width in bytes, and its field.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct CountAt {
    pub(crate) offset: usize,
    pub(crate) width: usize,
    pub(crate) compact: bool,
    pub(crate) field: &'static str,
}

impl<'a> Walker<'a> {
    pub(crate) fn new(body: &'a [u8]) -> Walker<'a> {
        Walker {
            rest: body,
            #[cfg(test)]
            counts: Vec::new(),
            #[cfg(test)]
            body_bytes: body.len(),
        }
    }

    /// The bytes not yet walked.
    #[cfg(test)]
    pub(crate) fn remaining_bytes(&self) -> usize {
        self.rest.len()
    }

    #[cfg(test)]
    fn note_count(&mut self, remaining_before: usize, compact: bool, field: &'static str) {
        self.counts.push(CountAt {
            offset: self.body_bytes - remaining_before,
            width: remaining_before - self.rest.len(),
            compact,
            field,
        });
    }

    fn take(&mut self, n: u64, field: &'static str) -> Result<&'a [u8], Refused> {
        if n > self.rest.len() as u64 {
            return Err(Refused::new(
                field,
                RefusedKind::Truncated {
                    needed_bytes: n,
                    remaining_bytes: self.rest.len(),
                },
            ));
        }
        let (head, tail) = self.rest.split_at(n as usize);
        self.rest = tail;
        Ok(head)
    }

    /// Skips a fixed-size field (or `n` bytes of an unknown tagged field).
    pub(crate) fn skip(&mut self, n: usize, field: &'static str) -> Result<(), Refused> {
        self.take(n as u64, field).map(|_| ())
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, Refused> {
        let b = self.take(2, field)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, Refused> {
        let b = self.take(4, field)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An unsigned varint as `types::UnsignedVarInt` reads it: at most five bytes, the
    /// bits beyond 32 dropped.
    pub(crate) fn uvarint(&mut self, field: &'static str) -> Result<u32, Refused> {
        let mut value = 0u32;
        for i in 0..5 {
            let b = u32::from(self.take(1, field)?[0]);
            value |= (b & 0x7f) << (i * 7);
            if b < 0x80 {
                break;
            }
        }
        Ok(value)
    }

    /// An unsigned varlong as `types::UnsignedVarLong` reads it: at most ten bytes.
    #[allow(dead_code)]
    pub(crate) fn uvarlong(&mut self, field: &'static str) -> Result<u64, Refused> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = u64::from(self.take(1, field)?[0]);
            value |= (b & 0x7f) << (i * 7);
            if b < 0x80 {
                break;
            }
        }
        Ok(value)
    }

    /// A length with -1 as the null marker: `Some(n)` for a length, `None` for null.
    fn signed_length(
        &mut self,
        n: i64,
        null: Null,
        field: &'static str,
    ) -> Result<Option<u64>, Refused> {
        match n {
            -1 if null == Null::Allowed => Ok(None),
            -1 => Err(Refused::new(field, RefusedKind::Null)),
            n if n < 0 => Err(Refused::new(field, RefusedKind::NegativeLength(n))),
            n => Ok(Some(n as u64)),
        }
    }

    /// A compact length (the varint is length + 1, 0 the null marker).
    fn compact_length(&mut self, null: Null, field: &'static str) -> Result<Option<u64>, Refused> {
        match self.uvarint(field)? {
            0 if null == Null::Allowed => Ok(None),
            0 => Err(Refused::new(field, RefusedKind::Null)),
            n => Ok(Some(u64::from(n) - 1)),
        }
    }

    fn utf8(&mut self, n: Option<u64>, field: &'static str) -> Result<(), Refused> {
        if let Some(n) = n {
            let s = self.take(n, field)?;
            if std::str::from_utf8(s).is_err() {
                return Err(Refused::new(field, RefusedKind::NotUtf8));
            }
        }
        Ok(())
    }

    /// `types::String`: an i16 length, then UTF-8.
    pub(crate) fn string(&mut self, field: &'static str, null: Null) -> Result<(), Refused> {
        let n = self.i16(field)?;
        let n = self.signed_length(i64::from(n), null, field)?;
        self.utf8(n, field)
    }

    /// `types::CompactString`: a varint length + 1, then UTF-8.
    pub(crate) fn compact_string(
        &mut self,
        field: &'static str,
        null: Null,
    ) -> Result<(), Refused> {
        let n = self.compact_length(null, field)?;
        self.utf8(n, field)
    }

    /// `types::Bytes` (and record sets): an i32 length, then the bytes.
    pub(crate) fn bytes(&mut self, field: &'static str, null: Null) -> Result<(), Refused> {
        let n = self.i32(field)?;
        if let Some(n) = self.signed_length(i64::from(n), null, field)? {
            self.take(n, field)?;
        }
        Ok(())
    }

    /// `types::CompactBytes`: a varint length + 1, then the bytes.
    pub(crate) fn compact_bytes(&mut self, field: &'static str, null: Null) -> Result<(), Refused> {
        if let Some(n) = self.compact_length(null, field)? {
            self.take(n, field)?;
        }
        Ok(())
    }

    fn elements(
        &mut self,
        count: Option<u64>,
        field: &'static str,
        mut each: impl FnMut(&mut Self) -> Result<(), Refused>,
    ) -> Result<(), Refused> {
        let Some(count) = count else {
            return Ok(());
        };
        if count > self.rest.len() as u64 {
            return Err(Refused::new(
                field,
                RefusedKind::CountBeyondBody {
                    count,
                    remaining_bytes: self.rest.len(),
                },
            ));
        }
        for _ in 0..count {
            each(self)?;
        }
        Ok(())
    }

    /// `types::Array`: an i32 count, then `each` once per element.
    pub(crate) fn array(
        &mut self,
        field: &'static str,
        null: Null,
        each: impl FnMut(&mut Self) -> Result<(), Refused>,
    ) -> Result<(), Refused> {
        #[cfg(test)]
        let before = self.rest.len();
        let n = self.i32(field)?;
        #[cfg(test)]
        self.note_count(before, false, field);
        let count = self.signed_length(i64::from(n), null, field)?;
        self.elements(count, field, each)
    }

    /// `types::CompactArray`: a varint count + 1, then `each` once per element.
    pub(crate) fn compact_array(
        &mut self,
        field: &'static str,
        null: Null,
        each: impl FnMut(&mut Self) -> Result<(), Refused>,
    ) -> Result<(), Refused> {
        #[cfg(test)]
        let before = self.rest.len();
        let count = self.compact_length(null, field);
        #[cfg(test)]
        if before > self.rest.len() {
            self.note_count(before, true, field);
        }
        self.elements(count?, field, each)
    }
}

#[cfg(test)]
mod tests;
