"""`lmforge generate` and `lmforge chat`: text from a run's trained model, streamed to stdout.

The model is found through the registry (`RunRegistry.find_model`: a run id or unique prefix,
and a label for one model of a ladder). A path to a train artifact folder works too, for a model
that no registry knows."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from storage.workspace import activate_workspace

RunArgument = Annotated[
    str,
    typer.Argument(
        help="a run id (or a unique prefix), a model alias a retrain keeps (`champion`), a "
        "trained model folder, or one of its checkpoints (its best/ or final/)"
    ),
]
ModelOption = Annotated[
    str | None, typer.Option("--model", help="the label of a ladder's model (default: its last)")
]
Temperature = Annotated[float, typer.Option(help="0 is greedy")]
TopK = Annotated[int | None, typer.Option("--top-k", help="sample from the k likeliest tokens")]
TopP = Annotated[float | None, typer.Option("--top-p", help="nucleus sampling: 0 < p <= 1")]
Penalty = Annotated[float, typer.Option(help="CTRL repetition penalty; 1 is none")]
MaxNewTokens = Annotated[int, typer.Option(help="stop after this many tokens")]
Seed = Annotated[int, typer.Option(help="the sampling seed (chat: line i uses seed + i)")]


def _fail(message: str) -> typer.Exit:
    from flows.cli import _fail as fail

    return fail(message)


def _error(message: str) -> None:
    from rich.markup import escape

    from flows.cli import errors

    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _load(run: str, label: str | None):
    """The model (on the best device: CUDA > MPS > CPU) and tokenizer of `run` (registry) or of
    a folder."""
    from lm.evaluate import CheckpointError, load_trained
    from lm.tokenizer import TokenizerError
    from lm.train import pick_device
    from storage.artifacts import foreign_descriptor
    from storage.registry import RegistryError, RunRegistry

    workspace = activate_workspace()
    if not run.strip():  # Path("") is the current folder, read as a model folder
        raise _fail("no run id or model folder given (see `lmforge runs` for the runs)")
    folder = Path(run).expanduser()
    if folder.is_file():  # a checkpoint's file (`best/model.pt`): its folder, not a run id
        parent = folder.parent
        checkpoint = (parent / "model.pt").is_file() and (parent.parent / "model.json").is_file()
        if checkpoint or (parent / "model.json").is_file():
            folder = parent
        elif "/" in run or run.startswith("~"):  # a file here named like a run id is looked up
            raise _fail(f"{run}: a file, not a model folder (one holding model.json), a file "
                        "in one, or a run id (see `lmforge runs` for the runs)")  # fmt: skip
    if not folder.exists() and ("/" in run or run.startswith("~")):  # a path, not an id
        raise _fail(f"{run}: no such model folder")
    if folder.is_dir() and label is not None:
        raise _fail(f"--model {label}: {run} is a model, not a run; leave --model out")
    try:
        if not folder.is_dir():
            registry = RunRegistry(workspace.registry_path)
            # Run ids start with their date; an alias (`champion`, a retrain.alias) never does.
            may_be_alias = not run[:1].isdigit()
            found = registry.champion(run) if may_be_alias else None
            if found is not None and label is not None:
                raise _fail(f"--model {label}: {run} names one model; leave --model out")
            try:
                found = found or registry.find_model(run, label)
            except RegistryError as error:
                if not may_be_alias or "no run with" not in str(error):
                    raise
                raise RegistryError(f"{error}, and no model holds the alias '{run}' (a "
                                    "retrain's retrain.alias)") from None  # fmt: skip
            status = registry.find_run(found["run_id"])["status"]
            if label is None and status != "completed":  # its last model may not be the top
                typer.echo(
                    f"note: run {found['run_id']} is {status}; using the last model it "
                    f"trained, '{found['label']}' (--model picks another)",
                    err=True,
                )
            if not found.get("path"):
                raise _fail(f"run {found['run_id']}: model '{found['label']}' has no folder")
            folder = workspace.resolve(found["path"])
            if not folder.exists():
                raise _fail(
                    f"run {found['run_id']}: the folder of model '{found['label']}' is gone "
                    f"({folder}); `lmforge runs show {found['run_id']}` prints the command that "
                    "trains it again"
                )
            if problem := foreign_descriptor(folder):  # folders swapped or moved by hand
                raise _fail(
                    f"run {found['run_id']}: the folder of model '{found['label']}' ({folder}) "
                    f"holds another output: {problem}; `lmforge runs show {found['run_id']}` "
                    "prints the command that trains it again"
                )
        model, tokenizer = load_trained(folder)
    except (RegistryError, CheckpointError, TokenizerError) as error:
        raise _fail(str(error)) from None
    return model.to(pick_device()), tokenizer


def _sampling(temperature, top_k, top_p, repetition_penalty, max_new_tokens, seed):
    from pydantic import ValidationError

    from lm.eval_config import SamplingConfig

    options = {"temperature": temperature, "top_k": top_k, "top_p": top_p,
               "repetition_penalty": repetition_penalty, "max_new_tokens": max_new_tokens,
               "seed": seed}  # fmt: skip
    try:
        return SamplingConfig(**options)
    except ValidationError as error:
        problems = "; ".join(
            f"--{str(item['loc'][0]).replace('_', '-')} {item['input']}: {item['msg'].lower()}"
            for item in error.errors()
        )
        raise _fail(problems) from None


# Control characters but the line's own (newline, tab): a model's byte pieces can write ESC
# sequences that retitle a terminal, set its clipboard (OSC 52) or hide the text after them.
_TERMINAL_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """`text` with each control character a terminal would act on written as `\\xHH`."""
    return _TERMINAL_CONTROLS.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def _stream(model, tokenizer, prompt: str, sampling, echo: bool, one_line: bool) -> None:
    """Write the continuation as it comes (after the prompt when `echo`); `one_line` stops it at
    its first newline. A prompt the tokenizer cannot encode raises `TokenizerError` before
    anything is written. To a terminal, control characters are shown, not obeyed (a pipe or a
    file gets the text as generated)."""
    from lm.generate import generate

    pieces = generate(model, tokenizer, prompt, sampling)
    shown = terminal_safe if sys.stdout.isatty() else str
    if echo:
        sys.stdout.write(shown(prompt))
    for piece in pieces:
        if one_line and "\n" in piece:
            sys.stdout.write(shown(piece.split("\n", 1)[0]))
            break
        sys.stdout.write(shown(piece))
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()


def _read_line() -> str | None:
    """The next stdin line without its line end (LF or CRLF), None at EOF. Read as bytes and
    decoded with surrogate escapes, so that a line that is not UTF-8 reaches `encode_prompt`,
    which names its bad byte, under any locale (a strict one raised UnicodeDecodeError here).
    A closed stdin (`<&-`: Python's `sys.stdin` is None) reads as an empty one."""
    if sys.stdin is None:
        return None
    line = sys.stdin.buffer.readline()
    if not line:
        return None
    return line.removesuffix(b"\n").removesuffix(b"\r").decode("utf-8", "surrogateescape")


def generate_command(
    run: RunArgument,
    prompt: Annotated[str, typer.Option(help="the text to continue")] = "",
    model: ModelOption = None,
    temperature: Temperature = 0.8,
    top_k: TopK = None,
    top_p: TopP = None,
    repetition_penalty: Penalty = 1.0,
    max_new_tokens: MaxNewTokens = 200,
    seed: Seed = 1337,
) -> None:
    """Continue a prompt with a run's trained model, printing the text as it is generated."""
    sampling = _sampling(temperature, top_k, top_p, repetition_penalty, max_new_tokens, seed)
    network, tokenizer = _load(run, model)
    from lm.tokenizer import TokenizerError

    try:
        _stream(network, tokenizer, prompt, sampling, echo=True, one_line=False)
    except TokenizerError as error:
        raise _fail(str(error)) from None


def chat_command(
    run: RunArgument,
    model: ModelOption = None,
    temperature: Temperature = 0.8,
    top_k: TopK = None,
    top_p: TopP = None,
    repetition_penalty: Penalty = 1.0,
    max_new_tokens: MaxNewTokens = 200,
    seed: Seed = 1337,
    multiline: Annotated[bool, typer.Option(help="let a reply run past its first newline")] = False,
) -> None:
    """Read prompts from stdin, one per line, and answer each with one line (until EOF). A line
    that cannot be encoded (or is not UTF-8) gets an empty answer and an error on stderr."""
    from lm.tokenizer import TokenizerError

    sampling = _sampling(temperature, top_k, top_p, repetition_penalty, max_new_tokens, seed)
    network, tokenizer = _load(run, model)
    interactive = sys.stdin is not None and sys.stdin.isatty()
    index = 0
    while True:
        if interactive:  # on stderr, as Python's own prompt: `chat RUN > answers.txt` kept them
            sys.stderr.write("> ")
            sys.stderr.flush()
        prompt = _read_line()
        if prompt is None:
            break
        if index == 0:  # a file saved with a BOM (Windows editors): a mark, not a character
            prompt = prompt.removeprefix("\ufeff")
        line_sampling = sampling.model_copy(update={"seed": sampling.seed + index})
        try:
            _stream(network, tokenizer, prompt, line_sampling, echo=False, one_line=not multiline)
        except TokenizerError as error:
            _error(f"line {index + 1}: {error}")
            sys.stdout.write("\n")
        index += 1
