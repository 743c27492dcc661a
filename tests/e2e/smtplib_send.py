"""Submits one message with Python's smtplib, as an ordinary client does:
STARTTLS (certificate not checked: the test daemon's is self-signed), AUTH
when a user is given, then MAIL, RCPT and DATA one by one.

Usage: smtplib_send.py HOST:PORT USER PASSWORD [SOURCE_IP]   (USER "-": no AUTH)
Reads {"from": ..., "to": [...], "data": BASE64} on stdin ({} to log in
and stop); prints the reply that decided it as {"code": N, "text": "..."}.
"""
import base64
import json
import smtplib
import ssl
import sys

host, port = sys.argv[1].rsplit(":", 1)
user, password = sys.argv[2], sys.argv[3]
source = (sys.argv[4], 0) if len(sys.argv) > 4 else None
req = json.load(sys.stdin)


def answer(code, text):
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    print(json.dumps({"code": code, "text": text}), flush=True)
    sys.exit(0)


try:
    s = smtplib.SMTP(host, int(port), timeout=60, source_address=source)
    s.ehlo("client.test")
    s.starttls(context=ssl._create_unverified_context())
    s.ehlo("client.test")
    if user != "-":
        # One mechanism, so that one login is one attempt (smtplib would
        # try LOGIN after a refused PLAIN).
        s.esmtp_features["auth"] = "PLAIN"
        code, text = s.login(user, password)
        if "from" not in req:
            answer(code, text)
    code, text = s.mail(req["from"])
    if code != 250:
        answer(code, text)
    for rcpt in req["to"]:
        code, text = s.rcpt(rcpt)
        if code not in (250, 251):
            answer(code, text)
    code, text = s.data(base64.b64decode(req["data"]))
    s.quit()
    answer(code, text)
except smtplib.SMTPResponseException as e:
    answer(e.smtp_code, e.smtp_error)
