//! `dns`: one A query to an agent's DNS hook, timed.

use crate::common::{err, Res};
use serde_json::json;
use std::net::SocketAddr;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

/// One A query, timed.
pub fn dns(args: &[String]) -> Res<serde_json::Value> {
    use simple_dns::{rdata::RData, Name, Packet, PacketFlag, Question, CLASS, TYPE};
    let [addr, name] = args else { return Err("dns ADDR NAME".into()) };
    let to: SocketAddr = addr.parse().map_err(err("address"))?;
    let id = (std::process::id() & 0xffff) as u16;
    let mut q = Packet::new_query(id);
    q.set_flags(PacketFlag::RECURSION_DESIRED);
    q.questions.push(Question::new(Name::new(name).map_err(err("name"))?, TYPE::A.into(), CLASS::IN.into(), false));
    let bytes = q.build_bytes_vec().map_err(err("query"))?;
    let sock = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).map_err(err("bind"))?;
    sock.set_read_timeout(Some(Duration::from_secs(15))).map_err(err("timeout"))?;
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    sock.send_to(&bytes, to).map_err(err("send"))?;
    loop {
        let (n, from) = sock.recv_from(&mut buf).map_err(err("no answer"))?;
        let secs = t0.elapsed().as_secs_f64();
        let Ok(p) = Packet::parse(&buf[..n]) else { continue };
        if from != to || p.id() != id {
            continue;
        }
        let answers: Vec<String> = p
            .answers
            .iter()
            .filter_map(|r| match &r.rdata {
                RData::A(a) => Some(std::net::Ipv4Addr::from(a.address).to_string()),
                _ => None,
            })
            .collect();
        return Ok(json!({"secs": secs, "answers": answers}));
    }
}
