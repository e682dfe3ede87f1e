"""Sub-commands: plumbing (placeholder until its issue lands; registers nothing yet)."""
import argparse


def register(sub: "argparse._SubParsersAction") -> None:
    return None
