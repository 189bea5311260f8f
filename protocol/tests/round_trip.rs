//! Every message round-trips through a frame, and arbitrary bytes never make
//! the decoder panic.

use metacrypt_protocol::policy::{Effect, PolicyRule};
use metacrypt_protocol::*;

fn caller() -> Caller {
    Caller {
        username: "alice".to_owned(),
        roles: vec!["admin".to_owned(), "ops".to_owned()],
        admin: true,
        session: Some("5e55".to_owned()),
    }
}

fn issuer_info() -> IssuerInfo {
    IssuerInfo {
        name: "default".to_owned(),
        key_algorithm: KeyAlgorithm::EcdsaP256,
        subject: "CN=Metacrypt Issuer default".to_owned(),
        serial_number: "4a1f".to_owned(),
        not_before: "2026-01-01T00:00:00Z".to_owned(),
        not_after: "2031-01-01T00:00:00Z".to_owned(),
        certificate: "-----BEGIN CERTIFICATE-----\n...".to_owned(),
        constraints: IssuerConstraints::default(),
    }
}

fn cert_record() -> CertRecord {
    CertRecord {
        serial_number: "7f00aa".to_owned(),
        issuer: "default".to_owned(),
        profile: Profile::Peer,
        common_name: "db.example.com".to_owned(),
        dns_names: vec!["db.example.com".to_owned()],
        ip_addresses: vec!["192.0.2.10".to_owned(), "2001:db8::1".to_owned()],
        email_addresses: vec!["ops@example.com".to_owned()],
        uris: vec!["spiffe://example.org/db".to_owned()],
        key_algorithm: KeyAlgorithm::Ed25519,
        not_before: "2026-01-01T00:00:00Z".to_owned(),
        not_after: "2026-01-02T00:00:00Z".to_owned(),
        issued_by: "alice".to_owned(),
        certificate: "pem".to_owned(),
        revoked_at: Some("2026-01-01T12:00:00Z".to_owned()),
        revocation_reason: Some("keyCompromise".to_owned()),
        csr_signed: true,
        renewed_from: Some("7f00a9".to_owned()),
        renewed_by: None,
    }
}

fn requests() -> Vec<RequestBody> {
    let mut bodies = vec![
        RequestBody::Status,
        RequestBody::Init {
            password: "a long seal password".into(),
        },
        RequestBody::Unseal {
            password: "a long seal password".into(),
        },
        RequestBody::Seal,
        RequestBody::ListMounts,
        RequestBody::Mount {
            name: "pki".to_owned(),
            config: MountConfig::Ca(CaMountConfig {
                common_name: Some("Example Root".to_owned()),
                organization: Some("Example".to_owned()),
                key_algorithm: Some(KeyAlgorithm::EcdsaP384),
                ttl: Some("3650d".to_owned()),
                public_base_url: Some("http://pki.example.com".to_owned()),
            }),
        },
        RequestBody::Mount {
            name: "pki2".to_owned(),
            config: MountConfig::Ca(CaMountConfig::default()),
        },
        RequestBody::Unmount {
            name: "pki".to_owned(),
        },
    ];
    let ops = vec![
        CaRequest::GetRoot,
        CaRequest::GetChain { issuer: None },
        CaRequest::GetChain {
            issuer: Some("default".to_owned()),
        },
        CaRequest::GetIssuer {
            name: "default".to_owned(),
        },
        CaRequest::CreateIssuer {
            name: "web".to_owned(),
            key_algorithm: Some(KeyAlgorithm::Rsa2048),
            ttl: Some("5y".to_owned()),
            constraints: IssuerConstraints {
                allowed_domains: vec!["example.com".to_owned()],
                allow_wildcards: true,
                allow_ip_sans: true,
                allowed_ip_ranges: vec!["10.0.0.0/8".to_owned()],
                max_ttl: Some("30d".to_owned()),
            },
        },
        CaRequest::ListIssuers,
        CaRequest::Issue(IssueRequest {
            issuer: "default".to_owned(),
            profile: Profile::Server,
            common_name: "svc.example.com".to_owned(),
            dns_names: vec!["svc.example.com".to_owned(), "alt.example.com".to_owned()],
            ip_addresses: vec!["127.0.0.1".to_owned()],
            ttl: Some("24h".to_owned()),
            key_algorithm: None,
            email_addresses: vec!["ops@example.com".to_owned()],
            uris: vec!["spiffe://example.org/svc".to_owned()],
            key_usages: Some(vec!["digitalSignature".to_owned()]),
            extended_key_usages: None,
        }),
        CaRequest::Revoke {
            serial: "7f00aa".to_owned(),
            reason: Some("superseded".to_owned()),
            issuer: Some("default".to_owned()),
        },
        CaRequest::GetCrl {
            issuer: "default".to_owned(),
        },
        CaRequest::Renew {
            serial: "7f00aa".to_owned(),
            ttl: None,
            issuer: None,
        },
        CaRequest::DeleteIssuer {
            name: "web".to_owned(),
            force: true,
        },
        CaRequest::GetCert {
            serial: "7f00aa".to_owned(),
        },
        CaRequest::ListCerts {
            issuer: None,
            limit: None,
            after: None,
        },
    ];
    bodies.extend(ops.into_iter().map(|op| RequestBody::Ca {
        mount: "pki".to_owned(),
        op,
    }));
    bodies.extend([
        RequestBody::ListPolicyRules,
        RequestBody::PutPolicyRule {
            name: "ops-issue".to_owned(),
            rule: policy_rule(),
        },
        RequestBody::DeletePolicyRule {
            name: "ops-issue".to_owned(),
        },
        RequestBody::RecordDenial {
            operation: "issue".to_owned(),
            resource: Some("pki/issue/web".to_owned()),
            reason: "no rule allows pki/issue/web for bob".to_owned(),
            status: 403,
        },
        RequestBody::RecordDenial {
            operation: "mount".to_owned(),
            resource: None,
            reason: "mount requires the admin role".to_owned(),
            status: 403,
        },
    ]);
    bodies
}

fn policy_rule() -> PolicyRule {
    PolicyRule {
        effect: Effect::Deny,
        users: vec!["*".to_owned()],
        roles: vec!["ops".to_owned()],
        resources: vec!["pki/issue/*".to_owned(), "lab/**".to_owned()],
    }
}

fn client_messages() -> Vec<ClientMessage> {
    let mut messages = vec![ClientMessage::Hello(Hello {
        version: PROTOCOL_VERSION,
        role: SocketRole::Front,
        client: "test".to_owned(),
    })];
    for (i, body) in requests().into_iter().enumerate() {
        messages.push(ClientMessage::Request(Request {
            id: i as u64,
            trace_id: format!("trace-{i}"),
            remote_addr: match i % 3 {
                0 => Some("192.0.2.7:50312".to_owned()),
                1 => Some("[2001:db8::7]:443".to_owned()),
                _ => None,
            },
            caller: if i % 2 == 0 { Some(caller()) } else { None },
            body,
        }));
    }
    messages
}

fn server_messages() -> Vec<ServerMessage> {
    let mut bodies = vec![
        ResponseBody::State(SealState::Uninitialized),
        ResponseBody::State(SealState::Initializing),
        ResponseBody::Mounts(vec![MountInfo {
            name: "pki".to_owned(),
            engine_type: "ca".to_owned(),
            created_at: "2026-01-01T00:00:00Z".to_owned(),
        }]),
        ResponseBody::Mount(MountInfo {
            name: "pki".to_owned(),
            engine_type: "ca".to_owned(),
            created_at: "2026-01-01T00:00:00Z".to_owned(),
        }),
        ResponseBody::Unmounted,
    ];
    let ca = vec![
        CaResponse::Certificate("pem".to_owned()),
        CaResponse::Chain(vec!["a".to_owned(), "b".to_owned()]),
        CaResponse::Issuer(issuer_info()),
        CaResponse::Issuers(vec![issuer_info(), issuer_info()]),
        CaResponse::Issued(IssuedCertificate {
            certificate: "cert".to_owned(),
            private_key: "-----BEGIN PRIVATE KEY-----".into(),
            private_key_type: "ec".to_owned(),
            issuing_ca: "issuer".to_owned(),
            chain: vec!["issuer".to_owned(), "root".to_owned()],
            serial_number: "01".to_owned(),
            not_before: "2026-01-01T00:00:00Z".to_owned(),
            not_after: "2026-01-02T00:00:00Z".to_owned(),
            warnings: vec!["ttl capped".to_owned()],
        }),
        CaResponse::Cert(cert_record()),
        CaResponse::Certs(vec![cert_record()]),
        CaResponse::Signed(SignedCertificate {
            certificate: "pem".to_owned(),
            issuing_ca: "issuer".to_owned(),
            chain: vec!["issuer".to_owned(), "root".to_owned()],
            serial_number: "7f00ab".to_owned(),
            not_before: "2026-01-01T00:00:00Z".to_owned(),
            not_after: "2026-01-02T00:00:00Z".to_owned(),
            warnings: vec!["capped".to_owned()],
        }),
        CaResponse::Crl(vec![0x30, 0x03, 0x02, 0x01, 0x01]),
        CaResponse::IssuerDeleted {
            name: "web".to_owned(),
            active_certificates: 3,
        },
    ];
    bodies.extend(ca.into_iter().map(ResponseBody::Ca));
    bodies.extend([
        ResponseBody::PolicyRules(
            [
                ("a".to_owned(), policy_rule()),
                ("b".to_owned(), policy_rule()),
            ]
            .into_iter()
            .collect(),
        ),
        ResponseBody::PolicyRule(policy_rule()),
        ResponseBody::PolicyRuleDeleted,
        ResponseBody::DenialRecorded,
    ]);

    let mut messages = vec![
        ServerMessage::Hello(Ok(HelloReply {
            version: PROTOCOL_VERSION,
            role: SocketRole::Admin,
            state: SealState::Sealed,
        })),
        ServerMessage::Hello(Err(ErrorBody::invalid_request(
            "protocol version mismatch: client 2, keyd 1",
        ))),
        ServerMessage::StateChanged(SealState::Unsealed),
    ];
    for (i, body) in bodies.into_iter().enumerate() {
        messages.push(ServerMessage::Reply(Reply {
            id: i as u64,
            result: Ok(body),
        }));
    }
    for code in ErrorCode::ALL {
        messages.push(ServerMessage::Reply(Reply {
            id: 99,
            result: Err(ErrorBody::new(code, "message")),
        }));
    }
    messages.push(ServerMessage::Reply(Reply {
        id: 100,
        result: Err(ErrorBody::too_many_attempts(42)),
    }));
    messages
}

#[test]
fn client_messages_round_trip() {
    for message in client_messages() {
        let frame = encode_frame(&message).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        let back: ClientMessage = decode_payload(&frame[4..]).unwrap();
        assert_eq!(back, message);
    }
}

#[test]
fn server_messages_round_trip() {
    for message in server_messages() {
        let frame = encode_frame(&message).unwrap();
        let mut reader: &[u8] = &frame;
        let back: ServerMessage = read_frame(&mut reader).unwrap();
        assert_eq!(back, message);
    }
}

#[test]
fn secrets_are_redacted_in_debug() {
    for message in client_messages() {
        let text = format!("{message:?}");
        assert!(!text.contains("a long seal password"), "{text}");
    }
    for message in server_messages() {
        let text = format!("{message:?}");
        assert!(!text.contains("BEGIN PRIVATE KEY"), "{text}");
    }
}

/// A small xorshift generator so the fuzz input is the same on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..200_000 {
        let len = (rng.next() % 64) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = decode_payload::<ClientMessage>(&bytes);
        let _ = decode_payload::<ServerMessage>(&bytes);
        let mut framed: &[u8] = &bytes;
        let _ = read_frame::<_, ClientMessage>(&mut framed);
        if round % 1000 == 0 {
            // Also mutate valid frames, which reach deeper into the decoder.
            for message in client_messages() {
                let mut frame = encode_frame(&message).unwrap().to_vec();
                let at = 4 + (rng.next() as usize % (frame.len() - 4));
                frame[at] ^= rng.next() as u8 | 1;
                let _ = decode_payload::<ClientMessage>(&frame[4..]);
            }
        }
    }
}

#[test]
fn huge_length_prefix_inside_payload_is_an_error() {
    // A Mounts reply that claims 2^62 entries must fail, not allocate.
    let mut payload = vec![1u8, 0, 0, 1];
    payload.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f]);
    assert!(decode_payload::<ServerMessage>(&payload).is_err());
}
