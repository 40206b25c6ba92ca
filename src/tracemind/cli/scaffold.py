"""Getting started: ``tm init`` (a runnable starter project) and ``tm completion`` (a shell
completion script made from the same parsers ``tm`` runs, so it never lists a stale option)."""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from tracemind.cli.common import print_json
from tracemind.errors import UsageError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

TEMPLATES = ("minimal",)
SHELLS = ("bash", "zsh")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = commands.add_parser(
        "init",
        help="write a runnable starter project",
        description="Write a starter project into DIR (default: the current directory): a "
        "flow, the steps module it calls, a triggers.yaml and a README. From DIR, `tm run "
        "flows/hello.yaml -i '{}'` runs it as written. Never overwrites: exit 2 naming the "
        "first file that exists, with nothing written.",
    )
    init.add_argument("directory", metavar="DIR", nargs="?", default=".")
    init.add_argument("--template", choices=TEMPLATES, default="minimal")
    init.add_argument("--json", action="store_true", help="print the written files as JSON")
    init.set_defaults(handler=init_command)

    completion = commands.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print a completion script for SHELL. bash: `source <(tm completion "
        "bash)` (or save it under ~/.local/share/bash-completion/completions/tm); zsh: `source "
        "<(tm completion zsh)` in ~/.zshrc.",
    )
    completion.add_argument("shell", metavar="SHELL", choices=SHELLS)
    completion.add_argument("--json", action="store_true", help="print {shell, script}")
    completion.set_defaults(handler=completion_command)


# -- tm init ---------------------------------------------------------------------------------


def template_files(name: str) -> dict[str, Traversable]:
    """Relative path → file, for every file of the template ``name`` (package data)."""
    root = resources.files("tracemind").joinpath("templates", name)
    files: dict[str, Traversable] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.name == "__pycache__" or child.name.endswith(".pyc"):
                continue
            relative = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, relative + "/")
            else:
                files[relative] = child

    walk(root, "")
    return files


def write_template(name: str, directory: Path) -> list[Path]:
    """Write template ``name`` under ``directory``; returns the files written. Checks every
    target first: a file that exists (or a non-directory in the way) is a UsageError naming it,
    and nothing is written."""
    files = template_files(name)
    targets = {relative: directory / relative for relative in files}
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory}: exists and is not a directory")
    for target in targets.values():
        if target.exists() or target.is_symlink():
            raise UsageError(
                f"{target} already exists; nothing was written (tm init never overwrites)"
            )
        for parent in target.parents:
            if parent == directory or directory not in parent.parents:
                break
            if parent.exists() and not parent.is_dir():
                raise UsageError(f"{parent}: exists and is not a directory")
    written = []
    try:
        for relative, source in files.items():
            target = targets[relative]
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "xb") as out:  # "x": never replace a file made meanwhile
                out.write(source.read_bytes())
            written.append(target)
    except FileExistsError as exc:
        raise UsageError(f"{exc.filename} already exists (created meanwhile); stopped") from None
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename or directory}: {exc.strerror}") from None
    return written


def init_command(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    written = write_template(args.template, directory)
    if args.json:
        print_json(
            {
                "template": args.template,
                "directory": str(directory),
                "written": [str(p) for p in written],
            }
        )
        return 0
    for path in written:
        print(f"wrote {path}")
    where = "" if directory == Path(".") else f"cd {directory} && "
    print(
        f'next: {where}tm run flows/hello.yaml -i \'{{"name": "Ada"}}\'   (README.md: the daemon)'
    )
    return 0


# -- tm completion ---------------------------------------------------------------------------


def command_tree() -> dict[str, list[str]]:
    """``"cmd"`` or ``"cmd verb"`` → the words that may follow it (verbs, or options), and
    ``""`` → the commands; built from the parsers ``tm`` itself uses."""
    from tracemind.cli.parser import COMMANDS, build_parser

    tree: dict[str, list[str]] = {"": [*COMMANDS, "--help", "--version", "--debug"]}
    for command in COMMANDS:
        parser = build_parser(command)
        top = _subcommands(parser)
        assert top is not None
        node = top.choices[command]
        verbs = _subcommands(node)
        if verbs is None:
            tree[command] = _options(node)
            continue
        tree[command] = list(verbs.choices)
        for verb, verb_parser in verbs.choices.items():
            tree[f"{command} {verb}"] = _options(verb_parser)
    return tree


def _subcommands(
    parser: argparse.ArgumentParser,
) -> argparse._SubParsersAction[argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _options(parser: argparse.ArgumentParser) -> list[str]:
    words: list[str] = []
    for action in parser._actions:
        words += [s for s in action.option_strings if s.startswith("--")]
        if not action.option_strings and action.choices:
            words += [str(choice) for choice in action.choices]
    return words


BASH_TEMPLATE = """\
# bash completion for tm (TraceMind); generated by `tm completion bash`
_tm_completion() {
    local cur=${COMP_WORDS[COMP_CWORD]} key="" word i words
    local groups=" __GROUPS__ "
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        [[ $word == -* ]] && continue
        if [[ -z $key ]]; then
            key=$word
            [[ $groups == *" $word "* ]] || break
        else
            key="$key $word"
            break
        fi
    done
    case "$key" in
__CASES__
        *) words="" ;;
    esac
    if [[ $cur == -* || -z $key || $groups == *" $key "* ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$words" -- "$cur") $(compgen -f -- "$cur"))
    fi
}
complete -o filenames -F _tm_completion tm
"""

ZSH_PREFIX = """\
# zsh completion for tm (TraceMind); generated by `tm completion zsh`
autoload -Uz compinit bashcompinit
(( $+functions[compdef] )) || compinit
bashcompinit
"""


def completion_script(shell: str) -> str:
    """The completion script for ``shell`` (zsh runs the bash one through ``bashcompinit``)."""
    tree = command_tree()
    groups = [key for key in tree if key and f"{key} {tree[key][0]}" in tree]
    cases = [f'        "{key}") words="{" ".join(words)}" ;;' for key, words in tree.items()]
    bash = BASH_TEMPLATE.replace("__CASES__", "\n".join(cases))
    bash = bash.replace("__GROUPS__", " ".join(groups))
    return bash if shell == "bash" else ZSH_PREFIX + bash


def completion_command(args: argparse.Namespace) -> int:
    script = completion_script(args.shell)
    if args.json:
        print_json({"shell": args.shell, "script": script})
    else:
        sys.stdout.write(script)
    return 0
