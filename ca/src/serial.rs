//! Certificate serial numbers.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use crate::error::CaError;

/// Length in octets of the serials this crate draws.
pub const SERIAL_LEN: usize = 16;

/// Draws a random serial number: 16 octets whose first octet is in
/// `0x01..=0x7f`.
///
/// Clearing the top bit keeps the INTEGER positive without a leading zero
/// octet, and a nonzero first octet keeps the DER encoding minimal at
/// exactly 16 octets, so the serial carries 127 bits of which at least 120
/// are random (RFC 5280 allows up to 20 octets, the CA/Browser Forum requires
/// at least 64 random bits).
pub fn random_serial() -> Result<[u8; SERIAL_LEN], CaError> {
    let rng = SystemRandom::new();
    let mut serial = [0u8; SERIAL_LEN];
    loop {
        rng.fill(&mut serial).map_err(|_| CaError::Signing {
            reason: "the system random generator failed".to_owned(),
        })?;
        serial[0] &= 0x7f;
        // A zero first octet (probability 1/128) would shorten the DER
        // encoding, so the draw is repeated.
        if serial[0] != 0 {
            return Ok(serial);
        }
    }
}

/// Formats the content octets of a DER INTEGER as lowercase hex without
/// colons, dropping a leading zero octet that only marks the value positive.
pub fn serial_hex(der_content: &[u8]) -> String {
    let trimmed = match der_content {
        [0, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    hex::encode(trimmed)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn serials_are_positive_minimal_and_unique() {
        const DRAWS: usize = 100_000;
        let mut seen = HashSet::with_capacity(DRAWS);
        let mut ones = [0u32; SERIAL_LEN * 8];
        for _ in 0..DRAWS {
            let serial = random_serial().unwrap();
            assert!(serial.len() <= 20, "longer than 20 octets: {serial:02x?}");
            assert_eq!(serial[0] & 0x80, 0, "negative: {serial:02x?}");
            assert_ne!(serial[0], 0, "not DER-minimal: {serial:02x?}");
            assert!(seen.insert(serial), "duplicate serial {serial:02x?}");
            for (index, bit) in ones.iter_mut().enumerate() {
                *bit += u32::from((serial[index / 8] >> (7 - index % 8)) & 1);
            }
        }

        // Every bit but the sign bit must vary. Over 100,000 draws the band of
        // 48% to 52% is 12.6 standard deviations wide on each side of a fair
        // bit's mean, so a random bit falls outside it with a probability
        // below 1e-30.
        assert_eq!(ones[0], 0, "the sign bit was set");
        let varying = ones[1..]
            .iter()
            .filter(|&&count| (48_000..=52_000).contains(&count))
            .count();
        // Bits 1 to 7 of the first octet are set with probability 64/127
        // because a zero first octet is redrawn, which still stays in the band.
        assert_eq!(varying, SERIAL_LEN * 8 - 1, "bit counts: {ones:?}");
    }

    #[test]
    fn serial_hex_is_lowercase_without_sign_octet() {
        assert_eq!(serial_hex(&[0x00, 0x9a, 0x0b]), "9a0b");
        assert_eq!(serial_hex(&[0x7f, 0xAB]), "7fab");
        assert_eq!(serial_hex(&[0x00]), "00");
    }
}
