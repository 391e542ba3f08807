//! `ns`: idle registered node connections to the real `ntm-ns`, as a DC hands it the
//! nodes' keys.

use crate::common::{due_again, err, far, key_bytes, proto_now, read_frames, tls_client, Res};
use ntm_proto::crypto::{parse_plain, plain, Channel};
use ntm_proto::keys::{DcNs, KDcNs, KNtmNs, KeyGrant};
use ntm_proto::wire::frame::{encode_frame, FrameDecoder};
use ntm_proto::wire::keyshare::{KeyShare, SharedKey};
use ntm_proto::wire::notification::{NotificationRegistration, NsKeyDistribution};
use ntm_proto::wire::{Fqdn, KeyId, Lifetime, Message, RequestId, Sender};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// Idle node connections to the real NS.
pub fn ns_daemon(args: &[String]) -> Res<()> {
    let [addr, node_addrs, name, ca, cert, key, counts] = args else {
        return Err("ns ADDR NODE_ADDRS NAME CA CERT KEY COUNTS".into());
    };
    let addr: SocketAddr = addr.parse().map_err(err("address"))?;
    let node_addrs: Vec<SocketAddr> =
        node_addrs.split(',').map(|a| a.parse().map_err(err("node address"))).collect::<Res<_>>()?;
    let ns_name = Fqdn::new(name).map_err(err("name"))?;
    let steps: Vec<usize> = counts.split(',').map(|c| c.parse().map_err(err("count"))).collect::<Res<_>>()?;
    let total = steps.iter().copied().max().unwrap_or(0);
    let run = u64::from(std::process::id());
    let dc_name = Fqdn::new("dc.bench.test").map_err(err("name"))?;

    // K_dcns over mutual TLS, as a DC shares it.
    let dcns_id = KeyId(0x7000_0001);
    let dcns = key_bytes(run, u64::MAX);
    let mut tls = tls_client(addr, &ns_name, ca, cert, key)?;
    let share = Message::KeyShare(KeyShare {
        request_id: RequestId(1),
        key_id: dcns_id,
        key: SharedKey::DcNs(KeyGrant { key: KDcNs::from_bytes(dcns), lifetime: Lifetime(24 * 3600) }),
        from: dc_name,
    });
    tls.write_all(&encode_frame(&plain(Sender::Dc, &share)).map_err(err("frame"))?).map_err(err("write"))?;
    tls.flush().map_err(err("flush"))?;
    let mut frames = Vec::new();
    read_frames(&mut tls, &mut FrameDecoder::new(), 1, &mut frames)?;
    if !matches!(frames.first().map(|f| parse_plain(f)), Some(Ok((_, Message::KeyShareAck(_))))) {
        return Err("the NS did not acknowledge K_dcns".into());
    }
    drop(tls);
    let mut to_ns = Channel::new(KDcNs::from_bytes(dcns), dcns_id, Sender::Dc, far()).map_err(err("channel"))?;

    // For each step: the step's nodes get their K_ntmns over UDP, sealed with K_dcns (and
    // acknowledged), then one TCP connection each, registered and left idle. Keys and
    // connections grow together, so each step's memory is that of its nodes alone.
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(err("bind"))?;
    sock.connect(addr).map_err(err("connect"))?;
    sock.set_read_timeout(Some(Duration::from_millis(2))).map_err(err("timeout"))?;
    let ntmns = |i: usize| KNtmNs::from_bytes(key_bytes(run, i as u64 + 1_000_000));
    let fqdn = |i: usize| Fqdn::new(&format!("n{i}.bench.test")).map_err(err("name"));
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut acked = vec![false; total];
    let mut buf = [0u8; 2048];
    let send_key = |i: usize, to_ns: &mut Channel<DcNs>| -> Res<()> {
        let kd = Message::NsKeyDistribution(NsKeyDistribution {
            request_id: RequestId(i as u32 + 1),
            fqdn: fqdn(i)?,
            key_id: KeyId(0x5000_0000 + i as u32),
            k_ntmns: KeyGrant { key: ntmns(i), lifetime: Lifetime(24 * 3600) },
        });
        sock.send(&to_ns.seal(proto_now(), &kd).map_err(err("seal"))?).map_err(err("send"))?;
        Ok(())
    };
    let mut conns: Vec<TcpStream> = Vec::with_capacity(total);
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let t0 = Instant::now();
    for step in steps {
        let mut pending: HashMap<usize, Instant> = HashMap::new();
        let (mut next, mut got) = (conns.len(), conns.len());
        while got < step {
            if Instant::now() > deadline {
                return Err(format!("deadline: {got} of {step} NS keys acknowledged"));
            }
            while pending.len() < 256 && next < step {
                send_key(next, &mut to_ns)?;
                pending.insert(next, Instant::now());
                next += 1;
            }
            let now = Instant::now();
            for i in due_again(&mut pending, now) {
                send_key(i, &mut to_ns)?;
            }
            while let Ok(n) = sock.recv(&mut buf) {
                if let Ok((_, Message::NsKeyAck(a))) = to_ns.open(proto_now(), &buf[..n]) {
                    let i = (a.request_id.0 as usize).wrapping_sub(1);
                    if i < step && !acked[i] {
                        acked[i] = true;
                        got += 1;
                        pending.remove(&i);
                    }
                }
            }
        }
        while conns.len() < step {
            let i = conns.len();
            if Instant::now() > deadline {
                return Err(format!("deadline: {i} connections"));
            }
            let to = node_addrs[i % node_addrs.len()];
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).map_err(err("connect"))?;
            s.set_read_timeout(Some(Duration::from_secs(10))).map_err(err("timeout"))?;
            let mut ch =
                Channel::new(ntmns(i), KeyId(0x5000_0000 + i as u32), Sender::Node, far()).map_err(err("channel"))?;
            let reg = Message::NotificationRegistration(NotificationRegistration {
                request_id: RequestId(1),
                fqdn: fqdn(i)?,
            });
            s.write_all(&encode_frame(&ch.seal(proto_now(), &reg).map_err(err("seal"))?).map_err(err("frame"))?)
                .map_err(err("write"))?;
            let mut frames = Vec::new();
            read_frames(&mut s, &mut FrameDecoder::new(), 1, &mut frames).map_err(|e| format!("node {i}: {e}"))?;
            match frames.first().map(|f| ch.open(proto_now(), f)) {
                Some(Ok((_, Message::NotificationAck(_)))) => {}
                other => return Err(format!("node {i}: no Notification Ack ({other:?})")),
            }
            conns.push(s);
        }
        println!("reached {} in {:.1} s", conns.len(), t0.elapsed().as_secs_f64());
        let _ = std::io::stdout().flush();
        if lines.next().is_none() {
            break;
        }
    }
    // Hold them until our input ends.
    while lines.next().is_some() {}
    Ok(())
}
