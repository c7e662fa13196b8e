"""Every command in the README's ```bash blocks (and its openai ```python block), run as written in one
shell session, against the stack its `ftctl stack up` starts: on free ports, in a temporary data directory,
with tiny settings added as flags. A README command this file does not know fails the (fast) coverage test,
so the README cannot gain a command that no test runs; the IDs it names (DATASET_ID, ...) must appear in
the output of an earlier command, as they must for a reader."""

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ftctl.local_stack import free_ports

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
SAMPLE = REPO_ROOT / "samples" / "platform_qa.jsonl"
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z_]*_ID\b")
COMMAND_TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class Known:
    """A README command this test runs: `pattern` matches it whole (without its comment)."""

    pattern: str
    tiny_flags: tuple[str, ...] = ()  # "{scratch}" names the test's temporary folder
    learns: str = ""  # a placeholder whose value the command prints ...
    value_pattern: str = ""  # ... matched by this regex's one group
    sets: tuple[str, ...] = ()  # variables the shell must hold afterwards (`eval "$(...)"` hides failures)


KNOWN = [
    Known(r"make setup"),
    Known(r"source \.venv/bin/activate"),
    Known(
        r'eval "\$\(ftctl stack up\)"',
        sets=("FT_DATA_ADDRESS", "FT_TRAINER_ADDRESS", "FT_EVAL_ADDRESS", "FT_GATEWAY_URL", "FT_ADMIN_TOKEN"),
    ),
    Known(
        r"ftctl data upload my_qa\.jsonl --name \S+",
        learns="DATASET_ID",
        value_pattern=r"\b(ds-[0-9a-f]{12})\b",
    ),
    Known(r"ftctl data report DATASET_ID"),
    Known(
        r"ftctl data prepare DATASET_ID --base-model smollm2-135m-instruct .*",
        tiny_flags=("--max-seq-len", "128"),
        learns="VERSION_ID",
        value_pattern=r"\b(pv-[0-9a-f]{20})\b",
    ),
    Known(
        r"ftctl train create --dataset VERSION_ID --watch",
        tiny_flags=("--max-steps", "3", "--batch-size", "2", "--lora-rank", "4"),
        learns="MERGED_MODEL_ID",
        value_pattern=r"merged model:\s*(model-[0-9a-f]{12})",
    ),
    Known(
        r"ftctl eval run --models smollm2-135m-instruct,MERGED_MODEL_ID --dataset VERSION_ID",
        # Three optimizer steps teach nothing: a rule any run passes, so the promotion below can happen.
        tiny_flags=(
            "--max-examples",
            "4",
            "--max-tokens",
            "8",
            "--min-delta",
            "-1",
            "--min-refusal-rate",
            "0",
            "--max-wrong-refusal-rate",
            "1",
            # Two off-topic questions instead of the 100 built in.
            "--off-topic-probes",
            "{scratch}/probes.txt",
        ),
        learns="RUN_ID",
        value_pattern=r"\b(eval-[0-9a-f]{12})\b",
    ),
    Known(r"ftctl models promote MERGED_MODEL_ID --alias prod --if-eval-passes RUN_ID"),
    Known(r'eval "\$\(ftctl keys create --name \S+\)"', sets=("FT_API_KEY",)),
    Known(r'ftctl chat --model prod "[^"]+"', tiny_flags=("--max-tokens", "8")),
    Known(r"ftctl stack status"),
    Known(r"ftctl stack logs trainer"),
    Known(r"ftctl stack down"),
]


def fenced_blocks(text: str, language: str) -> list[str]:
    return [body for lang, body in fenced(text) if lang == language]


def fenced(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in the order a reader meets them."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def without_comment(line: str) -> str:
    """The command before an unquoted ` #` comment."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line.rstrip()


def readme_steps() -> list[tuple[str, str]]:
    """("bash", command) for each command of the bash blocks (continuation lines joined, comments dropped)
    and ("python", block) for the python block, in README order."""
    steps = []
    for language, block in fenced(README.read_text()):
        if language == "python":
            steps.append(("python", block))
        elif language == "bash":
            steps.extend(("bash", command) for command in shell_commands(block))
    return steps


def readme_commands() -> list[str]:
    return [command for language, command in readme_steps() if language == "bash"]


def shell_commands(block: str) -> list[str]:
    commands = []
    pending = ""
    for line in block.splitlines():
        line = without_comment(line)
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        command = (pending + line.strip()).strip()
        pending = ""
        if command:
            commands.append(command)
    return commands


def known(command: str) -> Known | None:
    return next((k for k in KNOWN if re.fullmatch(k.pattern, command)), None)


def test_every_readme_command_is_run_by_this_test():
    commands = readme_commands()
    assert "ftctl train create --dataset VERSION_ID --watch" in commands
    uncovered = [c for c in commands if known(c) is None]
    assert uncovered == [], "README commands tests/test_readme.py does not run (add them to KNOWN)"
    unused = [k.pattern for k in KNOWN if not any(re.fullmatch(k.pattern, c) for c in commands)]
    assert unused == [], "KNOWN commands the README no longer has"
    python_blocks = fenced_blocks(README.read_text(), "python")
    assert len(python_blocks) == 1 and "OpenAI(" in python_blocks[0]


def small_dataset(folder: Path) -> Path:
    """A user's small Q&A file (40 rows of the shipped sample) and the tiny evaluation's probes."""
    path = folder / "my_qa.jsonl"
    path.write_text("\n".join(SAMPLE.read_text().splitlines()[:40]) + "\n")
    (folder / "probes.txt").write_text("What is the capital of France?\nWrite a poem about the sea.\n")
    return path


class Shell:
    """One bash session, as a reader's terminal: each command runs in bash and the variables it leaves
    (`source`, `eval "$(...)"`) carry over to the next."""

    def __init__(self, env: dict[str, str], cwd: Path, scratch: Path) -> None:
        self.env = env
        self.cwd = cwd
        self.env_dump = scratch / "shell.env"

    def run(self, command: str) -> subprocess.CompletedProcess:
        script = f'{command}\nstatus=$?\nenv -0 > "{self.env_dump}"\nexit $status\n'
        result = subprocess.run(
            ["bash", "-c", script],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
        )
        if self.env_dump.exists():
            pairs = (item.split("=", 1) for item in self.env_dump.read_text().split("\0") if "=" in item)
            self.env = dict(pairs)
            self.env_dump.unlink()
        return result


def reader_environment(data_dir: Path) -> dict[str, str]:
    """A fresh terminal (no FT_* settings, the venv not active) plus the test's tiny settings."""
    venv_bin = str(REPO_ROOT / ".venv" / "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_") and k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    ports = free_ports(6)
    env.update(
        {
            "FT_STACK_DATA_DIR": str(data_dir),
            "FT_DATA_PORT": str(ports[0]),
            "FT_TRAINER_PORT": str(ports[1]),
            "FT_EVAL_PORT": str(ports[2]),
            "FT_INFERENCE_PORT": str(ports[3]),
            "FT_INFERENCE_HTTP_PORT": str(ports[4]),
            "FT_CONSOLE_PORT": str(ports[5]),
            "FT_INFERENCE_ENGINE": "transformers",  # loads in seconds; vLLM has its own tests
            "FT_INFERENCE_DEFAULT_MAX_TOKENS": "8",  # the openai example sets no max_tokens
            "HF_HUB_OFFLINE": "1",
        }
    )
    return env


def runnable_command(command: str, dataset: Path, learned: dict[str, str]) -> str:
    """The README command with the test's file, the IDs earlier commands printed, and tiny settings."""
    step = known(command)
    assert step is not None, f"not covered: {command}"
    runnable = command.replace("my_qa.jsonl", str(dataset))
    for placeholder, value in learned.items():
        runnable = re.sub(rf"\b{placeholder}\b", value, runnable)
    missing = PLACEHOLDER.findall(runnable)
    assert not missing, f"{command}: no earlier README command printed {missing}"
    return " ".join([runnable, *(flag.format(scratch=dataset.parent) for flag in step.tiny_flags)])


@pytest.mark.slow
def test_readme_commands_work_as_written(tmp_path):
    dataset = small_dataset(tmp_path)
    data_dir = tmp_path / "var"
    shell = Shell(reader_environment(data_dir), REPO_ROOT, tmp_path)
    learned: dict[str, str] = {}
    timings: list[str] = []
    try:
        for language, text in readme_steps():
            if language == "python":
                # With the shell's python (the venv's, once activated) and its variables.
                runnable = f"python - <<'README_PYTHON'\n{text}README_PYTHON"
            else:
                runnable = runnable_command(text, dataset, learned)
            started = time.monotonic()
            result = shell.run(runnable)
            timings.append(f"{time.monotonic() - started:6.1f}s  {runnable.splitlines()[0]}")
            output = result.stdout + result.stderr
            assert result.returncode == 0, f"`{runnable}` failed ({result.returncode}):\n{output[-4000:]}"
            if language == "python":
                assert result.stdout.strip(), "the openai example printed no answer"
                continue
            step = known(text)
            for variable in step.sets:
                assert shell.env.get(variable), f"`{runnable}` did not set {variable}:\n{output[-4000:]}"
            if step.learns:
                found = re.search(step.value_pattern, output)
                assert found, f"`{runnable}` printed no {step.learns}:\n{output[-4000:]}"
                learned[step.learns] = found.group(1)
    finally:
        # Whatever failed above, leave nothing running (a no-op after the README's own `stack down`).
        shell.run(f"{REPO_ROOT / '.venv' / 'bin' / 'ftctl'} stack down")
        sys.stderr.write("README commands, as run:\n" + "\n".join(timings) + "\n")
    assert not (data_dir / "stack.json").exists()
