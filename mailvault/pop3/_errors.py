"""The error the POP3 core raises for mistakes made by its caller, not by the server.

Server misbehaviour is reported with ``mailvault.errors.ProtocolError`` (bad bytes) or
``mailvault.errors.TransportError`` (the connection ended too early), because the driver
turns those into user-facing failures.  A ``LocalProtocolError`` is a bug in the driver
(sending out of turn, a command argument with a line break in it ...), so it deliberately
does not derive from ``MailvaultError``: it should crash loudly, not be reported as a
server problem.
"""

from __future__ import annotations


class LocalProtocolError(Exception):
    """The caller used the POP3 state machine in a way the protocol does not allow."""
