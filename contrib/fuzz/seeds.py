#!/usr/bin/env python3
"""Writes the seed inputs of Kiln's fuzz targets into fuzz/corpus/<target>/.

The seeds are the well-formed inputs each target starts mutating from; the
fuzzer's own finds are added beside them (minimised with `cargo fuzz cmin`).
Run from anywhere; files are named by content, so running it again changes
nothing.
"""
import hashlib
import json
import pathlib
import struct
import zlib

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent / "fuzz" / "corpus"


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = ROOT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / ("seed-" + hashlib.sha1(data).hexdigest()[:16])).write_bytes(data)


# SMTP commands: one session per file.
put("smtp_command", "EHLO client.example\r\nMAIL FROM:<Ann@Example.COM> SIZE=1000 BODY=8BITMIME\r\n"
    "RCPT TO:<bob@dest.test>\r\nRCPT TO:<\"j smith\"@dest.test>\r\nDATA\r\nRSET\r\nNOOP\r\nQUIT\r\n")
put("smtp_command", "HELO [192.0.2.1]\r\nMAIL FROM:<> SMTPUTF8 REQUIRETLS\r\nRCPT TO:<@a.test,@b.test:ünï@dest.test>\r\n")
put("smtp_command", "AUTH PLAIN AGFubgBzZWNyZXQ=\r\nAUTH LOGIN\r\nSTARTTLS\r\nVRFY bob\r\nHELP\r\n")
put("smtp_command", "MAIL FROM:<a@[IPv6:2001:db8::1]>\r\nRCPT TO:<postmaster>\r\nrcpt to: <x@y.test> NOTIFY=NEVER\r\n")

# DATA: a steering prefix (size limit, read sizes), then what follows DATA.
steer = bytes([200, 3, 17, 250, 1])
put("smtp_data", steer + b"Subject: hi\r\n\r\n..leading dot\r\nbody\r\n.\r\nQUIT\r\n")
put("smtp_data", steer + b"Subject: smuggle\r\n\r\nline\n.\r\nMAIL FROM:<x@y.test>\r\n.\r\n")
put("smtp_data", steer + b"a\r\n" + b"x" * 1200 + b"\r\n.\r\n")
put("smtp_data", bytes([0, 1, 1, 1, 1]) + b"too big for sixteen bytes\r\nmore\r\n.\r\n")
put("smtp_data", steer + b"bare\rcr\r\n.\r\n")

# Addresses.
for a in ["ann@example.com", "\"john smith\"@Example.COM", "a.b+c@[192.0.2.1]",
          "x@[IPv6:2001:db8::1]", "ünï@dömain.test", "\"a\\\\b\\\"c\"@d.test", "postmaster",
          "a@b", "." * 70 + "@long.test"]:
    put("address", a)

# Reports back to the bounce domain.
put("inbound_report",
    "From: MAILER-DAEMON@mx.dest.test\r\nTo: b-1-0-x@bounces.acme.test\r\nSubject: Undelivered\r\n"
    "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n"
    "--B\r\nContent-Type: text/plain\r\n\r\nThe mailbox does not exist.\r\n"
    "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.dest.test\r\n\r\n"
    "Final-Recipient: rfc822; ann@dest.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    "Remote-MTA: dns; mx.dest.test\r\nDiagnostic-Code: smtp; 550 5.1.1 <ann@dest.test>:\r\n user unknown\r\n\r\n"
    "Final-Recipient: rfc822;bob@dest.test\r\nAction: delayed\r\nStatus: 4.2.2\r\n\r\n"
    "--B\r\nContent-Type: text/rfc822-headers\r\n\r\nSubject: News\r\n\r\n--B--\r\n")
put("inbound_report",
    "From: abuse@dest.test\r\nTo: b-1-0-x@bounces.acme.test\r\nSubject: Abuse report\r\nMIME-Version: 1.0\r\n"
    "Content-Type: multipart/report; report-type=feedback-report; boundary=\"F\"\r\n\r\n"
    "--F\r\nContent-Type: text/plain\r\n\r\nA user marked this message as spam.\r\n"
    "--F\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: DestMail/1.0\r\n"
    "Version: 1\r\nOriginal-Rcpt-To: <ann@dest.test>\r\nSource-IP: 192.0.2.7\r\n"
    "Arrival-Date: Thu, 8 Mar 2026 14:00:00 EDT\r\n\r\n"
    "--F\r\nContent-Type: message/rfc822\r\n\r\nFrom: news@mail.acme.test\r\nTo: ann@dest.test\r\n"
    "Subject: News for you\r\n\r\nHello\r\n--F--\r\n")

# API requests: the Authorization header, then the body.
auth = ("TC3-HMAC-SHA256 Credential=AKIDexample/2026-09-21/ses/tc3_request, "
        "SignedHeaders=content-type;host, Signature=" + "ab" * 32)
put("api_request", auth + "\n" + json.dumps({
    "FromEmailAddress": "Acme <news@mail.acme.test>", "Destination": ["ann@dest.test"],
    "Subject": "Hi", "Template": {"TemplateID": 1, "TemplateData": "{\"name\":\"Ann\"}"},
    "Attachments": [{"FileName": "a.txt", "Content": "aGVsbG8="}], "Unsubscribe": "1",
    "TriggerType": 1, "Offset": 0, "Limit": 10}))
put("api_request", auth + "\n" + json.dumps({
    "ReceiverId": 3, "Datas": [{"Email": "a@b.test", "TemplateData": "{}"}],
    "BlackList": ["x@y.test"], "StartDate": "2026-09-01", "EndDate": "2026-09-30"}))
put("api_request", "TC3-HMAC-SHA256 Credential=/, SignedHeaders=, Signature=\n{}")

# Templates: text, NUL, then the data (JSON, or one value for every variable).
put("template", "<html><body><p>Hello {{name}},</p><a href=\"https://acme.test/a?b=1&amp;c=2\">read</a>"
    "<A HREF='http://x.test/'>x</A><a href=\"mailto:a@b.test\">m</a></body></html>\0"
    + json.dumps({"name": "<b>Ann</b> & \"co\""}))
put("template", "Dear {{ first }} {{last}}, your code is {{code}}\0" + json.dumps({"first": "A", "last": None, "code": 42}))
put("template", "{{a}}{{b}}{{}}{{ {{c}} }}\0<script>")

# Policy answers: the byte program fuzzing.rs's lua_value reads.
FIELDS = ["action", "code", "smtp", "message", "retry_at", "reasons", "drop", "cap", "day",
          "applies_to", "class", "invalid_address", "rule", "suspend_s", "factor", "recover_s",
          "other_source", "retry", "bounce", "sources", "pools", "providers", "defaults", "name",
          "address", "ehlo", "warmup", "weight", "pool", "source", "accept", "reject", "defer",
          "send", "level", "connections", "per_second", "per_minute", "per_hour", "match"]


def word(w):  # a string from the field list
    return bytes([0x84, FIELDS.index(w)])


def raw(s):  # a string of its own bytes
    s = s.encode()
    return bytes([4, len(s)]) + s


def key(w):
    return bytes([1, FIELDS.index(w)])


def table(*pairs):
    out = bytes([6, len(pairs)])
    for k, v in pairs:
        out += k + v
    return out


def integer(n):
    return bytes([2]) + struct.pack("<q", n)


def number(x):
    return bytes([3]) + struct.pack("<d", x)


put("hook_answer", table((key("action"), word("reject")), (key("smtp"), raw("550 5.7.1 no")),
                          (key("message"), raw("spam"))))
put("hook_answer", table((key("action"), word("defer")), (key("retry_at"), integer(1790000000)),
                          (key("reasons"), table((bytes([0]), raw("busy"))))))
put("hook_answer", table((key("action"), word("send")), (key("drop"), table((key("code"), raw("x"))))))
put("hook_answer", table((key("rule"), raw("gmail-4.7.28")), (key("suspend_s"), number(float("inf"))),
                          (key("factor"), number(0.5)), (key("recover_s"), number(-1.0))))
put("hook_answer", table((key("cap"), number(float("nan"))), (key("day"), number(3.0))))
put("hook_answer", table((key("sources"), table((bytes([0]), table((key("name"), raw("a")),
                                                                   (key("address"), raw("127.0.0.2")))))),
                          (key("defaults"), table((key("per_second"), number(-5.0)),
                                                  (key("connections"), integer(0))))))

# The write-ahead log: a real log (header, frames, a stale frame), and the
# byte programs fuzzing.rs's wal_replay builds logs from.
def frame(gen, payload):
    return struct.pack("<IIQ", len(payload), zlib.crc32(struct.pack("<Q", gen) + payload), gen) + payload


def put_change(table_id, k, v):
    return b"p" + bytes([table_id]) + struct.pack("<I", len(k)) + k + struct.pack("<I", len(v)) + v


def remove_change(table_id, k):
    return b"r" + bytes([table_id]) + struct.pack("<I", len(k)) + k


log = b"KILNWAL1" + struct.pack("<Q", 7)
log += frame(7, put_change(1, b"m1", b"message body") + put_change(2, b"q1", b"entry"))
log += frame(7, remove_change(2, b"q1") + put_change(4, b"s1", b"{}"))
log += frame(6, put_change(5, b"old", b"stale"))
put("wal_replay", log + b"\0" * 32)
put("wal_replay", bytes([3]) + struct.pack("<Q", 0x1234567) + bytes([3, 2, 5]) + b"key12345" * 4)
put("wal_replay", bytes([1]) + struct.pack("<Q", 0xFFFFFFFFFFFF01) + bytes([5, 3, 0x81]) + b"abcdefgh" * 8)

# Transport security: a steering byte (0 an MTA-STS policy file, 1 a TXT
# record, 2 a TLSA record and a certificate), then the input.
put("transport_policy", b"\0version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n")
put("transport_policy", b"\0version: STSv1\nmode: none\nmax_age: 86400\nunknown: key\n")
put("transport_policy", b"\0version: STSv1\r\nmode: testing\r\nmx: MX.Example.COM\r\nmax_age: 99999999999\r\n")
put("transport_policy", b"\1v=STSv1; id=20160831085700Z;")
put("transport_policy", b"\1v=TLSRPTv1; rua=mailto:tls@example.com,https://reports.example.com/v1/tlsrpt")
put("transport_policy", b"\1v=TLSRPTv1;rua=mailto:tls%40example.com?subject=x, http://plain.example/")
# A TLSA 3 1 1 record (32 bytes) and a few bytes standing for a certificate.
put("transport_policy", bytes([2, 3, 1, 1, 32]) + bytes(range(32)) + b"\x30\x82\x01\x0a" + bytes(40))
put("transport_policy", bytes([2, 2, 0, 2, 64]) + bytes(64) + b"\x30\x03\x02\x01\x00")
