"""The parse stage: raw message bytes to a ``ParsedMessage`` (see ``model.py``).

``parse_message`` is pure and never raises, so callers can map it over a process pool without
error handling.  ``mime`` holds what ``show --part N`` must share with it (part numbering and
decoding).  Heavy imports (pypdf) happen only when a PDF is met.
"""

from mailvault.parse.message import parse_message
from mailvault.parse.model import Address, Attachment, ParsedMessage

__all__ = ["Address", "Attachment", "ParsedMessage", "parse_message"]
