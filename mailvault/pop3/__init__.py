"""Sans-I/O POP3 client protocol core (RFC 1939, 2449, 2595, 5034).

``Connection`` turns commands into wire bytes and server bytes into events; the driver
does all I/O, TLS and timing.  See ``_connection`` for the rules it enforces.
"""

from ._commands import (
    Apop,
    Auth,
    AuthContinue,
    Capa,
    Command,
    Dele,
    List,
    Noop,
    Pass,
    Quit,
    Retr,
    Rset,
    Stat,
    Stls,
    Top,
    Uidl,
    User,
    redacted,
)
from ._connection import Connection
from ._errors import LocalProtocolError
from ._events import (
    NEED_DATA,
    Closed,
    Continuation,
    Data,
    End,
    Err,
    Event,
    Greeting,
    Line,
    NeedData,
    Ok,
)

__all__ = [
    "NEED_DATA",
    "Apop",
    "Auth",
    "AuthContinue",
    "Capa",
    "Closed",
    "Command",
    "Connection",
    "Continuation",
    "Data",
    "Dele",
    "End",
    "Err",
    "Event",
    "Greeting",
    "Line",
    "List",
    "LocalProtocolError",
    "NeedData",
    "Noop",
    "Ok",
    "Pass",
    "Quit",
    "Retr",
    "Rset",
    "Stat",
    "Stls",
    "Top",
    "Uidl",
    "User",
    "redacted",
]
