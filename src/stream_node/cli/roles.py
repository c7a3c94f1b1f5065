"""The role commands' parsers: their flags are the settings a topology stage takes, so a
topology file, the environment and `--set` are checked by the same parsers as the command line."""

from __future__ import annotations

import argparse

from stream_node.cli import collector, source, view, worker

ROLES = {"source": source, "worker": worker, "collector": collector, "view": view}


def role_parsers() -> dict[str, argparse.ArgumentParser]:
    sub = argparse.ArgumentParser(prog="stream-node").add_subparsers()
    return {role: module.add(sub) for role, module in ROLES.items()}
