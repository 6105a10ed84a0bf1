//! Time-series ids (and the other 11-character ids of the protocol: job handles, org and user
//! ids): 8 raw bytes on the binary wire, 11 characters of unpadded URL-safe base64 in JSON
//! (protocol doc §5).
//!
//! Invariant: parsing accepts exactly the canonical form that encoding produces — 11 characters
//! of `A–Z a–z 0–9 - _` whose last character carries no bits beyond the 64 of the id — so every
//! accepted string round-trips byte for byte. Anything else is a [`TsidError`].

use std::fmt;
use std::str::FromStr;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Length of the JSON form of an id.
pub const TSID_STR_LEN: usize = 11;

/// A 64-bit SignalFlow id. Ordered and hashed by its numeric value.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Tsid(pub u64);

/// Why a string is not a TSID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TsidError {
    #[error("a TSID is 11 characters of base64url, got {0} characters")]
    Length(usize),
    #[error("character {0:?} is not in the base64url alphabet")]
    Character(char),
    #[error("the last character sets bits beyond the 64-bit id")]
    TrailingBits,
}

impl Tsid {
    /// The 11 ASCII bytes of the JSON form, without allocating.
    pub fn encode(self) -> [u8; TSID_STR_LEN] {
        let mut out = [0u8; TSID_STR_LEN];
        // 64 bits = ten 6-bit groups and a final 4-bit group padded with two zero bits.
        for (i, slot) in out.iter_mut().enumerate().take(10) {
            let shift = 58 - 6 * i as u32;
            *slot = ALPHABET[((self.0 >> shift) & 0x3f) as usize];
        }
        out[10] = ALPHABET[((self.0 & 0x0f) << 2) as usize];
        out
    }

    /// Parses the canonical 11-character form.
    pub fn parse(s: &str) -> Result<Self, TsidError> {
        if let Some(c) = s.chars().find(|c| !c.is_ascii()) {
            return Err(TsidError::Character(c));
        }
        let bytes = s.as_bytes();
        if bytes.len() != TSID_STR_LEN {
            return Err(TsidError::Length(bytes.len()));
        }
        let mut value: u64 = 0;
        for &b in &bytes[..10] {
            value = (value << 6) | u64::from(sextet(b)?);
        }
        let last = sextet(bytes[10])?;
        if last & 0b11 != 0 {
            return Err(TsidError::TrailingBits);
        }
        Ok(Tsid((value << 4) | u64::from(last >> 2)))
    }

    /// Writes the JSON form into `out` (used by renderers that reuse one buffer).
    pub fn write_to(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.encode());
    }
}

fn sextet(b: u8) -> Result<u8, TsidError> {
    match b {
        b'A'..=b'Z' => Ok(b - b'A'),
        b'a'..=b'z' => Ok(b - b'a' + 26),
        b'0'..=b'9' => Ok(b - b'0' + 52),
        b'-' => Ok(62),
        b'_' => Ok(63),
        _ => Err(TsidError::Character(b as char)),
    }
}

impl fmt::Display for Tsid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let encoded = self.encode();
        // The alphabet is ASCII, so this never fails.
        f.write_str(std::str::from_utf8(&encoded).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Tsid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tsid({self})")
    }
}

impl FromStr for Tsid {
    type Err = TsidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tsid::parse(s)
    }
}

impl serde::Serialize for Tsid {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let encoded = self.encode();
        serializer.serialize_str(std::str::from_utf8(&encoded).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> serde::Deserialize<'de> for Tsid {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Tsid::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ids_from_the_clients_round_trip() {
        let cases: [(u64, &str); 5] = [
            (1, "AAAAAAAAAAE"),
            (1_262_791_438, "AAAAAEtEqw4"),
            (1_208_112_744, "AAAAAEgCVmg"),
            (u64::MAX, "__________8"),
            (902_326_356_308_684_800, "DIW1ClNAcAA"),
        ];
        for (id, text) in cases {
            assert_eq!(Tsid(id).to_string(), text);
            assert_eq!(Tsid::parse(text), Ok(Tsid(id)));
        }
    }

    #[test]
    fn rejects_everything_but_the_canonical_form() {
        assert_eq!(Tsid::parse(""), Err(TsidError::Length(0)));
        assert_eq!(Tsid::parse("AAA"), Err(TsidError::Length(3)));
        assert_eq!(Tsid::parse("AAAAAAA"), Err(TsidError::Length(7)));
        assert_eq!(Tsid::parse("AAAAAAAAAAE="), Err(TsidError::Length(12)));
        assert_eq!(Tsid::parse("AAAAAAAAA+E"), Err(TsidError::Character('+')));
        assert_eq!(Tsid::parse("AAAAAAAAAA/"), Err(TsidError::Character('/')));
        // 'F' = 5 sets one of the two spare bits.
        assert_eq!(Tsid::parse("AAAAAAAAAAF"), Err(TsidError::TrailingBits));
        assert_eq!(Tsid::parse("AAAAAAAAAAé"), Err(TsidError::Character('é')));
    }

    #[test]
    fn serde_uses_the_string_form() {
        let json = serde_json::to_string(&Tsid(1)).unwrap();
        assert_eq!(json, "\"AAAAAAAAAAE\"");
        let back: Tsid = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Tsid(1));
        assert!(serde_json::from_str::<Tsid>("\"nope\"").is_err());
        assert!(serde_json::from_str::<Tsid>("12").is_err());
    }
}
