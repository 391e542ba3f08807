//! The deployment PKI through real TLS 1.3 handshakes: rustls client and server
//! connections in memory, bytes pumped between them, no sockets.

// One module, so that `cargo test pki` selects these tests too.
mod pki {
    use ntm_proto::crypto::pk::PublicKey;
    use ntm_proto::engine::Role;
    use ntm_proto::wire::Fqdn;
    use ntm_servers::ca::{Ca, Issued};
    use ntm_servers::pki::{self, ClientAuth, PkiError, TlsMaterial};
    use rcgen::{
        CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
        SanType, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
    };
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, SubjectPublicKeyInfoDer};
    use rustls::{CertificateError, ClientConfig, ClientConnection, ServerConfig, ServerConnection};
    use std::io::{Read, Write};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    const AS: &str = "as.example.net";
    const DC: &str = "dc.example.net";
    const RS: &str = "rs.example.net";
    const BOX: &str = "box1.home.example.net";

    fn fqdn(name: &str) -> Fqdn {
        Fqdn::new(name).unwrap()
    }

    fn issue(ca: &Ca, role: Role, name: &str) -> Issued {
        ca.issue(role, &fqdn(name), 30).unwrap()
    }

    fn material(ca: &Ca, issued: &Issued) -> TlsMaterial {
        TlsMaterial::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap()
    }

    fn issue_material(ca: &Ca, role: Role, name: &str) -> TlsMaterial {
        material(ca, &issue(ca, role, name))
    }

    fn public_key_of(key_pem: &str) -> PublicKey {
        let key = KeyPair::from_pem(key_pem).unwrap();
        PublicKey::from_p256(p256::PublicKey::from_sec1_bytes(key.public_key_raw()).unwrap())
    }

    /// An rcgen issuer with the CA's key, to craft certificates `Ca` would never issue.
    fn raw_issuer(ca: &Ca) -> Issuer<'static, KeyPair> {
        Issuer::from_ca_cert_pem(ca.cert_pem(), KeyPair::from_pem(&ca.key_pem()).unwrap()).unwrap()
    }

    fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().unwrap()
    }

    fn key(pem: &str) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Side {
        Client,
        Server,
    }

    /// Moves every pending TLS record from `from` to `to` and lets `to` process them.
    fn transfer<A, B>(
        from: &mut rustls::ConnectionCommon<A>,
        to: &mut rustls::ConnectionCommon<B>,
        process: impl Fn(&mut rustls::ConnectionCommon<B>) -> Result<(), rustls::Error>,
    ) -> Result<bool, rustls::Error> {
        let mut bytes = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut bytes).unwrap();
        }
        let moved = !bytes.is_empty();
        let mut rd = &bytes[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).unwrap();
            process(to)?;
        }
        Ok(moved)
    }

    /// A full handshake, then one message each way. The error says which side refused.
    fn connect(
        client: Arc<ClientConfig>,
        name: &str,
        server: Arc<ServerConfig>,
    ) -> Result<(ClientConnection, ServerConnection), (Side, rustls::Error)> {
        let mut c = ClientConnection::new(client, ServerName::try_from(name.to_owned()).unwrap()).unwrap();
        let mut s = ServerConnection::new(server).unwrap();
        let client_process = |c: &mut rustls::ConnectionCommon<_>| c.process_new_packets().map(|_| ());
        let server_process = |s: &mut rustls::ConnectionCommon<_>| s.process_new_packets().map(|_| ());
        loop {
            let a = transfer(&mut c, &mut s, server_process).map_err(|e| (Side::Server, e))?;
            let b = transfer(&mut s, &mut c, client_process).map_err(|e| (Side::Client, e))?;
            if !a && !b {
                break;
            }
        }
        assert!(!c.is_handshaking() && !s.is_handshaking(), "handshake stalled");

        c.writer().write_all(b"login").unwrap();
        transfer(&mut c, &mut s, server_process).map_err(|e| (Side::Server, e))?;
        let mut got = [0u8; 5];
        s.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"login");
        s.writer().write_all(b"ok").unwrap();
        transfer(&mut s, &mut c, client_process).map_err(|e| (Side::Client, e))?;
        let mut got = [0u8; 2];
        c.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ok");
        Ok((c, s))
    }

    fn refused(result: Result<(ClientConnection, ServerConnection), (Side, rustls::Error)>) -> (Side, rustls::Error) {
        match result {
            Ok(_) => panic!("the handshake succeeded"),
            Err(e) => e,
        }
    }

    #[test]
    fn device_certificate_login_to_as() {
        let ca = Ca::generate("NTMobile test CA", 30).unwrap();
        let as_m = issue_material(&ca, Role::As, AS);
        let device = issue(&ca, Role::Node, BOX);
        let device_m = material(&ca, &device);

        let (c, s) = connect(
            pki::client_config(&device_m).unwrap(),
            AS,
            pki::server_config(&as_m, ClientAuth::Optional).unwrap(),
        )
        .unwrap();

        let node = pki::connection_identity(&s).unwrap().expect("the device presented its certificate");
        assert_eq!(node.role, Role::Node);
        assert_eq!(node.name, fqdn(BOX));
        assert_eq!(node.public_key, Some(public_key_of(&device.key_pem)));
        assert_eq!(&node, device_m.identity());

        let server = pki::connection_identity(&c).unwrap().unwrap();
        assert_eq!((server.role, server.name), (Role::As, fqdn(AS)));
    }

    #[test]
    fn password_client_needs_no_certificate_at_the_as_only() {
        let ca = Ca::generate("NTMobile test CA", 30).unwrap();
        let as_m = issue_material(&ca, Role::As, AS);
        let dc_m = issue_material(&ca, Role::Dc, DC);
        let password_client = pki::client_config_without_cert(as_m.ca()).unwrap();

        let (_, s) =
            connect(password_client.clone(), AS, pki::server_config(&as_m, ClientAuth::Optional).unwrap()).unwrap();
        assert_eq!(pki::connection_identity(&s).unwrap(), None);

        let (side, error) =
            refused(connect(password_client, DC, pki::server_config(&dc_m, ClientAuth::Required).unwrap()));
        assert_eq!(side, Side::Server);
        assert_eq!(error, rustls::Error::NoCertificatesPresented);
    }

    #[test]
    fn client_certificate_from_another_ca_is_refused() {
        let ca = Ca::generate("NTMobile test CA", 30).unwrap();
        let other = Ca::generate("Someone else's CA", 30).unwrap();
        let as_m = issue_material(&ca, Role::As, AS);
        let dc_m = issue_material(&ca, Role::Dc, DC);
        // Trusts our CA (so it accepts the server) but presents a certificate from the other.
        let stranger = issue(&other, Role::Node, BOX);
        let client = ClientConfig::builder_with_provider(pki::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates({
                let mut roots = rustls::RootCertStore::empty();
                roots.add(as_m.ca().clone()).unwrap();
                roots
            })
            .with_client_auth_cert(certs(&stranger.cert_pem), key(&stranger.key_pem))
            .unwrap();
        let client = Arc::new(client);

        for (name, server) in [
            (AS, pki::server_config(&as_m, ClientAuth::Optional).unwrap()),
            (DC, pki::server_config(&dc_m, ClientAuth::Required).unwrap()),
        ] {
            let (side, error) = refused(connect(client.clone(), name, server));
            assert_eq!(side, Side::Server);
            assert_eq!(error, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
        }

        // And TlsMaterial will not even load it against our CA.
        let loaded = TlsMaterial::from_pem(ca.cert_pem(), &stranger.cert_pem, &stranger.key_pem);
        assert!(matches!(loaded, Err(PkiError::NotSignedByCa { .. })), "{loaded:?}");
    }

    /// A server configuration presenting an arbitrary chain, asking for no client certificate.
    fn raw_server(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Arc<ServerConfig> {
        let config = ServerConfig::builder_with_provider(pki::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        Arc::new(config)
    }

    #[test]
    fn server_certificate_signed_by_a_device_certificate_is_refused() {
        // A box owner extracts the device key and signs a certificate for the AS's name with it.
        // embedded-tls as shipped does not check that the issuer is a CA; webpki must.
        let ca = Ca::generate("NTMobile test CA", 30).unwrap();
        let device = issue(&ca, Role::Node, BOX);
        let device_issuer =
            Issuer::from_ca_cert_pem(&device.cert_pem, KeyPair::from_pem(&device.key_pem).unwrap()).unwrap();
        let fake_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec![AS.to_owned()]).unwrap();
        params.subject_alt_names.push(SanType::URI(pki::role_uri(Role::As).try_into().unwrap()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let fake = params.signed_by(&fake_key, &device_issuer).unwrap();
        let chain = vec![fake.der().clone(), certs(&device.cert_pem).remove(0)];
        let server = raw_server(chain, key(&fake_key.serialize_pem()));

        let client = pki::client_config_without_cert(&certs(ca.cert_pem()).remove(0)).unwrap();
        let (side, error) = refused(connect(client, AS, server));
        assert_eq!(side, Side::Client);
        // webpki refuses the device certificate as an issuer: it is an end entity (CA:FALSE).
        let rustls::Error::InvalidCertificate(CertificateError::Other(other)) = &error else {
            panic!("unexpected error {error:?}");
        };
        assert!(format!("{other:?}").contains("EndEntityUsedAsCa"), "{error:?}");
    }

    #[test]
    fn device_certificate_cannot_serve() {
        // Even for its own name, a device certificate lacks serverAuth.
        let ca = Ca::generate("NTMobile test CA", 30).unwrap();
        let device = issue(&ca, Role::Node, BOX);
        let server = raw_server(certs(&device.cert_pem), key(&device.key_pem));
        let client = pki::client_config_without_cert(&certs(ca.cert_pem()).remove(0)).unwrap();
        let (side, error) = refused(connect(client, BOX, server));
        assert_eq!(side, Side::Client);
        assert!(
            matches!(
                error,
                rustls::Error::InvalidCertificate(
                    CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
                )
            ),
            "{error:?}"
        );
    }

    #[test]
    fn server_certificate_for_another_name_is_refused() {
        let ca = Ca::generate("NTMobile test CA", 30).unwrap();
        let dc_m = issue_material(&ca, Role::Dc, DC);
        let client = pki::client_config_without_cert(dc_m.ca()).unwrap();
        let (side, error) = refused(connect(client, AS, pki::server_config(&dc_m, ClientAuth::Optional).unwrap()));
        assert_eq!(side, Side::Client);
        assert!(
            matches!(
                error,
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{error:?}"
        );
    }

    #[test]
    fn server_certificate_from_another_ca_is_refused() {
        let ca = Ca::generate("NTMobile test CA", 30).unwrap();
        let other = Ca::generate("Someone else's CA", 30).unwrap();
        let impostor = issue_material(&other, Role::As, AS);
        let client = pki::client_config_without_cert(&certs(ca.cert_pem()).remove(0)).unwrap();
        let (side, error) = refused(connect(client, AS, pki::server_config(&impostor, ClientAuth::Optional).unwrap()));
        assert_eq!(side, Side::Client);
        assert_eq!(error, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
    }

    #[test]
    fn dc_to_rs_mutual_tls() {
        let ca = Ca::generate("NTMobile test CA", 30).unwrap();
        let dc_m = issue_material(&ca, Role::Dc, DC);
        let rs_m = issue_material(&ca, Role::Rs, RS);
        let (c, s) =
            connect(pki::client_config(&dc_m).unwrap(), RS, pki::server_config(&rs_m, ClientAuth::Required).unwrap())
                .unwrap();

        let dc = pki::connection_identity(&s).unwrap().unwrap();
        assert_eq!((dc.role, &dc.name), (Role::Dc, &fqdn(DC)));
        assert!(dc.public_key.is_some());
        let rs = pki::connection_identity(&c).unwrap().unwrap();
        assert_eq!((rs.role, &rs.name), (Role::Rs, &fqdn(RS)));
        assert_eq!(&rs, rs_m.identity());
    }

    #[test]
    fn agent_cipher_suite_and_group_are_accepted() {
        // What the agent's embedded-tls offers: TLS 1.3, TLS13_AES_128_GCM_SHA256, secp256r1.
        let ca = Ca::generate("NTMobile test CA", 30).unwrap();
        let as_m = issue_material(&ca, Role::As, AS);
        let device = issue(&ca, Role::Node, BOX);
        let mut agent = rustls::crypto::ring::default_provider();
        agent.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
        agent.kx_groups = vec![rustls::crypto::ring::kx_group::SECP256R1];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(as_m.ca().clone()).unwrap();
        let client = ClientConfig::builder_with_provider(Arc::new(agent))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(certs(&device.cert_pem), key(&device.key_pem))
            .unwrap();
        let (c, s) = connect(Arc::new(client), AS, pki::server_config(&as_m, ClientAuth::Optional).unwrap()).unwrap();
        assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        assert_eq!(
            s.negotiated_cipher_suite().map(|suite| suite.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        assert_eq!(s.negotiated_key_exchange_group().map(|g| g.name()), Some(rustls::NamedGroup::secp256r1));
    }

    #[test]
    fn tls_1_2_is_refused() {
        let ca = Ca::generate("NTMobile test CA", 30).unwrap();
        let as_m = issue_material(&ca, Role::As, AS);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(as_m.ca().clone()).unwrap();
        let client = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (side, _) =
            refused(connect(Arc::new(client), AS, pki::server_config(&as_m, ClientAuth::Optional).unwrap()));
        assert_eq!(side, Side::Server);
    }

    #[test]
    fn csr_from_a_box_is_signed_as_node_and_authenticates() {
        let ca = Ca::generate("NTMobile test CA", 30).unwrap();
        let as_m = issue_material(&ca, Role::As, AS);

        // On the box: a key that never leaves it, and a request for its name.
        let box_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec![BOX.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, BOX);
        // A request may ask for more than the CA grants; the CA decides.
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let csr = params.serialize_request(&box_key).unwrap().pem().unwrap();

        let cert_pem = ca.sign_csr(Role::Node, &fqdn(BOX), &csr, 365).unwrap();
        let device_m = TlsMaterial::from_pem(ca.cert_pem(), &cert_pem, &box_key.serialize_pem()).unwrap();
        let (_, s) = connect(
            pki::client_config(&device_m).unwrap(),
            AS,
            pki::server_config(&as_m, ClientAuth::Optional).unwrap(),
        )
        .unwrap();
        let node = pki::connection_identity(&s).unwrap().unwrap();
        assert_eq!((node.role, &node.name), (Role::Node, &fqdn(BOX)));
        assert_eq!(node.public_key, Some(public_key_of(&box_key.serialize_pem())));

        // The requested serverAuth was not granted: the certificate cannot serve.
        let server = raw_server(certs(&cert_pem), key(&box_key.serialize_pem()));
        let client = pki::client_config_without_cert(device_m.ca()).unwrap();
        assert_eq!(refused(connect(client, BOX, server)).0, Side::Client);

        // A request for another name is refused.
        let wrong = ca.sign_csr(Role::Node, &fqdn("box2.home.example.net"), &csr, 365);
        assert!(matches!(wrong, Err(PkiError::CsrName { .. })), "{wrong:?}");
        // So is a request that names nothing.
        let mut anonymous = CertificateParams::default();
        anonymous.distinguished_name = rcgen::DistinguishedName::new();
        let anonymous = anonymous.serialize_request(&box_key).unwrap().pem().unwrap();
        let refused_csr = ca.sign_csr(Role::Node, &fqdn(BOX), &anonymous, 365);
        assert!(matches!(refused_csr, Err(PkiError::CsrName { .. })), "{refused_csr:?}");
        // And garbage.
        let garbage = ca.sign_csr(Role::Node, &fqdn(BOX), "hello", 365);
        assert!(matches!(garbage, Err(PkiError::BadCsr(_))), "{garbage:?}");
    }

    #[test]
    fn csr_with_a_broken_signature_is_refused() {
        let ca = Ca::generate("NTMobile test CA", 30).unwrap();
        let box_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CertificateParams::new(vec![BOX.to_owned()]).unwrap().serialize_request(&box_key).unwrap();
        let mut der = csr.der().to_vec();
        // The last byte is inside the signature.
        let last = der.len() - 1;
        der[last] ^= 1;
        let pem = format!("-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n", base64(&der));
        let result = ca.sign_csr(Role::Node, &fqdn(BOX), &pem, 365);
        assert!(matches!(result, Err(PkiError::BadCsr(_))), "{result:?}");
    }

    /// Standard base64 (tests only: to rebuild a PEM around tampered bytes).
    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn public_key_from_a_box_is_certified() {
        let ca = Ca::generate("NTMobile test CA", 30).unwrap();
        let box_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert_pem = ca.issue_for_key_pem(Role::Ns, &fqdn("ns1.example.net"), &box_key.public_key_pem(), 30).unwrap();
        let m = TlsMaterial::from_pem(ca.cert_pem(), &cert_pem, &box_key.serialize_pem()).unwrap();
        assert_eq!((m.identity().role, &m.identity().name), (Role::Ns, &fqdn("ns1.example.net")));

        let spki = SubjectPublicKeyInfoDer::from(box_key.subject_public_key_info());
        ca.issue_for_key(Role::Node, &fqdn(BOX), &spki, 30).unwrap();

        let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let result = ca.issue_for_key_pem(Role::Node, &fqdn(BOX), &p384.public_key_pem(), 30);
        assert!(matches!(result, Err(PkiError::NotP256)), "{result:?}");
        let result = ca.issue_for_key_pem(Role::Node, &fqdn(BOX), "not a key", 30);
        assert!(matches!(result, Err(PkiError::BadPublicKey(_))), "{result:?}");
    }

    #[test]
    fn ca_round_trips_through_pem() {
        let ca = Ca::generate("NTMobile test CA", 30).unwrap();
        let again = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.cert_der(), ca.cert_der());
        assert_eq!(again.cert_pem(), ca.cert_pem());
        // Certificates from the reloaded CA verify against the original certificate.
        let issued = again.issue(Role::Dc, &fqdn(DC), 30).unwrap();
        TlsMaterial::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap();

        let other = Ca::generate("Someone else's CA", 30).unwrap();
        let mixed = Ca::from_pem(ca.cert_pem(), &other.key_pem());
        assert!(matches!(mixed, Err(PkiError::KeyMismatch { .. })), "{mixed:?}");
        let with_key = Ca::from_pem(&format!("{}{}", ca.cert_pem(), ca.key_pem()), &ca.key_pem());
        assert!(matches!(with_key, Err(PkiError::BadCertificate { .. })), "{with_key:?}");
        let not_ca = Ca::from_pem(&issued.cert_pem, &issued.key_pem);
        assert!(matches!(not_ca, Err(PkiError::NotCa { .. })), "{not_ca:?}");
        assert!(matches!(Ca::generate("x", 0), Err(PkiError::BadValidity(0))));
        assert!(matches!(ca.issue(Role::As, &fqdn(AS), pki::MAX_VALID_DAYS + 1), Err(PkiError::BadValidity(_))));
        // The key never shows in Debug.
        assert!(!format!("{ca:?}{issued:?}").contains("PRIVATE"));
    }

    // ---------------------------------------------------------------------------------------
    // Identity
    // ---------------------------------------------------------------------------------------

    /// A certificate signed by the CA with hand-picked SANs and usages.
    fn crafted(ca: &Ca, sans: Vec<SanType>, ekus: Vec<ExtendedKeyUsagePurpose>) -> CertificateDer<'static> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.extended_key_usages = ekus;
        params.signed_by(&key, &raw_issuer(ca)).unwrap().der().clone()
    }

    fn dns(name: &str) -> SanType {
        SanType::DnsName(name.try_into().unwrap())
    }

    fn uri(uri: &str) -> SanType {
        SanType::URI(uri.try_into().unwrap())
    }

    #[test]
    fn peer_identity_needs_one_known_role_a_name_and_the_right_usage() {
        use ExtendedKeyUsagePurpose::{ClientAuth as C, ServerAuth as S};
        let ca = Ca::generate("NTMobile test CA", 30).unwrap();
        let id = |sans, ekus| pki::peer_identity(&crafted(&ca, sans, ekus));

        let ok = id(vec![dns(DC), uri("urn:ntmobile:role:dc"), dns("other.example.net")], vec![S, C]).unwrap();
        assert_eq!((ok.role, ok.name), (Role::Dc, fqdn(DC)));
        assert!(ok.public_key.is_some());

        assert!(matches!(id(vec![dns(DC)], vec![S, C]), Err(PkiError::NoRole)));
        assert!(matches!(id(vec![dns(DC), uri("urn:example:dc")], vec![S, C]), Err(PkiError::NoRole)));
        assert!(matches!(id(vec![dns(DC), uri("urn:ntmobile:role:admin")], vec![S, C]), Err(PkiError::UnknownRole(_))));
        assert!(matches!(
            id(vec![dns(DC), uri("urn:ntmobile:role:dc"), uri("urn:ntmobile:role:rs")], vec![S, C]),
            Err(PkiError::SeveralRoles)
        ));
        assert!(matches!(id(vec![uri("urn:ntmobile:role:dc")], vec![S, C]), Err(PkiError::NoName)));
        assert!(matches!(
            id(vec![dns("*.example.net"), uri("urn:ntmobile:role:dc")], vec![S, C]),
            Err(PkiError::BadName(_))
        ));
        // Usage must fit the role.
        assert!(matches!(
            id(vec![dns(DC), uri("urn:ntmobile:role:dc")], vec![C]),
            Err(PkiError::WrongPurpose { role: Role::Dc, needs: "serverAuth" })
        ));
        assert!(matches!(
            id(vec![dns(BOX), uri("urn:ntmobile:role:node")], vec![S]),
            Err(PkiError::WrongPurpose { role: Role::Node, needs: "clientAuth" })
        ));
        assert!(matches!(
            id(vec![dns(BOX), uri("urn:ntmobile:role:node")], vec![]),
            Err(PkiError::WrongPurpose { .. })
        ));
        assert!(matches!(pki::peer_identity(&CertificateDer::from(vec![0x30, 0x00])), Err(PkiError::NotX509(_))));
    }

    // ---------------------------------------------------------------------------------------
    // Loading from files
    // ---------------------------------------------------------------------------------------

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "ntm-pki-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn load_reads_good_files_and_names_the_bad_one() {
        let dir = TempDir::new();
        let ca = Ca::generate("NTMobile test CA", 30).unwrap();
        let dc = issue(&ca, Role::Dc, DC);
        let ca_file = dir.write("ca.pem", ca.cert_pem());
        let cert_file = dir.write("dc.crt", &dc.cert_pem);
        let key_file = dir.write("dc.key", &dc.key_pem);

        let m = TlsMaterial::load(&ca_file, &cert_file, &key_file).unwrap();
        assert_eq!((m.identity().role, &m.identity().name), (Role::Dc, &fqdn(DC)));
        assert_eq!(pki::load_ca(&ca_file).unwrap(), *m.ca());
        assert!(!format!("{m:?}").contains("PRIVATE"));

        let missing = dir.0.join("nope.pem");
        let e = TlsMaterial::load(&ca_file, &missing, &key_file).unwrap_err();
        assert!(matches!(&e, PkiError::Missing { file } if file.ends_with("nope.pem")), "{e:?}");
        assert!(e.to_string().contains("nope.pem"), "{e}");

        let garbage = dir.write("garbage.pem", [0x00, 0xff, 0x13, 0x37, b'\n', b'x']);
        let e = TlsMaterial::load(&garbage, &cert_file, &key_file).unwrap_err();
        assert!(matches!(&e, PkiError::NotPem { file, .. } if file.ends_with("garbage.pem")), "{e:?}");
        let truncated = dir.write("truncated.crt", &dc.cert_pem[..dc.cert_pem.len() - 30]);
        let e = TlsMaterial::load(&ca_file, &truncated, &key_file).unwrap_err();
        assert!(matches!(&e, PkiError::NotPem { .. }), "{e:?}");

        let e = TlsMaterial::load(&ca_file, &key_file, &key_file).unwrap_err();
        assert!(matches!(&e, PkiError::NoCertificate { file } if file.ends_with("dc.key")), "{e:?}");
        let e = TlsMaterial::load(&ca_file, &cert_file, &cert_file).unwrap_err();
        assert!(matches!(&e, PkiError::NoKey { file } if file.ends_with("dc.crt")), "{e:?}");

        let other_key = dir.write("other.key", issue(&ca, Role::Dc, DC).key_pem);
        let e = TlsMaterial::load(&ca_file, &cert_file, &other_key).unwrap_err();
        assert!(matches!(&e, PkiError::KeyMismatch { .. }), "{e:?}");

        let other_ca = Ca::generate("Someone else's CA", 30).unwrap();
        let foreign = other_ca.issue(Role::Dc, &fqdn(DC), 30).unwrap();
        let foreign_cert = dir.write("foreign.crt", &foreign.cert_pem);
        let foreign_key = dir.write("foreign.key", &foreign.key_pem);
        let e = TlsMaterial::load(&ca_file, &foreign_cert, &foreign_key).unwrap_err();
        assert!(matches!(&e, PkiError::NotSignedByCa { file, .. } if file.ends_with("foreign.crt")), "{e:?}");

        let e = TlsMaterial::load(&cert_file, &cert_file, &key_file).unwrap_err();
        assert!(matches!(&e, PkiError::NotCa { .. }), "{e:?}");
        let two = dir.write("two.pem", format!("{}{}", ca.cert_pem(), other_ca.cert_pem()));
        let e = TlsMaterial::load(&two, &cert_file, &key_file).unwrap_err();
        assert!(matches!(&e, PkiError::BadCertificate { .. }), "{e:?}");

        // An expired certificate, signed by the right CA.
        let expired_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec![DC.to_owned()]).unwrap();
        params.subject_alt_names.push(uri("urn:ntmobile:role:dc"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let expired = params.signed_by(&expired_key, &raw_issuer(&ca)).unwrap();
        let expired_cert = dir.write("expired.crt", expired.pem());
        let expired_key = dir.write("expired.key", expired_key.serialize_pem());
        let e = TlsMaterial::load(&ca_file, &expired_cert, &expired_key).unwrap_err();
        assert!(matches!(&e, PkiError::Expired { file, .. } if file.ends_with("expired.crt")), "{e:?}");
        assert!(e.to_string().contains("2021"), "{e}");

        // A certificate without a role is refused at start-up, not at the first peer.
        let plain_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec![DC.to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let plain = params.signed_by(&plain_key, &raw_issuer(&ca)).unwrap();
        let plain_cert = dir.write("plain.crt", plain.pem());
        let plain_key = dir.write("plain.key", plain_key.serialize_pem());
        let e = TlsMaterial::load(&ca_file, &plain_cert, &plain_key).unwrap_err();
        assert!(matches!(&e, PkiError::BadCertificate { .. }), "{e:?}");
        assert!(e.to_string().contains("role"), "{e}");

        // Every error is one line.
        for e in [e, PkiError::NoRole, PkiError::NotP256] {
            assert!(!e.to_string().contains('\n'));
        }
    }
}
