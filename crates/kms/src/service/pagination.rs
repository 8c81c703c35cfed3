//! Limit and Marker, as every List operation takes them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;

use crate::KmsError;
use crate::api::in_range;

/// Which listing a marker belongs to, so one listing's marker is refused by
/// another.
#[derive(Clone, Copy)]
#[repr(u8)]
pub(crate) enum Listing {
    Keys = 1,
    Aliases = 2,
    Tags = 3,
    Rotations = 4,
    Grants = 5,
}

/// The page size: `limit` or `default`, which must lie in `1..=max`.
pub(crate) fn page_size(limit: Option<i64>, default: usize, max: i64) -> Result<usize, KmsError> {
    match limit {
        None => Ok(default),
        Some(l) => Ok(in_range(l, "limit", 1, max)? as usize),
    }
}

/// An opaque marker for "continue after `last`".
pub(crate) fn encode(listing: Listing, last: &[u8]) -> String {
    let mut raw = Vec::with_capacity(last.len() + 1);
    raw.push(listing as u8);
    raw.extend_from_slice(last);
    B64URL.encode(raw)
}

/// The position a marker names, or `InvalidMarkerException`.
pub(crate) fn decode(listing: Listing, marker: Option<&str>) -> Result<Option<Vec<u8>>, KmsError> {
    let Some(m) = marker else {
        return Ok(None);
    };
    let invalid = || KmsError::InvalidMarker(format!("Invalid marker '{m}'"));
    if m.is_empty() || m.len() > 1024 {
        return Err(invalid());
    }
    let raw = B64URL.decode(m.as_bytes()).map_err(|_| invalid())?;
    match raw.split_first() {
        Some((&kind, rest)) if kind == listing as u8 => Ok(Some(rest.to_vec())),
        _ => Err(invalid()),
    }
}

/// Cuts `items` (fetched with one extra) to `size`, returning the marker for
/// the next page if there is one.
pub(crate) fn finish<T>(
    listing: Listing,
    mut items: Vec<T>,
    size: usize,
    position: impl Fn(&T) -> Vec<u8>,
) -> (Vec<T>, Option<String>) {
    if items.len() > size {
        items.truncate(size);
        let next = items.last().map(|last| encode(listing, &position(last)));
        (items, next)
    } else {
        (items, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_reject_foreign_ones() {
        let m = encode(Listing::Keys, b"abc");
        assert_eq!(decode(Listing::Keys, Some(&m)).unwrap().unwrap(), b"abc");
        assert!(matches!(
            decode(Listing::Aliases, Some(&m)),
            Err(KmsError::InvalidMarker(_))
        ));
        for bad in ["", "!!!", "AA==", &"A".repeat(2000)] {
            assert!(
                matches!(
                    decode(Listing::Keys, Some(bad)),
                    Err(KmsError::InvalidMarker(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(decode(Listing::Keys, None).unwrap(), None);
        assert!(page_size(Some(0), 10, 100).is_err());
        assert!(page_size(Some(101), 10, 100).is_err());
        assert_eq!(page_size(None, 10, 100).unwrap(), 10);
    }
}
