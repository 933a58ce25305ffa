"""Coverage-guided fuzzing of the feed normalizer with atheris (libFuzzer for Python).

The property: :func:`meksd.core.normalize.normalize` never raises and never reaches
its ``normalizer_error`` safety net, whatever the bytes, the text, the size limit or
the depth limit. A crash is written by libFuzzer as ``crash-<sha1>`` in the current
directory; replay it with ``--replay``.

atheris is not a test dependency (it needs a clang-built wheel). To run::

    .venv/bin/pip install atheris
    mkdir -p /tmp/meksd-corpus
    .venv/bin/python fuzz/normalize_fuzz.py -max_total_time=600 /tmp/meksd-corpus fuzz/corpus

``fuzz/corpus`` holds seed records (one file each); the first directory receives
what the fuzzer finds. Without atheris, ``--replay FILE...`` runs the same check
over files (a crash reproducer, or the seeds), and ``tests/test_fuzz_harness.py``
does that for the seeds on every test run so that this harness cannot rot.

Input layout (so the fuzzer also explores the parameters): byte 0 picks
``max_depth`` (2..65), byte 1 bit 0 passes the payload as ``str`` instead of
``bytes`` (decoded with ``surrogateescape``, so lone surrogates occur), bits 1-2 pick
``max_bytes`` (64, 4096, 65536, 1 MiB); the rest is the payload.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import atheris
except ImportError:  # replay mode works without it
    atheris = None

if atheris is not None:
    with atheris.instrument_imports(include=["meksd"]):
        from meksd.core.normalize import normalize
        from meksd.model.events import Rejected
        from meksd.model.raw import RawRecord
else:
    from meksd.core.normalize import normalize
    from meksd.model.events import Rejected
    from meksd.model.raw import RawRecord

MAX_BYTES = (64, 4096, 65536, 1 << 20)


def one_input(data: bytes) -> None:
    """Normalize one fuzzer input; raise if the normalizer misbehaves."""
    if len(data) < 2:
        return
    max_depth = 2 + data[0] % 64
    as_text = bool(data[1] & 1)
    max_bytes = MAX_BYTES[(data[1] >> 1) & 3]
    body = data[2:]
    payload: bytes | str = body.decode("utf-8", "surrogateescape") if as_text else body
    results = normalize(RawRecord(payload, 0.0, 0), max_bytes=max_bytes, max_depth=max_depth)
    for result in results:
        if isinstance(result, Rejected) and result.reason == "normalizer_error":
            raise AssertionError(f"normalizer bug on this input: {result.detail}")


def replay(paths: list[str]) -> int:
    """Run :func:`one_input` over files (each file: one input); the number run."""
    count = 0
    for name in paths:
        path = Path(name)
        for file in sorted(path.iterdir()) if path.is_dir() else [path]:
            one_input(file.read_bytes())
            count += 1
    return count


def main() -> None:
    if sys.argv[1:2] == ["--replay"]:
        print(f"replayed {replay(sys.argv[2:])} input(s): no failure")
        return
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris (or use --replay FILE...)")
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
