"""Helpers shared by the index, search and show tests: build vaults from generated mail.

Messages enter a vault the way fetch commits them (BlobStore writer/publish, then
Catalog.commit_messages), so the indexer sees exactly what production gives it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

from mailvault.catalog import Committed, utcnow
from mailvault.testkit.generator import GeneratedMessage, generate
from mailvault.vault import Vault, init_vault

SEED = 20240305
COUNT = 240


def import_messages(
    vault: Vault,
    raws: Iterable[bytes],
    *,
    account: str | None = None,
    uidl_prefix: str = "u",
) -> list[str]:
    """Store and commit messages; returns their sha256s in order."""
    store = vault.store()
    staged = []
    for raw in raws:
        writer = store.writer()
        writer.write(raw)
        staged.append(writer.finish())
    store.publish(staged)
    catalog = vault.catalog()
    try:
        if account is not None:
            catalog.ensure_account(account, "pop.example.com", 995, "user", "implicit")
        catalog.commit_messages(
            account,
            None,
            "test",
            [
                Committed(s.digest, s.size, f"{uidl_prefix}{i}" if account else None, utcnow())
                for i, s in enumerate(staged)
            ],
        )
    finally:
        catalog.close()
    return [s.digest for s in staged]


def make_pdf(text: str) -> bytes:
    """A minimal one-page PDF showing ``text`` in Helvetica (ASCII only)."""
    stream = f"BT /F1 18 Tf 72 720 Td ({text}) Tj ET".encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


PDF_WORD = "zanzibarpdfword"
HTML_WORD = "quixotichtmlword"
HTML_TAG = "blinkertagname"
PDF_BYTES = make_pdf(f"Quarterly numbers {PDF_WORD} inside")


def _message(
    subject: str,
    *,
    sender: str = "Special Sender <special@example.com>",
    to: str = "Receiver <receiver@example.org>",
    mid: str,
    date: str = "2023-06-15T12:00:00+00:00",
) -> EmailMessage:
    from datetime import datetime

    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.fromisoformat(date))
    msg["Message-ID"] = f"<{mid}>"
    return msg


def special_messages() -> dict[str, bytes]:
    """Hand-made messages for the cases the generator does not cover, by name."""
    out: dict[str, bytes] = {}

    html = _message("Only HTML here", mid="html-only@test.example")
    html.set_content(
        f"<html><body><{HTML_TAG} class='x'><p>The word {HTML_WORD} is in the HTML part "
        f"only.</p></{HTML_TAG}></body></html>",
        subtype="html",
    )
    out["html"] = html.as_bytes()

    pdf = _message("Numbers attached", mid="pdf-attached@test.example")
    pdf.set_content("Please find the numbers attached.")
    pdf.add_attachment(PDF_BYTES, maintype="application", subtype="pdf", filename="numbers.pdf")
    out["pdf"] = pdf.as_bytes()

    accents = _message("Café Crème für Straße", mid="accents@test.example")
    accents.set_content("Ein schönes Frühstück im Café, ÉLÉPHANT rosé.")
    out["accents"] = accents.as_bytes()

    cjk = _message("東京タワーへ行く", mid="cjk@test.example")
    cjk.set_content("明日は東京タワーへ行きます。Привет, мир! Ünïcödé हिन्दी भाषा")
    out["cjk"] = cjk.as_bytes()

    for name, addr in (
        ("exact", "bob@example.com"),
        ("longer", "xbob@example.com"),
        ("subdomain", "bob@example.com.evil.example"),
    ):
        msg = _message(f"Address case {name}", sender=f"Bob <{addr}>", mid=f"{name}@test.example")
        msg.set_content(f"Address variant {name}.")
        out[name] = msg.as_bytes()

    out["winpath"] = (  # a Windows client's raw path in a quoted file name
        b"From: ann@example.com\r\nTo: bob@example.com\r\nSubject: Windows path name\r\n"
        b"Message-ID: <winpath@test.example>\r\nDate: Mon, 1 Apr 2024 10:00:00 +0000\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--B\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="C:\\Users\\ann\\quarterly.xls"\r\n\r\n'
        b"data\r\n--B--\r\n"
    )

    hostile = _message("Evil \x1b[31mred\x1b[0m subject", mid="hostile@test.example")
    hostile.set_content("Body with an escape \x1b]0;title\x07 sequence.")
    out["hostile"] = hostile.as_bytes()
    return out


def generated(count: int = COUNT, seed: int = SEED) -> list[GeneratedMessage]:
    return list(generate(count, seed))


def build_vault(
    root: Path, messages: Sequence[GeneratedMessage], extra: dict[str, bytes] | None = None
) -> tuple[Vault, list[str], dict[str, str]]:
    """A vault holding ``messages`` (sha256s in order) and ``extra`` (name -> sha256)."""
    vault = init_vault(root)
    digests = import_messages(vault, [m.raw for m in messages])
    names = list((extra or {}).keys())
    extra_digests = import_messages(vault, [(extra or {})[n] for n in names])
    return vault, digests, dict(zip(names, extra_digests, strict=True))


def fold(text: str) -> str:
    """Independent case/accent folding for expectations (NFKD, drop marks, lower)."""
    text = text.replace("ß", "ss").replace("æ", "ae").replace("œ", "oe").replace("ø", "o")
    text = text.replace("Æ", "AE").replace("Œ", "OE").replace("Ø", "O")
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def tokens(text: str) -> list[str]:
    """Words as the index splits them (letters/digits runs), folded."""
    return re.findall(r"[^\W_]+", fold(text))
