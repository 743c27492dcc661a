//! An authoritative DNS server for test domains, on UDP (and TCP) loopback.
//! It can also play a validating resolver for DANE: names marked secure
//! are answered with the AD flag (to a query that asks, with AD or DO),
//! and names marked failing with SERVFAIL, as for a bogus signature.

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

#[derive(Default)]
struct Zone {
    records: HashMap<String, Vec<RData>>,
    secure: std::collections::HashSet<String>,
    failing: std::collections::HashSet<String>,
}

#[derive(Clone)]
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    /// While set, queries get no answer at all (a server that is down).
    silent: Arc<AtomicBool>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsServer {
    /// Binds UDP and TCP on the same free loopback port.
    pub async fn start() -> DnsServer {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("udp bind");
            let port = udp.local_addr().expect("addr").port();
            if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().expect("addr");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let silent = Arc::new(AtomicBool::new(false));
        let (z, quiet) = (zone.clone(), silent.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                if quiet.load(Ordering::Relaxed) {
                    continue;
                }
                if let Some(reply) = answer(&z, &buf[..n]) {
                    let _ = udp.send_to(&reply, peer).await;
                }
            }
        });
        let (z, quiet) = (zone.clone(), silent.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = tcp.accept().await else {
                    continue;
                };
                let (z, quiet) = (z.clone(), quiet.clone());
                tokio::spawn(async move {
                    loop {
                        let Ok(len) = s.read_u16().await else { return };
                        let mut q = vec![0u8; len as usize];
                        if s.read_exact(&mut q).await.is_err() {
                            return;
                        }
                        if quiet.load(Ordering::Relaxed) {
                            // Held open, unanswered, as a hung server does.
                            std::future::pending::<()>().await;
                        }
                        let Some(reply) = answer(&z, &q) else { return };
                        if s.write_u16(reply.len() as u16).await.is_err()
                            || s.write_all(&reply).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        DnsServer { addr, zone, silent }
    }

    /// Stops answering (`true`) or answers again (`false`).
    pub fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::Relaxed);
    }

    fn add(&self, name: &str, data: RData) {
        self.zone
            .lock()
            .expect("zone")
            .records
            .entry(key(name))
            .or_default()
            .push(data);
    }

    pub fn add_mx(&self, domain: &str, preference: u16, exchange: &str) {
        let exchange = Name::from_ascii(format!("{}.", exchange.trim_end_matches('.')))
            .expect("exchange name");
        self.add(domain, RData::MX(MX::new(preference, exchange)));
    }

    /// RFC 7505: `MX 0 .`
    pub fn add_null_mx(&self, domain: &str) {
        self.add(domain, RData::MX(MX::new(0, Name::root())));
    }

    pub fn add_ip(&self, name: &str, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.add(name, RData::A(A(v4))),
            IpAddr::V6(v6) => self.add(name, RData::AAAA(AAAA(v6))),
        }
    }

    /// TXT, split into 255-byte strings as DNS requires.
    pub fn add_txt(&self, name: &str, text: &str) {
        let chunks: Vec<String> = text
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        self.add(name, RData::TXT(TXT::new(chunks)));
    }

    /// Forgets every record of `name`.
    pub fn remove(&self, name: &str) {
        self.zone.lock().expect("zone").records.remove(&key(name));
    }

    /// A TLSA record (`usage selector matching data`).
    pub fn add_tlsa(&self, name: &str, usage: u8, selector: u8, matching: u8, data: Vec<u8>) {
        use hickory_proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
        self.add(
            name,
            RData::TLSA(hickory_proto::rr::rdata::TLSA::new(
                CertUsage::from(usage),
                Selector::from(selector),
                Matching::from(matching),
                data,
            )),
        );
    }

    /// Answers for `name` (its records, or its denial) are DNSSEC-secure
    /// from now on: they carry the AD flag.
    pub fn set_secure(&self, name: &str) {
        self.zone.lock().expect("zone").secure.insert(key(name));
    }

    /// Queries for `name` get SERVFAIL (a signature that does not
    /// validate, or an unreachable zone).
    pub fn set_failing(&self, name: &str) {
        self.zone.lock().expect("zone").failing.insert(key(name));
    }

    pub fn nameserver(&self) -> String {
        self.addr.to_string()
    }
}

fn answer(zone: &Mutex<Zone>, query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let q = request.queries.first()?.clone();
    let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(q.clone());
    let zone = zone.lock().ok()?;
    let name = key(&q.name().to_ascii());
    let asks_ad = request.metadata.authentic_data
        || request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
    response.metadata.authentic_data = asks_ad && zone.secure.contains(&name);
    if zone.failing.contains(&name) {
        response.metadata.response_code = ResponseCode::ServFail;
        return response.to_vec().ok();
    }
    match zone.records.get(&name) {
        None => response.metadata.response_code = ResponseCode::NXDomain,
        Some(records) => {
            for data in records {
                if data.record_type() == q.query_type() || q.query_type() == RecordType::ANY {
                    response.add_answer(Record::from_rdata(q.name().clone(), 1, data.clone()));
                }
            }
        }
    }
    response.to_vec().ok()
}
