"""Validates the STIX objects that `threatfox-sentinel import --dry-run` writes.

Reads JSON lines, each one Upload API request body ({"sourcesystem", "stixobjects"}), and
checks every element of "stixobjects" with the OASIS stix2-validator (STIX 2.1, strict:
recommendations count as errors) and every indicator pattern with stix2patterns, which
also confirms that each pattern is the single comparison Sentinel needs.

Two recommendations are switched off on purpose:
- "uuid-check" (code 103) wants UUIDv4 ids on domain objects. The sink derives UUIDv5 ids
  from ThreatFox ids so that a re-import updates an indicator in Sentinel instead of
  duplicating it; STIX 2.1 allows any RFC 4122 UUID there (v4 is a SHOULD).
- "extref-hashes" (code 302) wants a hash of the content behind each external reference
  URL. The references are live web pages (ThreatFox, Malpedia, reporters' posts) whose
  content changes, so no stable hash exists.

Usage: python validate_stix.py BODIES.jsonl
Exits 0 when every object passes, 1 when any fails, 2 on unusable input.
"""

import json
import sys

from stix2patterns.v21.pattern import Pattern
from stix2patterns.validator import run_validator as validate_pattern
from stix2validator import ValidationOptions, validate_instance

DISABLED_CHECKS = ["uuid-check", "extref-hashes"]


def check_object(stix_object, options):
    """Returns the problems found in one STIX object, as strings."""
    problems = []
    result = validate_instance(stix_object, options)
    problems += ["error: " + str(error) for error in result.errors]
    problems += ["warning: " + str(warning) for warning in result.warnings]
    if stix_object.get("pattern_type") == "stix":
        pattern = stix_object.get("pattern", "")
        pattern_errors = validate_pattern(pattern, "2.1")
        problems += ["pattern: " + message for message in pattern_errors]
        if not pattern_errors:
            problems += single_comparison_problems(pattern)
    return problems


def single_comparison_problems(pattern):
    """Sentinel extracts no observable from a pattern with more than one comparison (for
    example joined by AND), so the sink must write exactly one, without qualifiers."""
    inspection = Pattern(pattern).inspect()
    comparisons = sum(len(found) for found in inspection.comparisons.values())
    if comparisons != 1 or inspection.qualifiers or inspection.observation_ops:
        return [f"sentinel: pattern must be a single comparison, got {pattern!r}"]
    return []


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-2], file=sys.stderr)
        return 2
    options = ValidationOptions(version="2.1", strict=True, disabled=DISABLED_CHECKS)
    passed = failed = bodies = 0

    with open(argv[1], encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                body = json.loads(line)
            except json.JSONDecodeError as err:
                print(f"line {number}: not JSON: {err}", file=sys.stderr)
                return 2
            objects = body.get("stixobjects") if isinstance(body, dict) else None
            if not isinstance(objects, list) or not isinstance(body.get("sourcesystem"), str):
                print(f"line {number}: not an Upload API request body", file=sys.stderr)
                return 2
            bodies += 1
            for index, stix_object in enumerate(objects):
                problems = check_object(stix_object, options)
                if problems:
                    failed += 1
                    name = stix_object.get("id", f"object {index}")
                    print(f"FAIL line {number} #{index} {name} ({stix_object.get('name')!r}):")
                    for problem in problems:
                        print(f"  {problem}")
                else:
                    passed += 1

    if passed + failed == 0:
        print("no STIX objects to validate: is the input empty?", file=sys.stderr)
        return 2
    print(f"{bodies} request bodies checked")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
