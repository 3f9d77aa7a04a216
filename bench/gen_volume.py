"""Write a sample wicked dynamic data volume: ``python bench/gen_volume.py DIR --users N --seed S``.

``--mutate F`` changes about the fraction F of the files of an existing volume instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

# Run from a checkout without installing: the repository root holds the wicked_dr package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wicked_dr.testing.sample_volume import generate, mutate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--apps-per-user", type=float, default=1.0)
    parser.add_argument("--tidy", action="store_true",
                        help="no orphaned subscription files or stale index entries")
    parser.add_argument("--mutate", type=float, metavar="FRACTION",
                        help="mutate an existing volume instead of generating one")
    args = parser.parse_args(argv)
    start = time.monotonic()
    if args.mutate is not None:
        changed = mutate(args.dir, args.mutate, seed=args.seed)
        out: dict[str, object] = {"changed": len(changed)}
    else:
        if args.dir.exists() and any(args.dir.iterdir()):
            print(f"{args.dir} is not empty: pick an empty or new directory", file=sys.stderr)
            return 2
        stats = generate(args.dir, args.users, seed=args.seed,
                         apps_per_user=args.apps_per_user, untidy=not args.tidy)
        out = {k: v for k, v in asdict(stats).items() if k != "user_ids"}
    out["seconds"] = round(time.monotonic() - start, 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
