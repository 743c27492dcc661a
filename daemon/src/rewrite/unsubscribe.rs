//! Unsubscribe links: a footer in the language the send asks for (the 12
//! of the API's `Unsubscribe` option) and the `List-Unsubscribe` /
//! `List-Unsubscribe-Post` headers of RFC 8058 (one-click), both pointing at
//! a signed URL on Kiln's public listener.

/// (language code, footer text, link text, page title, button, done).
struct Words {
    footer: &'static str,
    link: &'static str,
    confirm: &'static str,
    button: &'static str,
    done: &'static str,
}

fn words(code: u8) -> Option<Words> {
    let w = |footer, link, confirm, button, done| Words {
        footer,
        link,
        confirm,
        button,
        done,
    };
    Some(match code {
        1 => w(
            "如果您不想再收到此类邮件，请",
            "退订",
            "确认退订来自 {domain} 的邮件？",
            "退订",
            "您已退订来自 {domain} 的邮件。",
        ),
        2 => w(
            "Don't want these emails?",
            "Unsubscribe",
            "Stop receiving email from {domain}?",
            "Unsubscribe",
            "You are unsubscribed from {domain}.",
        ),
        3 => w(
            "如果您不想再收到此類郵件，請",
            "取消訂閱",
            "確認取消訂閱來自 {domain} 的郵件？",
            "取消訂閱",
            "您已取消訂閱來自 {domain} 的郵件。",
        ),
        4 => w(
            "¿No quiere recibir estos correos?",
            "Darse de baja",
            "¿Dejar de recibir correos de {domain}?",
            "Darse de baja",
            "Se ha dado de baja de {domain}.",
        ),
        5 => w(
            "Vous ne souhaitez plus recevoir ces e-mails ?",
            "Se désabonner",
            "Ne plus recevoir d'e-mails de {domain} ?",
            "Se désabonner",
            "Vous êtes désabonné de {domain}.",
        ),
        6 => w(
            "Sie möchten diese E-Mails nicht mehr erhalten?",
            "Abmelden",
            "Keine E-Mails mehr von {domain} erhalten?",
            "Abmelden",
            "Sie sind von {domain} abgemeldet.",
        ),
        7 => w(
            "今後このようなメールが不要な場合は",
            "配信停止",
            "{domain} からのメールの配信を停止しますか？",
            "配信停止",
            "{domain} からの配信を停止しました。",
        ),
        8 => w(
            "이러한 이메일을 더 이상 받지 않으시려면",
            "수신 거부",
            "{domain}의 이메일 수신을 거부하시겠습니까?",
            "수신 거부",
            "{domain}의 이메일 수신이 거부되었습니다.",
        ),
        9 => w(
            "لا تريد تلقي هذه الرسائل؟",
            "إلغاء الاشتراك",
            "هل تريد إيقاف الرسائل من {domain}؟",
            "إلغاء الاشتراك",
            "تم إلغاء اشتراكك من {domain}.",
        ),
        10 => w(
            "ไม่ต้องการรับอีเมลเหล่านี้?",
            "ยกเลิกการรับข่าวสาร",
            "หยุดรับอีเมลจาก {domain} หรือไม่?",
            "ยกเลิกการรับ",
            "คุณได้ยกเลิกการรับอีเมลจาก {domain} แล้ว",
        ),
        11 => w(
            "Tidak ingin menerima email ini?",
            "Berhenti berlangganan",
            "Berhenti menerima email dari {domain}?",
            "Berhenti berlangganan",
            "Anda telah berhenti berlangganan dari {domain}.",
        ),
        12 => w(
            "Không muốn nhận những email này?",
            "Hủy đăng ký",
            "Ngừng nhận email từ {domain}?",
            "Hủy đăng ký",
            "Bạn đã hủy đăng ký nhận email từ {domain}.",
        ),
        _ => return None,
    })
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Adds the footer to the HTML (before `</body>`) and text parts.
pub fn add_footer(lang: u8, url: &str, html: &mut String, text: &mut String) {
    let Some(w) = words(lang) else { return };
    if !html.is_empty() {
        let footer = format!(
            "<p style=\"font-size:12px;color:#888\">{} <a href=\"{}\" data-kiln-notrack>{}</a></p>",
            escape(w.footer),
            escape(url),
            escape(w.link)
        );
        let lower = html.to_ascii_lowercase();
        match lower.rfind("</body>") {
            Some(i) => html.insert_str(i, &footer),
            None => html.push_str(&footer),
        }
    }
    if !text.is_empty() {
        text.push_str(&format!("\r\n\r\n{} {}: {url}\r\n", w.footer, w.link));
    }
}

/// The headers of RFC 8058: a mail provider's "unsubscribe" button POSTs
/// `List-Unsubscribe=One-Click` to the URL.
pub fn headers(url: &str) -> [(String, String); 2] {
    [
        ("List-Unsubscribe".into(), format!("<{url}>")),
        (
            "List-Unsubscribe-Post".into(),
            "List-Unsubscribe=One-Click".into(),
        ),
    ]
}

/// The page behind the link: a form that POSTs back (no script needed).
pub fn confirm_page(lang: u8, domain: &str) -> String {
    let w = words(lang)
        .or_else(|| words(2))
        .map(|w| (w.confirm, w.button))
        .unwrap_or_default();
    page(
        lang,
        &w.0.replace("{domain}", domain),
        &format!(
            "<form method=\"post\"><button type=\"submit\">{}</button></form>",
            escape(w.1)
        ),
    )
}

pub fn done_page(lang: u8, domain: &str) -> String {
    let done = words(lang)
        .or_else(|| words(2))
        .map(|w| w.done)
        .unwrap_or_default();
    page(lang, &done.replace("{domain}", domain), "")
}

fn page(lang: u8, title: &str, form: &str) -> String {
    let dir = if lang == 9 { "rtl" } else { "ltr" };
    format!(
        "<!doctype html><html dir=\"{dir}\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{t}</title></head>\
         <body style=\"font-family:sans-serif;max-width:32em;margin:3em auto\"><p>{t}</p>{form}</body></html>",
        t = escape(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_has_a_footer() {
        for code in 1..=12 {
            let (mut html, mut text) = (
                "<html><body><p>x</p></body></html>".to_string(),
                "x".to_string(),
            );
            add_footer(code, "https://k.test/u/T", &mut html, &mut text);
            assert!(
                html.contains("href=\"https://k.test/u/T\""),
                "{code}: {html}"
            );
            assert!(html.find("https://k.test/u/T").unwrap() < html.find("</body>").unwrap());
            assert!(text.ends_with("https://k.test/u/T\r\n"), "{code}");
            assert!(confirm_page(code, "shop.test").contains("<form method=\"post\">"));
        }
        assert_eq!(crate::ses::unsubscribe::language("2"), Some(2));
        assert_eq!(crate::ses::unsubscribe::language("0"), None);
        assert_eq!(crate::ses::unsubscribe::language("13"), None);
        assert!(done_page(6, "shop.test").contains("Sie sind von shop.test abgemeldet."));
    }
}
