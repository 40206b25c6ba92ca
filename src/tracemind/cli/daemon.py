"""``tm daemon start|stop|ps`` (placeholder until the daemon lands)."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    return None
