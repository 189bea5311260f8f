//! The Authority Information Access extension (RFC 5280, section 4.2.2.1)
//! with one caIssuers access description. rcgen 0.14 has no field for it,
//! so the extension value is encoded here with yasna and added as a
//! custom extension.
//!
//! ```text
//! AuthorityInfoAccessSyntax ::= SEQUENCE SIZE (1..MAX) OF AccessDescription
//! AccessDescription ::= SEQUENCE {
//!     accessMethod    OBJECT IDENTIFIER,   -- id-ad-caIssuers
//!     accessLocation  GeneralName }        -- uniformResourceIdentifier [6]
//! ```

use rcgen::CustomExtension;
use yasna::Tag;
use yasna::models::ObjectIdentifier;

use crate::error::CaError;

/// id-pe-authorityInfoAccess, 1.3.6.1.5.5.7.1.1.
const OID_AUTHORITY_INFO_ACCESS: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 1, 1];

/// id-ad-caIssuers, 1.3.6.1.5.5.7.48.2.
const OID_CA_ISSUERS: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 48, 2];

/// The context-specific tag [6] of a uniformResourceIdentifier
/// GeneralName, which is implicitly tagged (RFC 5280 uses IMPLICIT TAGS).
const TAG_URI: u64 = 6;

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
    let method = ObjectIdentifier::from_slice(&OID_CA_ISSUERS);
    Ok(yasna::construct_der(|writer| {
        writer.write_sequence(|syntax| {
            syntax.next().write_sequence(|description| {
                description.next().write_oid(&method);
                description
                    .next()
                    .write_tagged_implicit(Tag::context(TAG_URI), |location| {
                        location.write_ia5_string(uri)
                    });
            });
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
