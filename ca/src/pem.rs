//! PEM encoding (RFC 7468) of certificates and PKCS#8 keys.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::{Zeroize, Zeroizing};

/// Input octets per PEM line: 48 octets encode to 64 base64 characters.
const LINE_INPUT_LEN: usize = 48;
const LINE_OUTPUT_LEN: usize = 64;

/// Encodes `der` as PEM with the given label, such as `CERTIFICATE`.
pub fn encode(label: &str, der: &[u8]) -> String {
    let mut out = String::with_capacity(encoded_len(label, der.len()));
    write_pem(label, der, &mut out);
    out
}

/// Encodes a secret (a PKCS#8 private key) as PEM into a zeroizing string.
///
/// The string's capacity is reserved up front so it never reallocates and
/// leaves no unzeroized copy behind, and the per-line buffer is wiped after
/// each line.
pub fn encode_secret(label: &str, der: &[u8]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(encoded_len(label, der.len())));
    write_pem(label, der, &mut out);
    out
}

fn encoded_len(label: &str, der_len: usize) -> usize {
    let lines = der_len.div_ceil(LINE_INPUT_LEN);
    let body = der_len.div_ceil(3) * 4 + lines;
    // "-----BEGIN " + label + "-----\n" and the same for END.
    body + 2 * (label.len() + 17)
}

fn write_pem(label: &str, der: &[u8], out: &mut String) {
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    let mut line = [0u8; LINE_OUTPUT_LEN];
    for chunk in der.chunks(LINE_INPUT_LEN) {
        // A 48-octet chunk always fits the 64-octet buffer, so the error
        // branch cannot be taken. It would leave the line out rather than panic.
        if let Ok(written) = STANDARD.encode_slice(chunk, &mut line) {
            // base64 output is ASCII.
            out.extend(line[..written].iter().map(|&byte| char::from(byte)));
            out.push('\n');
        }
        line.zeroize();
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_wrap_at_64_characters() {
        let der: Vec<u8> = (0..=255u8).cycle().take(100).collect();
        let pem = encode("CERTIFICATE", &der);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines.first(), Some(&"-----BEGIN CERTIFICATE-----"));
        assert_eq!(lines.last(), Some(&"-----END CERTIFICATE-----"));
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines[2].len(), 64);
        assert_eq!(lines[3].len(), 8);
        let body: String = lines[1..lines.len() - 1].concat();
        assert_eq!(STANDARD.decode(body).unwrap(), der);
    }

    #[test]
    fn reserved_capacity_is_never_exceeded() {
        for len in [0usize, 1, 47, 48, 49, 95, 96, 1000] {
            let der = vec![0xa5u8; len];
            let pem = encode_secret("PRIVATE KEY", &der);
            assert!(pem.len() <= encoded_len("PRIVATE KEY", len), "length {len}");
        }
    }
}
