"""Logging set-up: one format for every script."""
import logging

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level="INFO"):
    """Configure the root logger once (idempotent) and return it."""
    root = logging.getLogger()
    if not getattr(setup_logging, "_done", False):
        logging.basicConfig(level=getattr(logging, str(level).upper(), logging.INFO), format=_FORMAT,
                            datefmt="%H:%M:%S")
        setup_logging._done = True
    else:
        root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
    return root


def get_logger(name):
    """Logger for a module of the toolkit."""
    return logging.getLogger(name)
