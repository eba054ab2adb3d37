"""Seeded generator of realistic mail, for volume tests, ``make demo`` and benchmarks.

Why generated rather than collected: a corpus of real mail cannot be shipped, while a seeded
generator gives any number of messages, byte-identical for a seed, and a record of what each
message holds, so search and export tests know the right answer.

The mix: plain text, multipart/alternative (text + HTML), multipart/mixed with attachments
(binary blobs, text files, now and then a forwarded message/rfc822); 7bit, 8bit,
quoted-printable and base64 bodies in UTF-8, US-ASCII and ISO-8859-1; RFC 2047 names and
subjects in German, French, Russian and Japanese; RFC 2231 attachment names; lines that start
with "." or "From " (for POP3 dot-stuffing and mbox quoting); threads (In-Reply-To and
References); mailing-list mail (List-Id); dates from 2022 to 2025.  Sizes are log-normal
around ``median_size`` with an occasional big attachment, never above ``max_size``.

Usage::

    for msg in generate(1000, seed=7):
        msg.raw, msg.subject, msg.words ...

    python -m mailvault.testkit.generator --count 500 --seed 1 --maildir /tmp/md
    python -m mailvault.testkit.generator --count 500 --mbox /tmp/mail.mbox

Determinism: everything comes from one ``random.Random(seed)`` drawn in a fixed order; no set
is ever iterated (string hashing differs between processes), nothing is read from the system.
Python's ``random`` keeps its output for a seed across versions for the calls used here.
"""

from __future__ import annotations

import argparse
import array
import base64
import binascii
import html as html_lib
import math
import operator
import os
import random
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

__all__ = [
    "Attachment",
    "GeneratedMessage",
    "STOPWORDS",
    "body_words",
    "generate",
    "write_maildir",
    "write_mbox",
]


class Attachment(NamedTuple):
    """One attachment as written: decoded name, MIME type, decoded size in bytes."""

    filename: str
    content_type: str
    size: int


@dataclass(frozen=True)
class GeneratedMessage:
    """A generated message and the record of what was written into it.

    ``body_text`` is the text/plain body with "\\n" line ends (the message has CRLF).
    ``words`` is every word of ``body_text`` (see :func:`body_words`), so a search test knows
    exactly which messages hold a word; ``marker`` is one of them that no other message of
    the same :func:`generate` call holds.
    """

    raw: bytes
    message_id: str  # without the angle brackets
    date: datetime  # aware, UTC; the Date header has the same instant in the sender's zone
    from_addr: str
    from_name: str  # decoded display name, "" if none
    to: tuple[str, ...]
    cc: tuple[str, ...]
    subject: str  # decoded
    body_text: str
    html: bool  # has a text/html alternative
    attachments: tuple[Attachment, ...]
    words: frozenset[str]
    marker: str
    language: str  # en, de, fr, ru or ja: the language of the body
    in_reply_to: str | None = None  # message id without brackets
    references: tuple[str, ...] = ()
    list_id: str | None = None  # e.g. "atlas-dev.lists.example.org"
    flags: tuple[str, ...] = field(default=())  # "dot-lines", "from-lines", "8bit", ...

    @property
    def size(self) -> int:
        """Size of ``raw`` in bytes."""
        return len(self.raw)


# -- word lists -----------------------------------------------------------------------------


def _split(words: str) -> list[str]:
    """Whitespace-separated words: keeps the long lists below readable."""
    return words.split()


_EN_WORDS = _split(
    """
account action address advice agenda agreement airport analysis answer apartment application
appointment approval archive argument article assignment attachment audit autumn backup
balance bank basket battery beach bicycle birthday blanket board book border bottle branch
breakfast bridge budget building bundle calendar camera campaign candidate capacity carpet
castle catalog ceiling certificate chapter chart checklist chicken choice circle client cloud
coffee collection colleague comment committee company computer concert conference contract
copy corner cottage council country course cousin coverage customer dashboard database
deadline decision delivery department deposit design desk detail device diagram dinner
director discount document draft dragon drawer dress driver editor election engine estimate
evening event example exhibition expense experiment factory family feature festival figure
filter finance firewall flight flower folder forecast forest fountain framework friday garden
gateway glacier grocery guitar hammer harbor harvest headline helmet highway history holiday
hospital hotel household incident income index insurance interview invoice island jacket
journal journey kernel kitchen ladder language laptop lawyer lecture ledger letter library
license lighthouse luggage lunch machine magazine manager manual market meadow meeting memory
message method migration minute mirror monday monitor morning mountain museum network
newsletter notebook number office opinion orange orchard package painting parcel parking
partner passport payment pencil pepper permit picture pipeline planet platform pocket policy
portal position postcard poster potato prescription presentation printer priority problem
process product profile program project proposal protocol purchase puzzle quarter question
rabbit railway receipt recipe record region release report request research reservation
resource restaurant result review ribbon river roadmap rocket router salary sandwich saturday
schedule science screen script season secretary semester server service session shelter
shipment signature silver sketch snapshot software spreadsheet spring stadium station
statement storage strategy student studio subscription summary summer sunday supplier survey
sweater system teacher telescope template tenant terminal theater thursday ticket timeline
tomato tournament tractor traffic training transfer translation treasure tuesday tunnel
umbrella university update upgrade vacation valley vendor version village violin volunteer
voucher wallet warehouse weather website wednesday weekend window winter workshop yesterday
approve arrange attach borrow calculate cancel celebrate check collect confirm consider
deliver discuss download explain finish forward improve install invite measure migrate
mention organize prepare publish receive recommend remember repair replace reply schedule
send share suggest support translate upload verify visit wonder accurate annual brief careful
central certain complete curious digital early eager empty final formal fresh gentle global
happy heavy honest initial internal large late local loyal main modern narrow natural nervous
official optional pleasant polite possible private quick quiet rapid rare regular remote
robust rough secure simple slow small solid special stable strict sudden sunny tall tidy
typical urgent useful vivid warm weekly wide wooden yellow
"""
)

_DE_WORDS = _split(
    """
Besprechung Rechnung Übersicht Änderung Größe Straße Mädchen Frühstück Bürgermeister Ausflug
Vertrag Unterlagen Zeitplan Angebot Lieferung Kündigung Überweisung Geschäftsführer Schlüssel
Brötchen Gemüse Käse Fußball Wörterbuch Prüfung Kühlschrank Führerschein Bahnhof Fahrrad
Wohnung Termin Urlaub Feierabend Zusammenfassung Abstimmung Freigabe Abteilung
Ansprechpartner Erfahrung Zukunft Entwicklung Verbesserung Sicherung Datenbank Gespräch
Hälfte Öffnungszeiten Glück Äpfel Bäckerei Gebäude natürlich pünktlich möglich schön grün
müde fröhlich dringend wichtig gemütlich übermorgen gestern heute später
"""
)

_FR_WORDS = _split(
    """
réunion café été élève fenêtre hôpital théâtre château forêt garçon français prénom numéro
problème système entreprise facture équipe début clé noël frère très déjà bientôt
après voilà ça rendez événement procès bibliothèque marché médecin
"""
)

_RU_WORDS = _split(
    """
привет встреча документ договор отчёт счёт письмо проект компания работа неделя сегодня
завтра вчера задача решение вопрос ответ команда сервер данные архив почта адрес телефон
сообщение время деньги город дом книга машина погода зима лето осень весна праздник подарок
друг семья ребёнок школа университет библиотека больница магазин ресторан кофе чай хлеб
молоко яблоко важный срочный новый хороший большой маленький быстро спасибо пожалуйста
"""
)

_JA_WORDS = _split(
    """
会議 資料 報告 予定 確認 連絡 東京 大阪 京都 電話 メール 会社 仕事 時間 今日 明日 昨日 天気 写真
旅行 電車 駅 学校 先生 学生 友達 家族 料理 お茶 ご飯 請求書 契約 見積 締切 進捗 議事録 添付 送信
返信 承認 サーバー データ
"""
)

_FUNCTION_WORDS = {
    "en": _split(
        "the a an and or but to of in on at for with from by about as is are was were be "
        "will can could should would we you they it this that these those our your their my not "
        "please also just very some any more most"
    ),
    "de": _split(
        "und der die das mit für auf ist wir sie nicht bitte auch noch schon aber oder im am "
        "zum zur"
    ),
    "fr": _split("le la les et de du des pour avec dans est nous vous pas une un sur"),
    "ru": _split("и в на с по для не что это мы вы они как но"),
    "ja": _split("の は を に が と で も"),
}

#: Words left out of :attr:`GeneratedMessage.words`: function words of every language.
STOPWORDS: frozenset[str] = frozenset(w for ws in _FUNCTION_WORDS.values() for w in ws)

_CONTENT_WORDS = {
    "en": _EN_WORDS,
    "de": _DE_WORDS + _EN_WORDS[:40],
    "fr": _FR_WORDS + _EN_WORDS[40:80],
    "ru": _RU_WORDS,
    "ja": _JA_WORDS,
}

_GREETING = {
    "en": ["Hi {first},", "Hello {first},", "Dear {first},", "Hey {first},"],
    "de": ["Hallo {first},", "Liebe Grüße vorab, {first},", "Guten Tag {first},"],
    "fr": ["Bonjour {first},", "Salut {first},", "Chère équipe,"],
    "ru": ["Здравствуйте, {first}!", "Привет, {first}!"],
    "ja": ["{last}様", "{last}さん"],
}
_SIGN_OFF = {
    "en": ["Best regards,", "Thanks,", "Cheers,", "Kind regards,"],
    "de": ["Viele Grüße", "Mit freundlichen Grüßen", "Beste Grüße"],
    "fr": ["Cordialement,", "Bien à vous,", "À bientôt,"],
    "ru": ["С уважением,", "Спасибо,"],
    "ja": ["よろしくお願いします。", "以上です。"],
}
_REPLY_PREFIX = {"en": "Re: ", "de": "AW: ", "fr": "Re : ", "ru": "Re: ", "ja": "Re: "}
_SENTENCE_END = {"en": ".", "de": ".", "fr": ".", "ru": ".", "ja": "。"}
_LANGUAGES = ["en", "de", "fr", "ru", "ja"]
_LANGUAGE_WEIGHTS = [70, 11, 7, 7, 5]

# "Name:ascii" (the ASCII spelling makes the address; absent when the name is ASCII).
_FIRST = {
    "en": _split(
        "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Susan "
        "Richard Jessica Thomas Sarah Charles Karen Daniel Lisa Matthew Nancy"
    ),
    "de": _split(
        "Jürgen:juergen Björn:bjoern Günther:guenther Jörg:joerg Anna:anna Lena:lena "
        "Käthe:kaethe Sören:soeren Ute:ute Klaus:klaus"
    ),
    "fr": _split(
        "François:francois Hélène:helene Zoé:zoe Jérôme:jerome Amélie:amelie Chloé:chloe "
        "Gaël:gael Loïc:loic"
    ),
    "ru": _split(
        "Дмитрий:dmitry Ольга:olga Сергей:sergey Наталья:natalya Алексей:alexey "
        "Екатерина:ekaterina Иван:ivan Мария:maria"
    ),
    "ja": _split("太郎:taro 花子:hanako 健一:kenichi 由美:yumi 翔太:shota さくら:sakura"),
}
_LAST = {
    "en": _split(
        "Smith Johnson Williams Brown Jones Miller Davis Wilson Anderson Taylor Moore Jackson "
        "Martin Lee Thompson White Harris Clark Lewis Walker"
    ),
    "de": _split(
        "Müller:mueller Schäfer:schaefer Weiß:weiss Köhler:koehler Schröder:schroeder "
        "Groß:gross Bauer:bauer Hoffmann:hoffmann Krüger:krueger"
    ),
    "fr": _split(
        "Lefèvre:lefevre Dubois:dubois Bélanger:belanger Pâquet:paquet Ménard:menard Girard:girard"
    ),
    "ru": _split(
        "Иванов:ivanov Смирнов:smirnov Кузнецов:kuznetsov Попов:popov Соколов:sokolov "
        "Лебедев:lebedev"
    ),
    "ja": _split("山田:yamada 佐藤:sato 鈴木:suzuki 高橋:takahashi 田中:tanaka 渡辺:watanabe"),
}
_DOMAINS = {
    "en": ["example.com", "example.org", "example.net", "mail.example.com", "corp.example.org"],
    "de": ["de.example.net", "example.com", "firma.example.org"],
    "fr": ["fr.example.net", "example.org"],
    "ru": ["ru.example.org", "example.net"],
    "ja": ["jp.example.com", "example.com"],
}
_LISTS = [
    ("Atlas developers", "atlas-dev.lists.example.org", "atlas-dev", "en"),
    ("Release announcements", "announce.lists.example.com", "announce", "en"),
    ("Gemeinschaftsgarten Nord", "garten.lists.example.net", "garten", "de"),
    ("Club photo de Lyon – été", "photo.lists.example.com", "photo", "fr"),
    ("Любители шахмат", "chess.lists.example.org", "chess", "ru"),
]
_MAILERS = [
    "Mozilla Thunderbird 115.3.1",
    "Apple Mail (2.3731.700.6)",
    "Microsoft Outlook 16.0",
    "Mutt/2.2.9 (2022-11-12)",
    "Roundcube Webmail/1.6.5",
]
_TZ_OFFSETS = [0, 0, 60, 60, 120, -300, -240, -480, 540, 180, 330, 600, -180]
_DOT_LINES = [".", "...", ".hidden is the file we talked about", "..two dots lead here", ". ."]
_FROM_LINES = [
    "From what I can tell the numbers are fine.",
    "From the next release on this is the default.",
    "From: this line only looks like a header",
]
_MARKER_SYLLABLES = _split("ba ke lo mi nu pa re si to vu wa xe yo za qi fu")
_START = datetime(2022, 1, 1, tzinfo=UTC)
_END = datetime(2025, 12, 31, 23, 0, tzinfo=UTC)
_B64_LINE = re.compile(rb".{1,76}", re.S)
_WORD_RE = re.compile(r"[^\W\d_]+")
_Q_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!*+-/")
_ATTACHMENT_KINDS = [
    # (extension, content type, magic bytes, is text)
    ("csv", "text/csv", b"", True),
    ("txt", "text/plain", b"", True),
    ("png", "image/png", b"\x89PNG\r\n\x1a\n", False),
    ("jpg", "image/jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", False),
    ("zip", "application/zip", b"PK\x03\x04", False),
    ("bin", "application/octet-stream", b"", False),
]
_BIG_ATTACHMENT_RATE = 0.002


def _css(rules: int) -> str:
    """A style sheet of ``rules`` rules, like the ones mail clients and newsletters send."""
    names = _split("body wrapper header footer content button card column row spacer title lead")
    out = []
    for i in range(rules):
        name = f"{names[i % len(names)]}{i // len(names) or ''}"
        out.append(
            f".{name} {{ margin: {i % 5 * 4}px 0; padding: {i % 3 * 6}px {i % 4 * 5}px; "
            f"color: #{(i * 2654435761) & 0xFFFFFF:06x}; font-family: Helvetica, Arial, "
            f"sans-serif; font-size: {12 + i % 6}px; line-height: 1.{4 + i % 4}; }}\n"
        )
    return "".join(out)


# Plain, client-made and newsletter-sized style sheets: HTML size at little CPU cost.
_STYLES = [_css(3), _css(12), _css(40)]


def body_words(text: str) -> frozenset[str]:
    """The words of a body as :attr:`GeneratedMessage.words` counts them.

    Lower-cased runs of letters (Unicode, no digits or "_") of two or more characters, minus
    :data:`STOPWORDS`.  Japanese words are written with spaces between them, so they count too.
    """
    found = set(_WORD_RE.findall(text.lower()))
    found -= STOPWORDS
    return frozenset(w for w in found if len(w) >= 2)


def _marker(index: int) -> str:
    """A made-up word, different for every index: 'q' + index in base 16 as syllables."""
    digits = []
    for _ in range(5):
        index, rem = divmod(index, 16)
        digits.append(_MARKER_SYLLABLES[rem])
    while index:
        index, rem = divmod(index, 16)
        digits.append(_MARKER_SYLLABLES[rem])
    return "q" + "".join(reversed(digits))


# -- header encoding -----------------------------------------------------------------------


def _encode_words(text: str, *, q: bool) -> str:
    """RFC 2047 encoded words (UTF-8, Q or B) of at most ~60 characters, folded."""
    words = []
    chunk: list[str] = []
    size = 0
    for ch in text:
        data = ch.encode()
        cost = sum(1 if b in _Q_SAFE or b == 0x20 else 3 for b in data) if q else len(data)
        limit = 46 if q else 36
        if chunk and size + cost > limit:
            words.append("".join(chunk))
            chunk, size = [], 0
        chunk.append(ch)
        size += cost
    if chunk:
        words.append("".join(chunk))
    encoded = []
    for word in words:
        data = word.encode()
        if q:
            body = "".join(
                "_" if b == 0x20 else chr(b) if b in _Q_SAFE else f"={b:02X}" for b in data
            )
            encoded.append(f"=?UTF-8?Q?{body}?=")
        else:
            encoded.append(f"=?UTF-8?B?{base64.b64encode(data).decode()}?=")
    return "\r\n ".join(encoded)


def _fold_ascii(text: str, first_line_used: int) -> str:
    """Fold an ASCII unstructured header value at spaces to lines of at most 78."""
    out: list[str] = []
    line = ""
    used = first_line_used
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if line and used + len(candidate) > 76:
            out.append(line)
            line, used = word, 1
        else:
            line = candidate
    out.append(line)
    return "\r\n ".join(out)


def _unstructured(name: str, value: str, rng: random.Random) -> str:
    """A header line (without CRLF) holding ``value``, encoded if it is not ASCII."""
    if value.isascii():
        return f"{name}: {_fold_ascii(value, len(name) + 2)}"
    latin = all(ord(c) < 0x250 for c in value)
    return f"{name}: {_encode_words(value, q=latin and rng.random() < 0.7)}"


def _mailbox(name: str, addr: str, rng: random.Random) -> str:
    if not name:
        return addr if rng.random() < 0.5 else f"<{addr}>"
    if not name.isascii():
        latin = all(ord(c) < 0x250 for c in name)
        return f"{_encode_words(name, q=latin and rng.random() < 0.5)} <{addr}>"
    if re.search(r'[()<>\[\]:;@\\,."]', name):
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}" <{addr}>'
    return f"{name} <{addr}>"


def _address_list(name: str, mailboxes: list[str]) -> str:
    lines: list[str] = []
    line = f"{name}:"
    for i, mailbox in enumerate(mailboxes):
        piece = f" {mailbox}" + ("," if i < len(mailboxes) - 1 else "")
        if len(line) + len(piece) > 76 and line != f"{name}:":
            lines.append(line)
            line = piece
        else:
            line += piece
    lines.append(line)
    return "\r\n".join(lines)


# -- body encoding -------------------------------------------------------------------------


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


def _b64(data: bytes) -> bytes:
    encoded = binascii.b2a_base64(data, newline=False)
    if not encoded:
        return b""
    return b"\r\n".join(_B64_LINE.findall(encoded)) + b"\r\n"


def _qp(data: bytes) -> bytes:
    """Quoted-printable of LF-ended text, with CRLF line ends."""
    return _crlf(binascii.b2a_qp(data, istext=True))


def _encode_body(data_lf: bytes, cte: str) -> bytes:
    if cte in ("7bit", "8bit"):
        return _crlf(data_lf)
    if cte == "quoted-printable":
        return _qp(data_lf)
    return _b64(_crlf(data_lf))


_WRAP = re.compile(r"(.{1,72})(?: +|$)")


def _wrap(line: str) -> list[str]:
    """Greedy wrap at 72 columns (words are short, so a regex does it at C speed)."""
    return [piece for piece in _WRAP.findall(line) if piece]


class _Person(NamedTuple):
    name: str  # display name, may be ""
    first: str
    last: str
    addr: str
    language: str


class _Parent(NamedTuple):
    message_id: str
    references: tuple[str, ...]
    subject: str
    date: datetime
    person: _Person
    quote: list[str]
    list_index: int | None


class _Part(NamedTuple):
    headers: str  # CRLF-separated header lines, no trailing CRLF
    body: bytes  # ends with CRLF


def _leaf(content_type: str, cte: str, body: bytes, *extra: str) -> _Part:
    lines = [f"Content-Type: {content_type}", f"Content-Transfer-Encoding: {cte}", *extra]
    return _Part("\r\n".join(lines), body)


def _multipart(subtype: str, boundary: str, parts: list[_Part], preamble: bool) -> _Part:
    chunks = [b"This is a multi-part message in MIME format.\r\n"] if preamble else []
    for part in parts:
        chunks.append(f"--{boundary}\r\n{part.headers}\r\n\r\n".encode())
        chunks.append(part.body)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    header = f'Content-Type: multipart/{subtype};\r\n boundary="{boundary}"'
    return _Part(header, b"".join(chunks))


class _Generator:
    """State of one :func:`generate` call: the rng, the people, recent messages to reply to."""

    def __init__(self, seed: int, count: int, median_size: int, max_size: int) -> None:
        self.rng = random.Random(seed)
        self.count = count
        self.median = median_size
        self.max_size = max_size
        self.people = [self._person() for _ in range(120)]
        self.recent: list[_Parent] = []
        self.tables: dict[str, list[str]] = {}
        self.capitals: dict[str, list[str]] = {}
        for lang in _LANGUAGES:
            pool = _CONTENT_WORDS[lang] * 3 + _FUNCTION_WORDS[lang] * 2
            self.tables[lang] = [pool[i % len(pool)] for i in range(65536)]
            self.capitals[lang] = [w[:1].upper() + w[1:] for w in self.tables[lang]]

    # -- people, dates, sizes --------------------------------------------------------------

    def _person(self) -> _Person:
        rng = self.rng
        lang = rng.choices(_LANGUAGES, _LANGUAGE_WEIGHTS)[0]
        first, _, first_ascii = rng.choice(_FIRST[lang]).partition(":")
        last, _, last_ascii = rng.choice(_LAST[lang]).partition(":")
        first_ascii, last_ascii = (first_ascii or first).lower(), (last_ascii or last).lower()
        domain = rng.choice(_DOMAINS[lang])
        addr = f"{first_ascii}.{last_ascii}@{domain}"
        roll = rng.random()
        if roll < 0.08:
            name = ""
        elif lang == "ja":
            name = f"{last} {first}"
        elif roll < 0.15:
            name = f"{last}, {first}"
        else:
            name = f"{first} {last}"
        return _Person(name, first, last, addr, lang)

    def _date(self, index: int) -> datetime:
        span = (_END - _START).total_seconds()
        at = span * (index + self.rng.random()) / max(self.count, 1)
        return (_START + timedelta(seconds=int(at))).replace(microsecond=0)

    def _target_size(self) -> int:
        rng = self.rng
        cap = int(self.max_size * 0.95)
        if rng.random() < _BIG_ATTACHMENT_RATE:
            low = min(max(self.median * 10, 200_000), cap)
            return int(math.exp(rng.uniform(math.log(low), math.log(cap))))
        return max(1200, min(cap, int(rng.lognormvariate(math.log(self.median), 0.9))))

    # -- text ------------------------------------------------------------------------------

    def _sentence(self, lang: str) -> str:
        return self._sentences(lang, 1)

    def _sentences(self, lang: str, count: int) -> str:
        """``count`` sentences of 5-14 words, on one line.

        Words come from random bytes through a 65536-entry table, which is several times
        faster than rng.choices (a Python call per word); this is the generator's hot loop.
        """
        rolls = self.rng.randbytes(2 * count)
        lengths = [5 + b % 10 for b in rolls[:count]]
        total = sum(lengths)
        picks = array.array("H", self.rng.randbytes(2 * total))
        if sys.byteorder == "big":
            picks.byteswap()
        words = list(operator.itemgetter(*picks)(self.tables[lang]))
        capitals = self.capitals[lang]
        end = _SENTENCE_END[lang]
        pos = 0
        for length, roll in zip(lengths, rolls[count:], strict=True):
            words[pos] = capitals[picks[pos]]
            pos += length
            words[pos - 1] += end if roll < 218 else "?" if roll < 238 else "!"
        return " ".join(words)

    def _paragraph(self, lang: str) -> list[str]:
        return _wrap(self._sentences(lang, self.rng.randint(2, 6)))

    def _body_text(
        self,
        lang: str,
        budget: int,
        cte: str,
        sender: _Person,
        recipient: _Person,
        parent: _Parent | None,
        marker: str,
        flags: list[str],
    ) -> tuple[str, list[str]]:
        """Return (text, first paragraph lines) with about ``budget`` encoded bytes."""
        rng = self.rng
        greeting = rng.choice(_GREETING[lang]).format(first=recipient.first, last=recipient.last)
        paragraphs = [[greeting]]
        first = self._paragraph(lang)
        paragraphs.append(first)
        used = len(greeting) + sum(len(line) + 1 for line in first)
        ratio = {"base64": 1.37, "quoted-printable": 1.0}.get(cte, 1.0)
        while used * ratio < budget:
            paragraph = self._paragraph(lang)
            data = "\n".join(paragraph).encode()
            used += len(_qp(data)) if cte == "quoted-printable" else len(data)
            paragraphs.append(paragraph)
        if rng.random() < 0.08:
            flags.append("dot-lines")
            for line in rng.sample(_DOT_LINES, rng.randint(1, 3)):
                paragraphs.insert(rng.randint(2, len(paragraphs)), [line])
        if rng.random() < 0.08:
            flags.append("from-lines")
            paragraphs.insert(rng.randint(2, len(paragraphs)), [rng.choice(_FROM_LINES)])
        paragraphs.append([f"(ref {marker})"])
        sign = [rng.choice(_SIGN_OFF[lang]), sender.first]
        if rng.random() < 0.5:
            sign += [
                "",
                "-- ",
                sender.name or sender.addr,
                f"Phone +49 30 {rng.randint(1000000, 9999999)}",
            ]
        paragraphs.append(sign)
        if parent is not None:
            when = format_datetime(parent.date)
            who = parent.person.name or parent.person.addr
            quoted = [f"On {when}, {who} wrote:"] + [f"> {line}" for line in parent.quote]
            paragraphs.append(quoted)
        text = "\n\n".join("\n".join(p) for p in paragraphs) + "\n"
        return text, first

    def _html(self, subject: str, text: str, style: str) -> str:
        paras = "".join(
            f"<p>{html_lib.escape(p).replace(chr(10), '<br>' + chr(10))}</p>\n"
            for p in text.split("\n\n")
        )
        return (
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8">\n'
            f"<title>{html_lib.escape(subject)}</title>\n<style>\n{style}</style></head>\n"
            '<body class="body">\n<div class="wrapper">\n'
            f"{paras}</div></body></html>\n"
        )

    def _text_part(self, text: str, cte: str, charset: str) -> _Part:
        return _leaf(
            f"text/plain; charset={charset}; format=flowed"
            if self.rng.random() < 0.1 and cte != "base64"
            else f"text/plain; charset={charset}",
            cte,
            _encode_body(text.encode(charset), cte),
        )

    def _text_encoding(self, lang: str) -> tuple[str, str]:
        """(Content-Transfer-Encoding, charset) for a text body in ``lang``."""
        rng = self.rng
        roll = rng.random()
        if lang == "en":
            if roll < 0.75:
                return "7bit", rng.choice(["us-ascii", "utf-8"])
            return ("quoted-printable", "utf-8") if roll < 0.92 else ("base64", "utf-8")
        if roll < 0.45:
            return "quoted-printable", "utf-8"
        if roll < 0.7:
            return "base64", "utf-8"
        if roll < 0.85:
            return "8bit", "utf-8"
        if lang in ("de", "fr"):
            return "quoted-printable", "iso-8859-1"
        return "quoted-printable", "utf-8"

    # -- attachments -------------------------------------------------------------------------

    def _attachment(self, size: int, *, binary: bool | None = None) -> tuple[_Part, Attachment]:
        rng = self.rng
        kinds = _ATTACHMENT_KINDS
        if binary is not None:
            kinds = [k for k in kinds if k[3] != binary]
        ext, ctype, magic, is_text = rng.choice(kinds)
        lang = rng.choices(_LANGUAGES, _LANGUAGE_WEIGHTS)[0]
        stem = rng.choice(_CONTENT_WORDS[lang]).lower()
        name = f"{stem}-{rng.randint(2019, 2025)}.{ext}"
        if is_text:
            lines = []
            total = 0
            while total < size:
                if ext == "csv":
                    line = ",".join(
                        [str(rng.randint(1, 9999)), rng.choice(_EN_WORDS), f"{rng.random():.4f}"]
                    )
                else:
                    line = self._sentence(lang)
                lines.append(line)
                total += len(line.encode()) + 2
            data = ("\r\n".join(lines) + "\r\n").encode()
            charset = "us-ascii" if data.isascii() else "utf-8"
            ctype_full = f"{ctype}; charset={charset}"
            cte = "7bit" if data.isascii() and rng.random() < 0.5 else "base64"
            body = data if cte == "7bit" else _b64(data)
        else:
            data = magic + rng.randbytes(max(0, size - len(magic)))
            ctype_full, cte, body = ctype, "base64", _b64(data)
        if name.isascii():
            disposition = f'Content-Disposition: attachment;\r\n filename="{name}"'
            ctype_full += f';\r\n name="{name}"'
        else:
            encoded = quote(name.encode(), safe="")
            disposition = f"Content-Disposition: attachment;\r\n filename*=utf-8''{encoded}"
        part = _leaf(ctype_full, cte, body, disposition)
        return part, Attachment(name, ctype, len(data))

    def _forwarded(self) -> tuple[_Part, Attachment]:
        rng = self.rng
        person = rng.choice(self.people)
        lang = person.language
        subject = " ".join(rng.choices(_CONTENT_WORDS[lang], k=rng.randint(2, 5)))
        text = "\n".join(self._paragraph(lang)) + "\n"
        charset = "utf-8"
        date = _START + timedelta(seconds=rng.randint(0, int((_END - _START).total_seconds())))
        headers = [
            _address_list("From", [_mailbox(person.name, person.addr, rng)]),
            f"Date: {format_datetime(date)}",
            _unstructured("Subject", subject, rng),
            f"Message-ID: <{rng.getrandbits(64):016x}.fwd@{person.addr.split('@')[1]}>",
            "MIME-Version: 1.0",
            f"Content-Type: text/plain; charset={charset}",
            "Content-Transfer-Encoding: quoted-printable",
        ]
        inner = ("\r\n".join(headers) + "\r\n\r\n").encode() + _qp(text.encode(charset))
        part = _leaf(
            "message/rfc822",
            "7bit" if inner.isascii() else "8bit",
            inner,
            'Content-Disposition: attachment;\r\n filename="forwarded.eml"',
        )
        return part, Attachment("forwarded.eml", "message/rfc822", len(inner))

    # -- one message -------------------------------------------------------------------------

    def message(self, index: int) -> GeneratedMessage:
        target = self._target_size()
        while True:
            msg, parent = self._build(index, target)
            if msg.size <= self.max_size:
                break
            target = int(target * 0.8)  # estimates overshot; rare, and still deterministic
        if len(self.recent) >= 60:
            self.recent.pop(self.rng.randrange(len(self.recent)))
        self.recent.append(parent)
        return msg

    def _build(self, index: int, target: int) -> tuple[GeneratedMessage, _Parent]:
        rng = self.rng
        flags: list[str] = []
        date = self._date(index)
        parent = None
        if self.recent and rng.random() < 0.25:
            parent = rng.choice(self.recent)
        list_index: int | None = None
        if parent is not None:
            list_index = parent.list_index
            sender = rng.choice(self.people)
            recipients = [parent.person]
            date = max(date, parent.date + timedelta(minutes=rng.randint(5, 4000)))
            date = min(date, _END)
        else:
            sender = rng.choice(self.people)
            recipients = rng.sample(self.people, rng.choice([1, 1, 1, 2, 3]))
            if rng.random() < 0.15:
                list_index = rng.randrange(len(_LISTS))
        cc = rng.sample(self.people, rng.randint(1, 3)) if rng.random() < 0.3 else []
        lang = sender.language
        if list_index is not None:
            lang = _LISTS[list_index][3]
        recipient = recipients[0]

        # Subject
        if parent is not None:
            base = parent.subject
            prefix = _REPLY_PREFIX[lang]
            subject = base if base.startswith(prefix) else prefix + base
        else:
            words = rng.choices(_CONTENT_WORDS[lang], k=rng.randint(2, 8))
            sep = " "
            subject = sep.join(words)
            subject = subject[:1].upper() + subject[1:]
            if list_index is not None:
                subject = f"[{_LISTS[list_index][2]}] {subject}"
            elif rng.random() < 0.05:
                subject = "Fwd: " + subject

        local_offset = timedelta(minutes=rng.choice(_TZ_OFFSETS))
        local_date = date.astimezone(timezone(local_offset))
        domain = sender.addr.split("@")[1]
        message_id = f"{rng.getrandbits(64):016x}.{index}@{domain}"
        marker = _marker(index)

        # Structure and sizes
        if target < 4000:
            kind = rng.choices(["plain", "alt"], [70, 30])[0]
        elif target < 30000:
            kind = rng.choices(["plain", "alt", "mixed"], [35, 43, 22])[0]
        elif target < 60000:
            kind = rng.choices(["plain", "alt", "mixed"], [15, 25, 60])[0]
        else:
            kind = "mixed"
        dkim = rng.random() < 0.5
        style = rng.choice(_STYLES)
        header_estimate = 1100 + 60 * (len(cc) + len(recipients)) + (700 if dkim else 0)
        avail = max(200, target - header_estimate)
        cte, charset = self._text_encoding(lang)
        if kind == "plain":
            budget = avail
        elif kind == "alt":
            budget = max(300, int((avail - len(style) * 1.1) / 2.4))
        else:
            budget = min(int(avail * 0.4), rng.randint(300, 6000))
        text, first = self._body_text(lang, budget, cte, sender, recipient, parent, marker, flags)
        if charset == "us-ascii" and not text.isascii():
            charset = "utf-8"
        if cte == "7bit" and not text.isascii():
            cte = "8bit"
        try:
            text.encode(charset)
        except UnicodeEncodeError:
            charset = "utf-8"
        if cte == "8bit":
            flags.append("8bit")
        if charset == "iso-8859-1":
            flags.append("latin-1")
        text_part = self._text_part(text, cte, charset)
        with_html = kind == "alt" or (kind == "mixed" and rng.random() < 0.5)
        body_part = text_part
        if with_html:
            html_cte = "quoted-printable" if rng.random() < 0.7 else "base64"
            html_part = _leaf(
                "text/html; charset=utf-8",
                html_cte,
                _encode_body(self._html(subject, text, style).encode(), html_cte),
            )
            body_part = _multipart(
                "alternative", self._boundary(), [text_part, html_part], preamble=False
            )
        attachments: list[Attachment] = []
        if kind == "mixed":
            parts = [body_part]
            used = header_estimate + len(body_part.body) + 200
            if rng.random() < 0.03:
                part, record = self._forwarded()
                parts.append(part)
                attachments.append(record)
                used += len(part.body) + 200
            extra = rng.choice([0, 0, 0, 1, 2])
            for _ in range(extra):
                part, record = self._attachment(rng.randint(40, 3000), binary=False)
                parts.append(part)
                attachments.append(record)
                used += len(part.body) + 250
            remaining = max(0, target - used - 250)
            filler_size = max(64, int(remaining / 1.37))
            part, record = self._attachment(filler_size, binary=filler_size > 20000 or None)
            parts.append(part)
            attachments.append(record)
            body_part = _multipart("mixed", self._boundary(), parts, preamble=rng.random() < 0.6)

        # Headers
        to_boxes = [_mailbox(p.name, p.addr, rng) for p in recipients]
        list_id = None
        headers = [
            f"Return-Path: <{sender.addr}>",
            self._received(recipient.addr, local_date, 2),
            self._received(recipient.addr, local_date, 1),
        ]
        if rng.random() < 0.5:
            headers.pop(1)
        if dkim:
            headers += self._dkim(domain, local_date)
        headers.append(_address_list("From", [_mailbox(sender.name, sender.addr, rng)]))
        if list_index is not None:
            list_name, list_id, list_short, _ = _LISTS[list_index]
            list_addr = f"{list_short}@{list_id.split('.', 1)[1]}"
            to_boxes = [f"<{list_addr}>" if rng.random() < 0.5 else list_addr]
            recipients_addrs = [list_addr]
        else:
            recipients_addrs = [p.addr for p in recipients]
        headers.append(_address_list("To", to_boxes))
        if cc:
            headers.append(_address_list("Cc", [_mailbox(p.name, p.addr, rng) for p in cc]))
        headers.append(_unstructured("Subject", subject, rng))
        headers.append(f"Date: {format_datetime(local_date)}")
        headers.append(f"Message-ID: <{message_id}>")
        in_reply_to = None
        references: tuple[str, ...] = ()
        if parent is not None:
            in_reply_to = parent.message_id
            references = (*parent.references[-9:], parent.message_id)
            headers.append(f"In-Reply-To: <{in_reply_to}>")
            headers.append("References: " + "\r\n ".join(f"<{r}>" for r in references))
        if list_id is not None:
            phrase = _unstructured("List-Id", list_name, rng)
            headers.append(f"{phrase} <{list_id}>")
            headers.append(f"List-Post: <mailto:{list_addr}>")
            headers.append(
                f"List-Unsubscribe: <mailto:{list_short}-leave@{list_id.split('.', 1)[1]}>"
            )
            headers.append("Precedence: list")
        if rng.random() < 0.7:
            name = "User-Agent" if rng.random() < 0.5 else "X-Mailer"
            headers.append(f"{name}: {rng.choice(_MAILERS)}")
        headers.append("MIME-Version: 1.0")
        headers.append(body_part.headers)
        raw = ("\r\n".join(headers) + "\r\n\r\n").encode() + body_part.body

        msg = GeneratedMessage(
            raw=raw,
            message_id=message_id,
            date=date,
            from_addr=sender.addr,
            from_name=sender.name,
            to=tuple(recipients_addrs),
            cc=tuple(p.addr for p in cc),
            subject=subject,
            body_text=text,
            html=with_html,
            attachments=tuple(attachments),
            words=body_words(text),
            marker=marker,
            language=lang,
            in_reply_to=in_reply_to,
            references=references,
            list_id=list_id,
            flags=tuple(flags),
        )
        return msg, _Parent(message_id, references, subject, date, sender, first, list_index)

    def _boundary(self) -> str:
        return f"=_mv_{self.rng.getrandbits(64):016x}"

    def _dkim(self, domain: str, local_date: datetime) -> list[str]:
        rng = self.rng
        signature = base64.b64encode(rng.randbytes(256)).decode()
        folded = "\r\n\t ".join(signature[i : i + 70] for i in range(0, len(signature), 70))
        body_hash = base64.b64encode(rng.randbytes(32)).decode()
        return [
            f"Authentication-Results: mx.example.com;\r\n\tdkim=pass header.d={domain};"
            f"\r\n\tspf=pass smtp.mailfrom={domain}",
            f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain};\r\n"
            f"\ts=selector{rng.randint(1, 2)}; t={int(local_date.timestamp())};\r\n"
            "\th=from:to:subject:date:message-id:mime-version:content-type;\r\n"
            f"\tbh={body_hash};\r\n\tb={folded}",
        ]

    def _received(self, rcpt: str, local_date: datetime, hop: int) -> str:
        rng = self.rng
        stamp = format_datetime(local_date + timedelta(seconds=rng.randint(1, 90) * hop))
        octet = rng.randint(1, 254)
        host = rng.choice(["mx1", "mx2", "smtp", "mail-out"])
        return (
            f"Received: from {host}.example.net ({host}.example.net [192.0.2.{octet}])\r\n"
            f"\tby mx.example.com (Postfix) with ESMTPS id {rng.getrandbits(40):010X}\r\n"
            f"\tfor <{rcpt}>; {stamp}"
        )


def generate(
    count: int,
    seed: int = 0,
    *,
    median_size: int = 15_000,
    max_size: int = 2_000_000,
) -> Iterator[GeneratedMessage]:
    """Yield ``count`` messages; the same arguments give byte-identical messages."""
    if count < 0:
        raise ValueError("count must not be negative")
    if median_size < 1000 or max_size < 8000 or max_size < median_size:
        raise ValueError("need median_size >= 1000 and max_size >= max(8000, median_size)")
    gen = _Generator(seed, count, median_size, max_size)
    for index in range(count):
        yield gen.message(index)


# -- writing Maildirs and mboxes -------------------------------------------------------------


def write_maildir(messages: Iterable[GeneratedMessage], directory: Path) -> int:
    """Write messages as files in ``directory/new`` (creating new/, cur/, tmp/); return count.

    File names sort in message order; each file's mtime is the message date.
    """
    directory = Path(directory)
    for sub in ("new", "cur", "tmp"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    written = 0
    pid = os.getpid()
    now = int(time.time())
    for number, msg in enumerate(messages):
        # Dovecot numbers new mail by the time part, then the M part: keep message order.
        name = f"{now}.M{number}P{pid}.mailvault-gen,S={msg.size}"
        tmp = directory / "tmp" / name
        tmp.write_bytes(msg.raw)
        stamp = msg.date.timestamp()
        os.utime(tmp, (stamp, stamp))
        os.rename(tmp, directory / "new" / name)
        written += 1
    return written


_MBOX_FROM = re.compile(rb"^(>*From )", re.M)


def write_mbox(messages: Iterable[GeneratedMessage], path: Path) -> int:
    """Write an mboxrd file (LF line ends, ">From " quoting); return the message count."""
    written = 0
    with open(path, "wb") as out:
        for msg in messages:
            stamp = msg.date.strftime("%a %b %d %H:%M:%S %Y")
            out.write(f"From {msg.from_addr} {stamp}\n".encode())
            body = _MBOX_FROM.sub(rb">\1", msg.raw.replace(b"\r\n", b"\n"))
            out.write(body)
            if not body.endswith(b"\n"):
                out.write(b"\n")
            out.write(b"\n")
            written += 1
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: write generated mail to a Maildir or an mbox file."""
    parser = argparse.ArgumentParser(
        prog="python -m mailvault.testkit.generator",
        description="Write seeded, realistic test mail to a Maildir or an mbox file.",
    )
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--median-size", type=int, default=15_000)
    parser.add_argument("--max-size", type=int, default=2_000_000)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--maildir", type=Path, help="Maildir to create or add to")
    where.add_argument("--mbox", type=Path, help="mbox file to write (mboxrd)")
    args = parser.parse_args(argv)
    try:
        messages = generate(
            args.count, args.seed, median_size=args.median_size, max_size=args.max_size
        )
        if args.maildir is not None:
            written = write_maildir(messages, args.maildir)
            target = args.maildir
        else:
            written = write_mbox(messages, args.mbox)
            target = args.mbox
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {written} messages to {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
