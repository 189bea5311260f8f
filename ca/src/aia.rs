//! The Authority Information Access extension (RFC 5280, section 4.2.2.1)
//! with one caIssuers access description. rcgen 0.14 has no field for it,
//! so the extension value is encoded here and added as a custom extension.
//!
//! ```text
//! AuthorityInfoAccessSyntax ::= SEQUENCE SIZE (1..MAX) OF AccessDescription
//! AccessDescription ::= SEQUENCE {
//!     accessMethod    OBJECT IDENTIFIER,   -- id-ad-caIssuers
//!     accessLocation  GeneralName }        -- uniformResourceIdentifier [6]
//! ```

use rcgen::CustomExtension;

use crate::error::CaError;

/// id-pe-authorityInfoAccess, 1.3.6.1.5.5.7.1.1.
const OID_AUTHORITY_INFO_ACCESS: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 1, 1];

/// The DER content octets of id-ad-caIssuers, 1.3.6.1.5.5.7.48.2.
const ID_AD_CA_ISSUERS: [u8; 8] = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x02];

const TAG_SEQUENCE: u8 = 0x30;
const TAG_OBJECT_IDENTIFIER: u8 = 0x06;
/// The context-specific, primitive tag [6] of a uniformResourceIdentifier
/// GeneralName, which is implicitly tagged (RFC 5280 uses IMPLICIT TAGS).
const TAG_URI: u8 = 0x86;

/// Builds a non-critical Authority Information Access extension whose one
/// access description is id-ad-caIssuers with `uri` as a
/// uniformResourceIdentifier.
pub(crate) fn ca_issuers_extension(uri: &str) -> Result<CustomExtension, CaError> {
    let value = encode_ca_issuers(uri)?;
    // from_oid_content creates the extension as non-critical, which RFC
    // 5280 requires for this extension.
    Ok(CustomExtension::from_oid_content(
        &OID_AUTHORITY_INFO_ACCESS,
        value,
    ))
}

/// Encodes the extension value (the content of extnValue) for one caIssuers
/// URI. The URI must be non-empty printable ASCII without spaces, which
/// is a subset of IA5String.
fn encode_ca_issuers(uri: &str) -> Result<Vec<u8>, CaError> {
    if uri.is_empty() || !uri.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(CaError::Signing {
            reason: format!(
                "caIssuers URI {uri:?} must be non-empty printable ASCII without spaces"
            ),
        });
    }
    let access_method = tlv(TAG_OBJECT_IDENTIFIER, &ID_AD_CA_ISSUERS);
    let access_location = tlv(TAG_URI, uri.as_bytes());
    let description = tlv(TAG_SEQUENCE, &[access_method, access_location].concat());
    Ok(tlv(TAG_SEQUENCE, &description))
}

/// Encodes one DER tag-length-value with a single-octet tag.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    push_length(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// Appends a DER definite length: the short form below 128, otherwise the
/// long form with the fewest octets (X.690, section 10.1).
fn push_length(out: &mut Vec<u8>, length: usize) {
    if length < 0x80 {
        out.push(length as u8);
        return;
    }
    let octets = length.to_be_bytes();
    let leading_zeros = octets.iter().take_while(|&&octet| octet == 0).count();
    let significant = &octets[leading_zeros..];
    out.push(0x80 | significant.len() as u8);
    out.extend_from_slice(significant);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn length_octets(length: usize) -> Vec<u8> {
        let mut out = Vec::new();
        push_length(&mut out, length);
        out
    }

    #[test]
    fn lengths_use_the_shortest_form() {
        assert_eq!(length_octets(0), [0x00]);
        assert_eq!(length_octets(0x7f), [0x7f]);
        assert_eq!(length_octets(0x80), [0x81, 0x80]);
        assert_eq!(length_octets(0xff), [0x81, 0xff]);
        assert_eq!(length_octets(0x100), [0x82, 0x01, 0x00]);
        assert_eq!(length_octets(0x1_0000), [0x83, 0x01, 0x00, 0x00]);
    }

    #[test]
    fn short_uri_encodes_to_known_bytes() {
        let value = encode_ca_issuers("http://a/").unwrap();
        let expected = hex::decode(concat!(
            "3017",                 // AuthorityInfoAccessSyntax, 23 octets
            "3015",                 // AccessDescription, 21 octets
            "06082b06010505073002", // id-ad-caIssuers
            "8609",                 // uniformResourceIdentifier, 9 octets
            "687474703a2f2f612f",   // http://a/
        ))
        .unwrap();
        assert_eq!(value, expected);
    }

    #[test]
    fn long_uri_uses_long_form_lengths() {
        let uri = format!("http://pki.example.com/{}", "a".repeat(300));
        let value = encode_ca_issuers(&uri).unwrap();
        let uri_len = uri.len();
        let description_len = 10 + 4 + uri_len;
        let header = [
            vec![0x30, 0x82],
            ((description_len + 4) as u16).to_be_bytes().to_vec(),
            vec![0x30, 0x82],
            (description_len as u16).to_be_bytes().to_vec(),
        ]
        .concat();
        assert_eq!(value[..8], header[..]);
        assert_eq!(
            value[8..18],
            hex::decode("06082b06010505073002").unwrap()[..]
        );
        assert_eq!(value[18..20], [0x86, 0x82]);
        assert_eq!(value[20..22], (uri_len as u16).to_be_bytes());
        assert_eq!(&value[22..], uri.as_bytes());
    }

    #[test]
    fn extension_is_not_critical() {
        let extension = ca_issuers_extension("http://pki.example.com/ca").unwrap();
        assert!(!extension.criticality());
        let oid: Vec<u64> = extension.oid_components().collect();
        assert_eq!(oid, OID_AUTHORITY_INFO_ACCESS);
    }

    #[test]
    fn invalid_uris_are_rejected() {
        for uri in [
            "",
            "http://pki.example.com/a b",
            "http://bücher.example/",
            "http://a/\n",
        ] {
            let error = encode_ca_issuers(uri).unwrap_err();
            assert!(
                matches!(error, CaError::Signing { .. }),
                "{uri:?}: {error:?}"
            );
        }
    }
}
