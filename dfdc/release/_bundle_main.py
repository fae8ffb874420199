"""Score videos with this bundle alone: ``python -I predict.py VIDEOS --out submission.csv``.

Copied into every bundle as its ``predict.py``. It holds no protocol of its own: it runs
the dfdc source files shipped in ``code/`` (the same files the pipeline ran when the
bundle was built), after checking every file of the bundle against ``checksums.json``.
Needs only the packages of ``requirements.txt``.

Nothing in the bundle folder runs before that check. ``python predict.py`` puts this
script's folder first on ``sys.path``, so a ``json.py`` or ``hashlib.py`` planted beside
it would be imported in place of the standard library's by this file's first ``import``.
Hence, in this order, before any other import:

1. ``sys`` only: it is built into the interpreter, so importing it reads no file
   (and there is no ``from __future__`` line: that is a real import too);
2. ``sys.dont_write_bytecode``: running the bundle writes no ``__pycache__`` into it;
3. unless Python already left the script's folder out (``-I`` isolated mode, or ``-P``),
   ``sys.path[0]``, which is that folder when a script is run, is removed.

Only then are the standard library modules imported, from the interpreter's own
library. ``python -I`` is still the documented way to run it: it also ignores
``PYTHONPATH``, ``PYTHON*`` variables and the user's site-packages, which could
point an import anywhere. Then every file is checked: each listed one against its
SHA-256, and any file the checksums do not list, anywhere in the folder, is refused.
"""

import sys  # built into the interpreter: no file is read, nothing can shadow it

sys.dont_write_bytecode = True  # the bundle stays exactly as checksummed
if __name__ == "__main__" and not (sys.flags.isolated or getattr(sys.flags, "safe_path", False)):
    del sys.path[0]  # this script's folder (or, with -m, the current one): nothing is imported from it

import argparse  # noqa: E402  (only now: see the module docstring)
import hashlib  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent


def _check_before_running() -> str | None:
    """What is wrong with the bundle, checked with the standard library only.

    The shipped code is verified again by ``dfdc.release.bundle.verify_bundle``, but only after
    it has been imported; this check runs first, so altered code is never executed.
    """
    sums_path = HERE / "checksums.json"
    if not sums_path.is_file():
        return f"{sums_path}: missing; not a dfdc bundle"
    try:
        checksums = json.loads(sums_path.read_text())
    except (OSError, ValueError) as err:  # permissions, bad UTF-8, bad JSON
        return f"{sums_path}: unreadable ({' '.join(str(err).split())})"
    if not isinstance(checksums, dict):
        return f"{sums_path}: not a mapping of file names to SHA-256 digests"
    for name, digest in sorted(checksums.items()):
        path = HERE / name
        if not path.is_file():
            return f"{path}: missing from bundle"
        try:
            data = path.read_bytes()
        except OSError as err:
            return f"{path}: unreadable ({err.strerror or err})"
        if hashlib.sha256(data).hexdigest() != digest:
            return f"{path}: checksum mismatch; the file was altered"
    for path in sorted(HERE.rglob("*")):  # the whole folder, not only code/
        if path.is_dir() and not path.is_symlink():
            continue
        if path != sums_path and path.relative_to(HERE).as_posix() not in checksums:
            return f"{path}: not listed in checksums.json; the bundle was altered"
    return None


def _use_vendored_dfdc() -> None:
    """Import ``dfdc`` from this bundle's ``code/``, never from an installed copy."""
    sys.path.insert(0, str(HERE / "code"))
    import dfdc

    where = Path(dfdc.__file__).resolve().parent
    if where != HERE / "code" / "dfdc":
        raise SystemExit(f"dfdc was imported from {where}, not from this bundle; run in a fresh process")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, score every video, write the submission (and details)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path, help="a folder of videos (see MODEL_CARD.md) or one video")
    parser.add_argument("--out", type=Path, default=Path("submission.csv"), help="CSV to write")
    parser.add_argument("--sample-submission", type=Path, default=None, help="row order to follow")
    parser.add_argument("--details", type=Path, default=None, help="per-video JSON with frame scores")
    parser.add_argument("--device", default="auto", help="cpu, cuda ... (default auto: CUDA if present)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--batch-size", type=int, default=64, help="crops per classifier batch (default 64)")
    parser.add_argument("--workers", type=int, default=2, help="threads decoding ahead (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if problem := _check_before_running():
        print(f"refusing to run: {problem}", file=sys.stderr)
        return 2
    _use_vendored_dfdc()
    from pydantic import ValidationError

    from dfdc.config import ScoreConfig
    from dfdc.release.bundle import BundleError
    from dfdc.release.predict import PredictError, predict_files

    try:  # run settings only: the protocol is the bundle's, and no option can change it
        run = ScoreConfig(device=args.device, threads=args.threads, batch_size=args.batch_size,
                          workers=args.workers)  # fmt: skip
        scores = predict_files(
            HERE, args.target, args.out, args.sample_submission, args.details,
            progress=not args.no_progress, run=run,
        )  # fmt: skip
    except ValidationError as err:
        print(f"refusing to run: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except (BundleError, PredictError) as err:  # nothing to score, or a bad bundle: one line
        print(f"refusing to run: {err}", file=sys.stderr)
        return 2
    for row in scores[scores["status"] != "ok"].itertuples():
        print(f"{row.filename}: {row.status} {row.detail}".rstrip(), file=sys.stderr)
    print(f"{len(scores)} videos scored -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
