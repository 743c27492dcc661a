//! A small SMTP submission client for tests and the load generator.

use base64::Engine;
use std::net::SocketAddr;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    pub fn is_ok(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

pub struct SmtpClient {
    conn: BufReader<Box<dyn Io>>,
    pub greeting: Reply,
}

impl SmtpClient {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<SmtpClient> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut conn: BufReader<Box<dyn Io>> = BufReader::new(Box::new(tcp));
        let greeting = read_reply(&mut conn).await?;
        Ok(SmtpClient { conn, greeting })
    }

    /// Connects with TLS from the first byte (port 465 style).
    pub async fn connect_tls(addr: SocketAddr) -> anyhow::Result<SmtpClient> {
        let tcp = TcpStream::connect(addr).await?;
        let connector = tokio_rustls::TlsConnector::from(crate::tls::insecure_client_config());
        let tls = connector
            .connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp)
            .await?;
        let mut conn: BufReader<Box<dyn Io>> = BufReader::new(Box::new(tls));
        let greeting = read_reply(&mut conn).await?;
        Ok(SmtpClient { conn, greeting })
    }

    pub async fn cmd(&mut self, line: &str) -> anyhow::Result<Reply> {
        self.write_raw(format!("{line}\r\n").as_bytes()).await?;
        read_reply(&mut self.conn).await
    }

    pub async fn starttls(&mut self) -> anyhow::Result<Reply> {
        let reply = self.cmd("STARTTLS").await?;
        if reply.code != 220 {
            return Ok(reply);
        }
        let placeholder: BufReader<Box<dyn Io>> = BufReader::new(Box::new(tokio::io::empty()));
        let plain = std::mem::replace(&mut self.conn, placeholder).into_inner();
        let connector = tokio_rustls::TlsConnector::from(crate::tls::insecure_client_config());
        let tls = connector
            .connect(rustls::pki_types::ServerName::try_from("localhost")?, plain)
            .await?;
        self.conn = BufReader::new(Box::new(tls));
        Ok(reply)
    }

    pub async fn auth_plain(&mut self, user: &str, password: &str) -> anyhow::Result<Reply> {
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.cmd(&format!("AUTH PLAIN {token}")).await
    }

    /// MAIL, RCPT..., DATA, body; returns the first refusal or the final reply.
    pub async fn send(&mut self, from: &str, to: &[&str], body: &[u8]) -> anyhow::Result<Reply> {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await?;
        if !r.is_ok() {
            return Ok(r);
        }
        for rcpt in to {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>")).await?;
            if !r.is_ok() {
                let _ = self.cmd("RSET").await?;
                return Ok(r);
            }
        }
        let r = self.cmd("DATA").await?;
        if r.code != 354 {
            return Ok(r);
        }
        self.write_data(body).await?;
        read_reply(&mut self.conn).await
    }

    /// Writes a body with dot-stuffing and the terminating dot.
    pub async fn write_data(&mut self, body: &[u8]) -> anyhow::Result<()> {
        let mut out = Vec::with_capacity(body.len() + 8);
        let mut start = true;
        for &b in body {
            if start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            start = b == b'\n';
        }
        if !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.write_raw(&out).await
    }

    pub async fn read_reply(&mut self) -> anyhow::Result<Reply> {
        read_reply(&mut self.conn).await
    }

    /// Writes and flushes (TLS holds data back until flushed).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.conn.get_mut().write_all(bytes).await?;
        self.conn.get_mut().flush().await?;
        Ok(())
    }

    pub async fn quit(mut self) {
        let _ = self.cmd("QUIT").await;
    }
}

async fn read_reply(conn: &mut BufReader<Box<dyn Io>>) -> anyhow::Result<Reply> {
    match tokio::time::timeout(std::time::Duration::from_secs(30), read_reply_inner(conn)).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!("no reply within 30 s"),
    }
}

async fn read_reply_inner(conn: &mut BufReader<Box<dyn Io>>) -> anyhow::Result<Reply> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            anyhow::bail!("connection closed (after {text:?})");
        }
        let done = line.len() < 4 || line.as_bytes()[3] != b'-';
        text.push_str(&line);
        if done {
            let code = text.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            return Ok(Reply {
                code,
                text: text.trim_end().to_string(),
            });
        }
    }
}

/// A 2 KB-ish test message.
pub fn message(from: &str, to: &str, subject: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    .into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghij\r\n";
    while m.len() < size {
        m.extend_from_slice(line);
    }
    m
}
