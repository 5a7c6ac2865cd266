"""``ainode primary``: set, list and clear the primary tumour's subtype of a study before (or after) it arrives.

The entry is keyed by the Study Instance UID, the accession number or the patient ID (the last two stored as
SHA-256 digests); when the study is processed, the most specific entry wins over any subtype stated in the
study's headers, and the SR's subtype comes from the model that uses the primary subtype. Setting it after a
study was processed does not change that result: re-run the study (``ainode web``) to use it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import time

from node.cli.status import _add_common, _repository
from node.errors import ConfigError
from node.labels import normalise_subtype
from node.ledger.primary import KeyKind, clear_primary, list_primary, set_primary
from node.vocabulary import Subtype


def _add_key(parser: argparse.ArgumentParser) -> None:
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--study", metavar="UID", help="the study's Study Instance UID")
    key.add_argument("--accession", metavar="NUMBER", help="the study's accession number")
    key.add_argument("--patient-id", metavar="ID", help="the patient's ID (applies to every study of the patient)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    primary = sub.add_parser(
        "primary",
        help="set the primary tumour's subtype of a study before it is processed",
        description="Record the primary breast tumour's molecular subtype for a study (by Study Instance UID, "
        "accession number or patient ID). The node then uses the subtype model that takes it as input.",
    )
    actions = primary.add_subparsers(dest="action", metavar="ACTION", required=True)
    set_cmd = actions.add_parser("set", help="set (or replace) the subtype", description="Set the subtype.")
    set_cmd.add_argument("subtype", help=f"one of {', '.join(s.value for s in Subtype)} (case and spaces ignored)")
    _add_key(set_cmd)
    _add_common(set_cmd)
    set_cmd.set_defaults(handler=run_set)
    clear = actions.add_parser("clear", help="remove an entry", description="Remove an entry.")
    _add_key(clear)
    _add_common(clear)
    clear.set_defaults(handler=run_clear)
    show = actions.add_parser("list", help="list the entries", description="List the entries (digests only for "
                              "accession numbers and patient IDs).")
    _add_common(show)
    show.set_defaults(handler=run_list)


def _key(args: argparse.Namespace) -> tuple[KeyKind, str]:
    if args.study is not None:
        return KeyKind.STUDY, args.study
    if args.accession is not None:
        return KeyKind.ACCESSION, args.accession
    return KeyKind.PATIENT, args.patient_id


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (containers)
        return "cli"


def run_set(args: argparse.Namespace) -> int:
    subtype = normalise_subtype(args.subtype)
    kind, value = _key(args)
    repo = _repository(args, create=True)  # before the first study arrives there may be no ledger yet
    try:
        entry = set_primary(repo, kind, value, subtype, time.time(), _who())
    finally:
        repo.ledger.dispose()
    print(f"primary subtype {entry.subtype} set for the {kind.value} given (ledger {repo.ledger.url}); "
          "studies processed from now on use it")
    return 0


def run_clear(args: argparse.Namespace) -> int:
    kind, value = _key(args)
    repo = _repository(args)
    try:
        removed = clear_primary(repo, kind, value, time.time(), _who())
    finally:
        repo.ledger.dispose()
    if not removed:
        raise ConfigError(f"no primary subtype is set for that {kind.value}")
    print(f"primary subtype cleared for the {kind.value} given")
    return 0


def run_list(args: argparse.Namespace) -> int:
    repo = _repository(args)
    try:
        entries = list_primary(repo)
    finally:
        repo.ledger.dispose()
    if not entries:
        print("no primary subtypes set")
    for entry in entries:
        when = dt.datetime.fromtimestamp(entry.set_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        print(f"{entry.kind.value:<9} {entry.key}  {entry.subtype:<9} set {when} by {entry.set_by}")
    return 0
