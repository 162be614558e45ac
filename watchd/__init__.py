"""watchd: a Linux file-watching daemon."""

__version__ = "0.1.0"
