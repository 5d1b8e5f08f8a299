"""Build fastdrop's C++ operators for this machine and torch now, instead of at the first call.

    python -m fastdrop.build

It loads them as the first call would (rebuilt where the cached build does not load), and fails
where they cannot be built.
"""

import sys
import time

from . import _library


def main() -> int:
    start = time.perf_counter()
    path = _library.build()
    print(f"fastdrop: {path} ready ({_library.machine_isa()}) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
