//! A message as Kiln builds it for SendEmail and batch tasks: headers,
//! HTML and text alternatives, attachments, as MIME.

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::raw::Raw;

pub struct Attachment {
    pub name: String,
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
}

/// Everything a message needs; addresses already checked.
#[derive(Default)]
pub struct Draft {
    /// (display name, address); an empty name is left out.
    pub from: (String, String),
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub reply_to: Option<(String, String)>,
    pub subject: String,
    pub html: String,
    pub text: String,
    /// Extra header fields, checked by the caller.
    pub headers: Vec<(String, String)>,
    pub message_id: String,
    pub attachments: Vec<Attachment>,
}

fn mailbox((name, addr): (String, String)) -> Address<'static> {
    if name.is_empty() {
        Address::new_address(None::<String>, addr)
    } else {
        Address::new_address(Some(name), addr)
    }
}

impl Draft {
    /// What Kiln adds for the feedback loop: an unsubscribe footer and the
    /// RFC 8058 headers in `lang` (only for a message to one `recipient`: the
    /// link must know whom), then open/click tracking in the HTML part.
    pub fn decorate(
        &mut self,
        tracker: Option<&crate::rewrite::tracking::Tracker>,
        sender_domain: &str,
        message_id: &str,
        recipient: &str,
        lang: Option<u8>,
    ) {
        let Some(t) = tracker else { return };
        if let (Some(lang), false) = (lang, recipient.is_empty()) {
            let url = t.unsubscribe_url(sender_domain, message_id, recipient, lang);
            crate::rewrite::unsubscribe::add_footer(lang, &url, &mut self.html, &mut self.text);
            self.headers
                .extend(crate::rewrite::unsubscribe::headers(&url));
        }
        if !self.html.is_empty() {
            self.html = t.instrument(&self.html, sender_domain, message_id, recipient);
        }
    }

    pub fn build(self) -> std::io::Result<Vec<u8>> {
        let mut b = MessageBuilder::new()
            .from(mailbox(self.from))
            .subject(self.subject)
            .message_id(self.message_id);
        if !self.to.is_empty() {
            b = b.to(self
                .to
                .into_iter()
                .map(|a| mailbox((String::new(), a)))
                .collect::<Vec<_>>());
        }
        if !self.cc.is_empty() {
            b = b.cc(self
                .cc
                .into_iter()
                .map(|a| mailbox((String::new(), a)))
                .collect::<Vec<_>>());
        }
        if let Some(r) = self.reply_to {
            b = b.reply_to(mailbox(r));
        }
        for (name, value) in self.headers {
            b = b.header(name, Raw::new(value));
        }
        if !self.html.is_empty() {
            b = b.html_body(one_line_ending(self.html));
        }
        if !self.text.is_empty() {
            b = b.text_body(one_line_ending(self.text));
        }
        for f in self.attachments {
            b = b.attachment(f.content_type, f.name, f.bytes);
        }
        b.write_to_vec()
    }
}

/// Text with every line ending (CRLF, lone CR, bare LF) as one LF, which
/// the builder writes as CRLF: a lone CR never reaches the next hop.
fn one_line_ending(text: String) -> String {
    if !text.contains('\r') {
        return text;
    }
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// A content type from a file name's extension.
pub fn content_type_of(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("pdf") => "application/pdf",
        Some("txt" | "log") => "text/plain",
        Some("csv") => "text/csv",
        Some("htm" | "html") => "text/html",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("zip") => "application/zip",
        Some("json") => "application/json",
        Some("xml") => "application/xml",
        Some("doc") => "application/msword",
        Some("docx") => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        Some("xls") => "application/vnd.ms-excel",
        Some("xlsx") => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        Some("ics") => "text/calendar",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the request holds, the built message has lines a next hop
    /// accepts: long lines are encoded, bare line ends normalised.
    #[test]
    fn built_messages_have_deliverable_lines() {
        let long_word = "y".repeat(3000);
        let draft = Draft {
            from: ("N".repeat(300), "a@shop.test".into()),
            to: vec!["r@dest.test".into()],
            subject: format!("{} {}", "s".repeat(990), "t".repeat(40)),
            html: format!("<p>{long_word}</p>\n<p>bare\rcr</p>"),
            text: format!("{long_word}\nsecond\rthird\r\n"),
            headers: vec![("X-Long".into(), "v".repeat(990))],
            message_id: "id@kiln.test".into(),
            attachments: vec![Attachment {
                name: "a.txt".into(),
                content_type: "text/plain",
                bytes: format!("{long_word}\r").into_bytes(),
            }],
            ..Draft::default()
        };
        let built = draft.build().unwrap();
        assert_eq!(
            crate::message::check_lines(&built),
            Ok(()),
            "{}",
            String::from_utf8_lossy(&built)
        );
    }
}
