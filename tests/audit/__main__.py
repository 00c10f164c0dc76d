"""``python -m tests.audit``: run the whole bad-input corpus through every entry point; ``N passed, N failed``."""
import sys

from tests.audit import run_all

if __name__ == "__main__":
    _, failed = run_all()
    sys.exit(1 if failed else 0)
