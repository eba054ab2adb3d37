"""mailvault: a compliance-grade POP3 mail archiver."""

__version__ = "0.1.0"
