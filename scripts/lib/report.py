"""How every deployment check ends: its failures on stderr and exit 1, or one
line saying what passed."""

import sys


def finish(name, failures, passed):
    if failures:
        print(f"{name} check FAILED:", file=sys.stderr)
        for f in failures:
            print("  " + f, file=sys.stderr)
        sys.exit(1)
    print(f"{name} check passed: {passed}")
