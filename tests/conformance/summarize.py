"""Summarize a conformance run (pytest --junitxml) and gate it on the tests expected to pass.

    python summarize.py RESULTS.xml [--expected expected_pass.txt] [--write-expected]

Prints passed/failed/skipped/error counts and the failing tests grouped by class. With
--expected, exits 1 when a test listed there did not pass (a regression) and lists tests that
pass but are not listed (update the list with --write-expected once they are meant to stay).
Standard library only: it runs in any Python.
"""

from __future__ import annotations

import argparse
import collections
import sys
import xml.etree.ElementTree as ET


def outcomes(path: str) -> dict[str, tuple[str, str]]:
    """Test id (Class::test[param]) -> (outcome, message)."""
    out: dict[str, tuple[str, str]] = {}
    for case in ET.parse(path).iter("testcase"):
        test_id = f"{case.get('classname', '').split('.')[-1]}::{case.get('name', '')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or "").splitlines()[0] if child.get("message") else ""
                break
        out[test_id] = (outcome, message)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("results")
    parser.add_argument("--label", default="conformance")
    parser.add_argument("--expected", help="file listing the test ids that must pass")
    parser.add_argument("--write-expected", action="store_true", help="rewrite --expected from this run")
    args = parser.parse_args()

    results = outcomes(args.results)
    counts = collections.Counter(outcome for outcome, _ in results.values())
    print(
        f"{args.label}: {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['skipped']} skipped, {counts['error']} errors"
    )
    failing = sorted((t, m) for t, (o, m) in results.items() if o in ("failed", "error"))
    by_class: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for test_id, message in failing:
        by_class[test_id.split("::", 1)[0]].append((test_id, message))
    for cls in sorted(by_class):
        print(f"  {cls}: {len(by_class[cls])} not passing")
        for test_id, message in by_class[cls]:
            print(f"    {test_id}  -- {message[:160]}")

    if not args.expected:
        return 0
    passing = sorted(t for t, (o, _) in results.items() if o == "passed")
    if args.write_expected:
        with open(args.expected, "w") as f:
            f.write("# Conformance tests spillway-conformance must pass (written by summarize.py --write-expected).\n")
            f.writelines(f"{t}\n" for t in passing)
        print(f"wrote {len(passing)} test ids to {args.expected}")
        return 0
    with open(args.expected) as f:
        expected = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    regressions = [t for t in expected if results.get(t, ("missing", ""))[0] != "passed"]
    new = sorted(set(passing) - set(expected))
    if new:
        print(f"{len(new)} tests pass that {args.expected} does not list (add them with --write-expected):")
        for t in new:
            print(f"    {t}")
    if regressions:
        print(f"REGRESSION: {len(regressions)} of {len(expected)} expected tests did not pass:")
        for t in regressions:
            outcome, message = results.get(t, ("not run", ""))
            print(f"    {t}: {outcome} {message[:160]}")
        return 1
    print(f"all {len(expected)} expected tests passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
