"""examples/deploy must not rot: every YAML file parses, and every `aiotq ...` command line in
the Dockerfile, the compose file, the Kubernetes manifests (commands and probes) and the
systemd unit uses only subcommands and flags that `python -m aiotq <subcommand> --help`
shows, and parses with the real CLI. Also: stop timeouts above the shutdown timeout, probes
that ping the name the worker runs under, and the unit file the same as the docs' unit.
No Docker, Kubernetes or systemd is needed: this only reads the files."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "examples" / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
UNIT = DEPLOY / "systemd" / "aiotq-worker@.service"
YAML_FILES = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
SHELLS = {"sh", "bash", "dash"}
# words before the command proper: exec, env, Docker's CMD, shell keywords (`do aiotq ...`)
PREFIXES = {"exec", "env", "CMD", "do", "then", "else", "if", "while", "until", "!", "time"}
DEFAULT_SHUTDOWN_S = 30.0  # worker_shutdown_timeout_s, when a command gives no --shutdown-timeout

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed in this environment")


# -- finding the command lines ------------------------------------------------------------------
def _is_aiotq(token: str) -> bool:
    return token.rsplit("/", 1)[-1] == "aiotq"


def commands_in_shell(script: str) -> Iterator[list[str]]:
    """The aiotq command lines of a shell script: `exec aiotq ...`, `a && aiotq ...`, and the
    script of a nested `sh -c '...'`."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    tokens = list(lexer)
    segment: list[str] = []
    for token in [*tokens, ";"]:
        if token and set(token) <= set(";&|()"):
            yield from command_in_argv(segment)
            segment = []
        else:
            segment.append(token)


def command_in_argv(argv: list[str]) -> Iterator[list[str]]:
    """argv as an exec would run it: `aiotq ...`, or `exec`/`env`/`VAR=x` then aiotq, or a
    shell with -c."""
    words = list(argv)
    if words[:1] == ["CMD-SHELL"]:  # a compose healthcheck: the rest is a shell script
        for script in words[1:]:
            yield from commands_in_shell(script)
        return
    while words and (words[0] in PREFIXES or "=" in words[0]):
        words.pop(0)
    if not words:
        return
    if _is_aiotq(words[0]):
        yield words
    elif words[0].rsplit("/", 1)[-1] in SHELLS and "-c" in words:
        yield from commands_in_shell(words[words.index("-c") + 1])


def commands_in_yaml(node: Any, where: str) -> Iterator[tuple[str, list[str]]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from commands_in_yaml(value, f"{where}.{key}")
    elif isinstance(node, list):
        if node and all(isinstance(item, str) for item in node):
            for argv in command_in_argv(node):
                yield where, argv
        else:
            for index, item in enumerate(node):
                yield from commands_in_yaml(item, f"{where}[{index}]")
    elif isinstance(node, str) and re.search(r"(^|[\s/])aiotq\s", node):
        for argv in commands_in_shell(node):
            yield where, argv


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) with comments dropped and continuation lines joined."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def docker_command(rest: str) -> Iterator[list[str]]:
    """A CMD/RUN/HEALTHCHECK argument: exec form (JSON) or shell form."""
    rest = rest.strip()
    if rest.startswith("["):
        yield from command_in_argv(json.loads(rest))
    else:
        yield from commands_in_shell(rest)


def commands_in_dockerfile() -> Iterator[tuple[str, list[str]]]:
    for instruction, rest in dockerfile_instructions():
        if instruction == "HEALTHCHECK":
            rest = rest.split(" CMD ", 1)[1] if " CMD " in rest else ""
        if instruction in ("CMD", "ENTRYPOINT", "RUN", "HEALTHCHECK"):
            for argv in docker_command(rest):
                yield f"Dockerfile {instruction}", argv


def systemd_expand(value: str) -> str:
    """The specifiers systemd expands itself: %% -> %, %i -> the instance, %H -> the host."""
    return re.sub(r"%([%iIH])", lambda m: {"%": "%", "i": "1", "I": "1", "H": "web-1"}[m[1]], value)


def unit_settings(text: str) -> list[tuple[str, str]]:
    pairs = []
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


def commands_in_unit() -> Iterator[tuple[str, list[str]]]:
    for key, value in unit_settings(UNIT.read_text()):
        if key.startswith("Exec"):
            value = value.lstrip("-@:+!")  # systemd's prefixes: ignore failure, ...
            for argv in command_in_argv(shlex.split(systemd_expand(value))):
                yield f"{UNIT.name} {key}", argv


def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def commands_in_readme() -> Iterator[tuple[str, list[str]]]:
    """The shell lines of README.md's code blocks, from the word aiotq on
    (`docker compose ... exec worker aiotq status`)."""
    text = (DEPLOY / "README.md").read_text()
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            starts = [i for i, word in enumerate(words) if _is_aiotq(word)]
            if starts:
                yield "README.md", words[starts[0] :]


def all_commands() -> list[tuple[str, list[str]]]:
    found = [*commands_in_dockerfile(), *commands_in_unit(), *commands_in_readme()]
    for path in YAML_FILES:
        for index, doc in enumerate(load_yaml(path)):
            found += commands_in_yaml(doc, f"{path.relative_to(DEPLOY)}#{index}")
    return found


# -- the real CLI -------------------------------------------------------------------------------
@functools.cache
def cli_help(path: tuple[str, ...]) -> str:
    """`python -m aiotq <path> --help`, wide enough that no flag is cut short."""
    env = {**os.environ, "COLUMNS": "250", "TERM": "dumb", "NO_COLOR": "1"}
    env.pop("AIOTQ_APP", None)
    done = subprocess.run(
        [sys.executable, "-m", "aiotq", *path, "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 0, f"aiotq {' '.join(path)} --help failed:\n{done.stderr[-2000:]}"
    return done.stdout


def is_group(path: tuple[str, ...]) -> bool:
    return "COMMAND [ARGS]" in cli_help(path)


def flag_in(flag: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def split_command(argv: list[str]) -> tuple[list[str], tuple[str, ...], list[str]]:
    """aiotq [root options] sub [subsub] [options and arguments] -> the three parts."""
    words = argv[1:]
    root: list[str] = []
    while words and words[0].startswith("-"):
        flag = words.pop(0)
        root.append(flag)
        if flag in ("-A", "--app") and words:
            root.append(words.pop(0))
    if not words:  # `aiotq --version`
        return root, (), []
    path: tuple[str, ...] = (words.pop(0),)
    while words and is_group(path):
        path = (*path, words.pop(0))
    return root, path, words


def flags_of(words: list[str]) -> list[str]:
    flags = []
    for word in words:
        if word == "--":
            break
        if word.startswith("-") and not re.fullmatch(r"-\d+(\.\d+)?", word):
            flags.append(word.split("=", 1)[0])
    return flags


@functools.cache
def click_root() -> Any:
    import typer

    from aiotq.cli import cli

    return typer.main.get_command(cli)


def parse_with_click(path: tuple[str, ...], words: list[str]) -> None:
    """Parse (not run) the arguments with the command's own click parser: unknown options,
    missing values and values of the wrong type fail here."""
    command = click_root()
    for name in path:
        command = command.commands[name]
    command.make_context(f"aiotq {' '.join(path)}", list(words))


COMMANDS = all_commands()


def _id(item: tuple[str, list[str]]) -> str:
    where, argv = item
    return f"{where}: {' '.join(argv[1:4])}"


# -- the tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = load_yaml(path)
    assert docs, f"{path} is empty"
    if path.parent.name in ("k8s", "hpa") and "values" not in path.name:
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path


def test_the_command_lines_are_found_where_they_should_be() -> None:
    places = {where.split("#")[0].split(" ")[0] for where, _ in COMMANDS}
    assert {
        "Dockerfile",
        "aiotq-worker@.service",
        "docker-compose.yml",
        "k8s/worker.yaml",
        "k8s/dashboard.yaml",
    } <= places, places
    subcommands = {split_command(argv)[1] for _, argv in COMMANDS}
    assert {("worker",), ("inspect", "ping"), ("dashboard",)} <= subcommands, subcommands


@pytest.mark.parametrize("item", COMMANDS, ids=[_id(c) for c in COMMANDS])
def test_every_flag_is_in_the_subcommands_help(item: tuple[str, list[str]]) -> None:
    where, argv = item
    root, path, words = split_command(argv)
    root_help = cli_help(())
    for flag in flags_of(root):
        assert flag_in(flag, root_help), f"{where}: `aiotq {flag}` is not in `aiotq --help`"
    if not path:
        return
    text = cli_help(path)  # also: the subcommand exists
    missing = [flag for flag in flags_of(words) if not flag_in(flag, text)]
    assert not missing, f"{where}: {missing} not in `aiotq {' '.join(path)} --help`: {argv}"
    parse_with_click(path, words)


# -- what the examples promise ------------------------------------------------------------------
def option(words: list[str], *names: str) -> str | None:
    for index, word in enumerate(words):
        if word in names and index + 1 < len(words):
            return words[index + 1]
        for name in names:
            if name.startswith("--") and word.startswith(f"{name}="):
                return word.split("=", 1)[1]
    return None


def shutdown_timeout(argv: list[str]) -> float:
    value = option(split_command(argv)[2], "--shutdown-timeout")
    return float(value) if value is not None else DEFAULT_SHUTDOWN_S


def seconds(value: str | int) -> float:
    """Compose's 45s / 1m30s, or a plain number of seconds."""
    if isinstance(value, int | float):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", value.strip())
    scale = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def worker_argv(argv: list[str] | None) -> list[str]:
    assert argv is not None
    found = list(command_in_argv(argv))
    assert found and split_command(found[0])[1] == ("worker",), argv
    return found[0]


def compose() -> dict[str, Any]:
    return load_yaml(DEPLOY / "docker-compose.yml")[0]


def k8s_worker() -> dict[str, Any]:
    (deployment,) = [
        d for d in load_yaml(DEPLOY / "k8s" / "worker.yaml") if d["kind"] == "Deployment"
    ]
    return deployment


def node_name(argv: list[str]) -> str:
    name = option(split_command(argv)[2], "-n", "--hostname")
    assert name, f"no -n in {argv}"
    return name


def same_node(name: str, destination: str) -> bool:
    """`-n $(POD_NAME)@k8s` and `-d $POD_NAME@k8s`, `-n worker@%h` and `-d worker@$HOSTNAME`."""

    def norm(text: str) -> str:
        text = re.sub(r"\$\(POD_NAME\)|\$\{POD_NAME\}|\$POD_NAME", "<pod>", text)
        return re.sub(r"%h|\$\{HOSTNAME\}|\$HOSTNAME", "<host>", text)

    return norm(name) == norm(destination)


def probe_destinations(where_prefix: str) -> list[str]:
    return [
        option(split_command(argv)[2], "-d", "--destination") or ""
        for where, argv in COMMANDS
        if where.startswith(where_prefix) and split_command(argv)[1] == ("inspect", "ping")
    ]


def test_the_dockerfile_runs_aiotq_worker_as_a_non_root_user_and_stops_it_with_sigterm() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    run = " ".join(rest for name, rest in instructions if name == "RUN")
    assert "pip install ." in run
    users = [rest.strip() for name, rest in instructions if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    (cmd,) = [rest for name, rest in instructions if name == "CMD"]
    assert cmd.strip().startswith("["), "exec form, so SIGTERM reaches aiotq and not a shell"
    worker = worker_argv(json.loads(cmd))
    destinations = [argv for where, argv in COMMANDS if where == "Dockerfile HEALTHCHECK"]
    assert destinations, "the image has a HEALTHCHECK that pings the worker"
    assert same_node(node_name(worker), option(destinations[0], "-d") or "")


def test_compose_gives_the_warm_stop_its_time_and_pings_each_replica_by_name() -> None:
    services = compose()["services"]
    assert {"redis", "worker", "dashboard", "prometheus", "rabbitmq"} <= services.keys()
    assert services["rabbitmq"].get("profiles"), "RabbitMQ is optional"
    assert services["worker"]["deploy"]["replicas"] > 1
    workers = {
        name: worker_argv(service["command"])
        for name, service in services.items()
        if "command" in service and list(command_in_argv(service["command"]))
        and split_command(service["command"])[1] == ("worker",)
    }  # fmt: skip
    assert "worker" in workers and "-B" in workers["worker"]
    for name, argv in workers.items():
        service = services[name]
        assert option(argv, "--metrics-port") == "9808", name
        assert service.get("stop_signal", "SIGTERM") == "SIGTERM", name
        assert seconds(service["stop_grace_period"]) > shutdown_timeout(argv), name
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD-SHELL" and "$$HOSTNAME" in test[1], "compose's own $ is escaped"
        (destination,) = probe_destinations(f"docker-compose.yml#0.services.{name}.")
        assert same_node(node_name(argv), destination.replace("$$", "$")), name
    env = services["worker"]["environment"]
    assert {"AIOTQ_BROKER_URL", "AIOTQ_RESULT_BACKEND", "AIOTQ_APP"} <= env.keys()
    prometheus = load_yaml(DEPLOY / "prometheus.yml")[0]
    ports = json.dumps(prometheus["scrape_configs"])
    assert '"port": 9808' in ports and "dashboard:5555" in ports


def test_the_k8s_worker_probes_its_own_pod_and_outlives_its_shutdown_timeout() -> None:
    spec = k8s_worker()["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    argv = worker_argv(container["command"])
    assert node_name(argv) == "$(POD_NAME)@k8s"
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in (
        container["env"]
    )
    assert spec["terminationGracePeriodSeconds"] > shutdown_timeout(argv)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        (ping,) = command_in_argv(container[probe]["exec"]["command"])
        assert split_command(ping)[1] == ("inspect", "ping"), probe
        assert same_node(node_name(argv), option(ping, "-d") or ""), probe
        # the probe's own -t must end before Kubernetes gives up on the probe
        assert float(option(ping, "-t") or 1) < container[probe]["timeoutSeconds"], probe
    assert container["livenessProbe"]["failureThreshold"] > 1
    assert {"requests", "limits"} <= container["resources"].keys()
    refs = json.dumps(container["envFrom"])
    assert "aiotq-urls" in refs and "aiotq" in refs
    (secret,) = [d for d in load_yaml(DEPLOY / "k8s" / "config.yaml") if d["kind"] == "Secret"]
    assert {"AIOTQ_BROKER_URL", "AIOTQ_RESULT_BACKEND"} <= secret["stringData"].keys()


def test_the_k8s_dashboard_has_a_service_and_the_hpa_scales_on_a_metric_aiotq_serves() -> None:
    kinds = {d["kind"] for d in load_yaml(DEPLOY / "k8s" / "dashboard.yaml")}
    assert {"Deployment", "Service"} <= kinds
    (hpa,) = load_yaml(DEPLOY / "k8s" / "hpa" / "hpa.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == k8s_worker()["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    name = metric["external"]["metric"]["name"]
    labels = metric["external"]["metric"]["selector"]["matchLabels"]
    source = (ROOT / "aiotq" / "metrics.py").read_text()
    assert re.search(rf'Gauge\(\s*"{name}".*?\["queue_name"\]', source, re.S), name
    assert set(labels) == {"queue_name"}


def test_the_unit_file_is_the_unit_in_the_docs_and_waits_out_the_warm_stop() -> None:
    doc = (ROOT / "docs" / "deployment.md").read_text()
    section = doc.split("## Running under systemd", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```ini\n(.*?)```", section, re.S)
    assert UNIT.read_text() == block, "docs/deployment.md and the unit file differ"
    settings = dict(unit_settings(UNIT.read_text()))
    (argv,) = [argv for where, argv in COMMANDS if where.endswith("ExecStart")]
    assert settings["KillSignal"] == "SIGTERM"
    assert seconds(settings["TimeoutStopSec"]) > shutdown_timeout(argv)
    assert node_name(argv) == "worker1@%h", "systemd's %i is the instance, %%h is aiotq's %h"


def test_every_deploy_path_the_docs_name_exists() -> None:
    texts = [(ROOT / "docs" / "deployment.md").read_text(), (DEPLOY / "README.md").read_text()]
    named = set()
    for text in texts:
        named |= set(re.findall(r"examples/deploy/[\w./@-]*[\w@]", text))
    named |= {
        f"examples/deploy/{m}" for m in re.findall(r"`((?:k8s|systemd)/[\w./@-]+)`", texts[1])
    }
    assert named
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, missing
