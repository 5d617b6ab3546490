"""Static checks of Dockerfile, docker-compose.yml and .dockerignore.

Docker does not run in CI, so these tests read the files and check what a
broken deployment would get wrong: a service without a healthcheck, a target
that does not exist, torch in the API image, a command the image lacks, a
literal secret, a setting the service does not read, Redis without
persistence, a build context missing what pip needs.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib
import importlib.metadata
import inspect
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
if sys.version_info >= (3, 11):
    import tomllib
else:
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
ONE_SHOT_SERVICES = {"minio-init"}  # init jobs: run once and exit, so no healthcheck
OUR_TARGETS = {"api", "worker"}
SECRET_NAME = re.compile(r"(KEY|SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL)", re.IGNORECASE)
PURE_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:?\?[^}]*)?\}$")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


# ---------------------------------------------------------------- parsing


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the logical line, continuations joined


@dataclass
class Stage:
    name: str
    base: str  # the image or the stage it starts FROM
    instructions: list[Instruction] = field(default_factory=list)


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Logical instructions of a Dockerfile: comments dropped, ``\\`` continuations joined."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = (pending + stripped).strip()
        pending = ""
        if line:
            keyword, _, args = line.partition(" ")
            out.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def parse_dockerfile(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults and the stages by name."""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for ins in dockerfile_instructions(text):
        if ins.keyword == "FROM":
            parts = ins.args.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            assert len(parts) == 3 and parts[1].upper() == "AS", f"unnamed stage: FROM {ins.args}"
            base = re.sub(
                r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)), parts[0]
            )
            current = Stage(parts[2], base)
            stages[current.name] = current
        elif current is None:
            assert ins.keyword == "ARG", f"{ins.keyword} before the first FROM"
            name, _, default = ins.args.partition("=")
            global_args[name] = default
        else:
            current.instructions.append(ins)
    return global_args, stages


def stage_chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, root first."""
    chain = []
    while name in stages:
        chain.append(stages[name])
        name = stages[name].base
    return chain[::-1]


def stage_instructions(stages: dict[str, Stage], name: str) -> list[Instruction]:
    return [ins for stage in stage_chain(stages, name) for ins in stage.instructions]


def stage_args(stages: dict[str, Stage], name: str) -> dict[str, str]:
    args = {}
    for ins in stage_instructions(stages, name):
        if ins.keyword == "ARG":
            key, _, default = ins.args.partition("=")
            args[key] = default
    return args


def exec_form(args: str) -> list[str]:
    """The argv of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD (a JSON array)."""
    assert args.startswith("["), (
        f"use the exec form (a JSON array) so signals reach the process: {args}"
    )
    argv = json.loads(args)
    assert isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)
    return argv


def healthcheck_argv(ins: Instruction) -> list[str]:
    """argv of ``HEALTHCHECK [--options] CMD [...]``."""
    head, sep, rest = ins.args.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {ins.args}"
    assert all(tok.startswith("--") for tok in head.split()), ins.args
    return exec_form(rest.strip())


def pip_installs(stages: dict[str, Stage], name: str) -> list[str]:
    """The ``pip install`` / ``pip wheel`` commands run while building a target, ARGs expanded."""
    args = stage_args(stages, name)
    commands = []
    for ins in stage_instructions(stages, name):
        if ins.keyword != "RUN":
            continue
        expanded = re.sub(
            r"\$\{(\w+)\}|\$(\w+)",
            lambda m: args.get(m.group(1) or m.group(2), m.group(0)),
            ins.args,
        )
        for command in re.split(r"&&|;|\|\|", expanded):
            if re.search(r"\bpip3? (install|wheel)\b", command):
                commands.append(command.strip())
    return commands


def installed_extras(stages: dict[str, Stage], name: str) -> set[str]:
    """Extras of this project that a target's pip installs name (``".[a,b]"``, ``"...whl[a]"``)."""
    extras: set[str] = set()
    for command in pip_installs(stages, name):
        if "pip wheel" in command:
            continue
        for group in re.findall(r"(?:\.|\.whl\)?|nacs)\[([^\]]+)\]", command):
            extras.update(e.strip() for e in group.split(","))
    return extras


def installs_torch(stages: dict[str, Stage], name: str) -> bool:
    return any(re.search(r"(^|[\s\"'])torch\b", c) for c in pip_installs(stages, name))


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def stages(dockerfile) -> dict[str, Stage]:
    return dockerfile[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def our_services(services: dict[str, dict]) -> dict[str, dict]:
    """Services built from this repository's Dockerfile."""
    return {name: svc for name, svc in services.items() if "build" in svc}


def env_of(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def compose_argv(test) -> list[str]:
    """argv of a compose healthcheck ``test`` (CMD form; CMD-SHELL split like sh would)."""
    if isinstance(test, str):
        return shlex.split(test)
    kind, *rest = test
    assert kind in {"CMD", "CMD-SHELL"}, f"healthcheck test must be CMD or CMD-SHELL: {test}"
    return rest if kind == "CMD" else shlex.split(rest[0])


# ---------------------------------------------------------------- Dockerfile


def test_runtime_targets_exist_and_build_from_one_base(stages):
    assert OUR_TARGETS <= set(stages), f"Dockerfile stages: {sorted(stages)}"
    roots = {stage_chain(stages, t)[0].base for t in OUR_TARGETS}
    assert len(roots) == 1, f"api and worker should share one base image, got {roots}"
    assert re.fullmatch(r"python:3\.11-slim(@sha256:[0-9a-f]{64})?", roots.pop())


def test_api_image_installs_neither_torch_nor_the_engine(stages):
    assert pip_installs(stages, "api"), "the api target installs nothing"
    assert not installs_torch(stages, "api"), pip_installs(stages, "api")
    extras = installed_extras(stages, "api")
    assert "server" in extras
    # engine pulls torch; all and dev include engine.
    assert not extras & {"engine", "all", "dev"}, extras


def test_worker_image_installs_pinned_cpu_torch_then_the_engine(stages):
    args = stage_args(stages, "worker")
    assert args.get("TORCH_SPEC") == "torch==2.13.0"
    assert args.get("TORCH_INDEX_URL") == CPU_INDEX
    assert installs_torch(stages, "worker")
    torch_install = next(c for c in pip_installs(stages, "worker") if "torch==" in c)
    assert f"--index-url {CPU_INDEX}" in torch_install.replace('"', ""), torch_install
    assert {"server", "engine"} <= installed_extras(stages, "worker")
    # torch comes first so the project's install finds it and never pulls a CUDA build from PyPI.
    runs = [i.args for i in stage_instructions(stages, "worker") if i.keyword == "RUN"]
    torch_at = next(n for n, r in enumerate(runs) if "TORCH_SPEC" in r)
    engine_at = next(n for n, r in enumerate(runs) if re.search(r"\[[^\]]*\bengine\b[^\]]*\]", r))
    assert torch_at < engine_at


def test_pip_install_sees_everything_it_needs(stages, pyproject):
    """The stage that builds the project COPYs pyproject.toml, the readme and every package."""
    builders = [
        name
        for name in stages
        if any(
            re.search(r"pip3? (wheel|install)( [^&]*)? \.(\s|$|\[)", c)
            for c in pip_installs(stages, name)
        )
    ]
    assert builders, "no stage builds the project from its source (pip wheel . / pip install .)"
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted(
        p.parent.name
        for p in ROOT.glob("*/__init__.py")
        if any(fnmatch.fnmatch(p.parent.name, pat) for pat in include)
    )
    assert {"nacs_engine", "worker", "service", "nacs_client"} <= set(packages)
    needed = {"pyproject.toml", pyproject["project"]["readme"], *packages}
    for name in builders:
        copied: set[str] = set()
        for ins in stage_instructions(stages, name):
            if ins.keyword == "COPY" and "--from=" not in ins.args:
                *sources, _dest = [a for a in ins.args.split() if not a.startswith("--")]
                copied.update(s.rstrip("/") for s in sources)
        missing = needed - copied if "." not in copied else set()
        assert not missing, f"stage {name} runs pip without COPYing {sorted(missing)}"


def test_runtime_targets_get_the_project_from_the_build(stages):
    for target in OUR_TARGETS:
        instructions = stage_instructions(stages, target)
        assert any(i.keyword == "COPY" for i in instructions), target
        assert any("nacs" in c or " ." in c for c in pip_installs(stages, target)), target


def test_no_remote_add(dockerfile):
    for ins in dockerfile_instructions((ROOT / "Dockerfile").read_text()):
        if ins.keyword == "ADD":
            assert not re.search(r"(https?|git|ftp)://|git@", ins.args), (
                f"ADD of a remote source: {ins.args}"
            )


def test_runtime_targets_run_as_a_non_root_user(stages):
    for target in OUR_TARGETS:
        instructions = stage_instructions(stages, target)
        users = [n for n, i in enumerate(instructions) if i.keyword == "USER"]
        assert users, f"{target} runs as root"
        last_user = instructions[users[-1]].args.split(":")[0]
        assert last_user not in {"root", "0"}, target
        later_runs = [i for i in instructions[users[-1] :] if i.keyword == "RUN"]
        assert not later_runs, f"{target}: RUN after USER needs root again?"
        # The user must exist: created in the chain before it is used.
        created = " ".join(i.args for i in instructions[: users[-1]] if i.keyword == "RUN")
        assert re.search(rf"useradd\b[^&]*\b{re.escape(last_user)}\b", created), target


def test_runtime_targets_have_cmd_and_healthcheck(stages):
    for target in OUR_TARGETS:
        own = stages[target].instructions
        assert sum(i.keyword == "CMD" for i in own) == 1, target
        assert sum(i.keyword == "HEALTHCHECK" for i in own) == 1, target


def test_api_serves_on_all_interfaces_on_the_exposed_port(stages, services):
    own = stages["api"].instructions
    cmd = exec_form(next(i.args for i in own if i.keyword == "CMD"))
    assert cmd[:2] == ["nacs", "serve"]
    port = cmd[cmd.index("--port") + 1]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0", "a container must listen beyond its loopback"
    exposed = next(i.args for i in own if i.keyword == "EXPOSE").split()
    assert port in exposed
    probe = " ".join(healthcheck_argv(next(i for i in own if i.keyword == "HEALTHCHECK")))
    assert f"127.0.0.1:{port}/healthz" in probe
    api = services["api"]
    assert any(str(p).endswith(f":{port}") for p in api.get("ports", [])), api.get("ports")
    assert f":{port}/healthz" in " ".join(compose_argv(api["healthcheck"]["test"]))


def test_no_secret_in_the_dockerfile():
    for ins in dockerfile_instructions((ROOT / "Dockerfile").read_text()):
        if ins.keyword in {"ENV", "ARG", "LABEL"}:
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", ins.args) or [ins.args.split()[0]]
            for name in names:
                assert not SECRET_NAME.search(name), (
                    f"{ins.keyword} {name}: secrets come at run time"
                )
                assert not name.startswith("NACS_API_KEYS"), name
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    assert not re.search(r"\w+://[^/\s:@]*:[^/\s@]+@", text), "credentials inside a URL"


# ---------------------------------------------------------------- .dockerignore


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context drops ``path`` (last matching pattern wins, ``!`` re-includes)."""
    result = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        pat_tail = pat[3:] if pat.startswith("**/") else None
        for prefix in prefixes:
            name_match = fnmatch.fnmatch(prefix, pat)
            deep_match = pat_tail is not None and (
                fnmatch.fnmatch(prefix, pat_tail) or fnmatch.fnmatch(prefix, "*/" + pat_tail)
            )
            if name_match or deep_match:
                result = not negate
                break
    return result


def test_dockerignore_keeps_secrets_and_clutter_out():
    patterns = dockerignore_patterns()
    for path in [
        ".venv/bin/python",
        ".git/HEAD",
        ".env",
        ".env.local",
        ".nacs/storage/x",
        "service/__pycache__/main.cpython-311.pyc",
        ".pytest_cache/v",
        ".ruff_cache/x",
        "tests/deploy/test_docker_files.py",
        "data/train.parquet",
    ]:
        assert ignored(path, patterns), f"{path} would be sent to the Docker daemon"


def test_dockerignore_keeps_what_the_build_copies(stages):
    patterns = dockerignore_patterns()
    for stage in stages.values():
        for ins in stage.instructions:
            if ins.keyword == "COPY" and "--from=" not in ins.args:
                *sources, _dest = [a for a in ins.args.split() if not a.startswith("--")]
                for src in sources:
                    src = src.rstrip("/")
                    assert not ignored(src, patterns), f"COPY {src} but .dockerignore drops it"
                    if (ROOT / src).is_dir():
                        for py in (ROOT / src).rglob("*.py"):
                            rel = py.relative_to(ROOT).as_posix()
                            if "__pycache__" not in rel:
                                assert not ignored(rel, patterns), rel


# ---------------------------------------------------------------- compose


def test_every_long_running_service_has_a_healthcheck(services):
    for name, svc in services.items():
        if name in ONE_SHOT_SERVICES:
            assert svc.get("restart", "no") == "no", f"{name} is one-shot, it must not restart"
            continue
        check = svc.get("healthcheck")
        assert check and not check.get("disable"), f"service {name} has no healthcheck"
        assert compose_argv(check["test"]), name


def test_one_shot_jobs_are_awaited_to_completion(services):
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            if dep in ONE_SHOT_SERVICES:
                assert cond["condition"] == "service_completed_successfully", (name, dep)
            else:
                assert cond["condition"] == "service_healthy", (
                    f"{name} starts before {dep} is healthy"
                )


def test_our_services_wait_for_redis_and_the_store(services):
    ours = our_services(services)
    assert {"api", "worker"} <= set(ours)
    for name, svc in ours.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        for needed in ("redis", "minio", "minio-init"):
            assert needed in deps, f"{name} does not wait for {needed}"


def test_build_targets_exist_in_the_dockerfile(services, stages):
    ours = our_services(services)
    for name, svc in ours.items():
        build = svc["build"]
        assert build.get("context", ".") in {".", "./"}, name
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile", name
        assert build.get("target") in stages, f"{name}: no stage {build.get('target')!r}"
        assert build["target"] in OUR_TARGETS, name
        args = stage_args(stages, build["target"])
        for arg in build.get("args") or {}:
            assert arg in args, (
                f"{name}: build arg {arg} is not declared in target {build['target']}"
            )
    images = [svc.get("image") for svc in ours.values()]
    assert len(images) == len(set(images)), f"two builds share an image name: {images}"


def test_redis_persists_to_a_volume(services, compose):
    redis = services["redis"]
    assert re.fullmatch(r"redis:7(\.\d+)*(-\w+)?", redis["image"]), redis["image"]
    command = redis.get("command")
    command = " ".join(command) if isinstance(command, list) else str(command)
    assert re.search(r"--appendonly\s+yes", command), (
        "Redis must persist job records (appendonly yes)"
    )
    assert "--save ''" not in command and '--save ""' not in command
    mounts = [str(v) for v in redis.get("volumes", [])]
    data = [m for m in mounts if m.split(":")[1] == "/data"]
    assert data, "the append-only file must live on a volume mounted at /data"
    volume = data[0].split(":")[0]
    assert volume in (compose.get("volumes") or {}), f"volume {volume} is not declared"


def test_no_literal_secrets_in_compose(services):
    text = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    assert "minioadmin" not in text
    assert not re.search(r"\w+://[^/\s:@$]*:[^/\s@]+@", text), "credentials inside a URL"
    for name, svc in services.items():
        for key, value in env_of(svc).items():
            if SECRET_NAME.search(key) or key in {"NACS_API_KEYS", "MINIO_ROOT_USER"}:
                assert PURE_REFERENCE.match(value), (
                    f"{name}.{key} must be a ${{VAR:?...}} reference to the environment, "
                    f"not {value!r}"
                )
        for arg, value in ((svc.get("build") or {}).get("args") or {}).items():
            assert not SECRET_NAME.search(arg), f"{name}: build arg {arg} would bake a secret in"
            assert "@" not in str(value), f"{name}: build arg {arg} holds credentials"
        for env_file in (
            [svc["env_file"]] if isinstance(svc.get("env_file"), str) else svc.get("env_file", [])
        ):
            path = env_file if isinstance(env_file, str) else env_file["path"]
            assert not (ROOT / path).exists() or path == ".env.example", (
                f"{name} reads committed {path}"
            )


def test_required_secrets_fail_loudly_when_unset(services):
    """Secrets are ``${VAR:?message}``: compose refuses to start instead of running with an empty
    key."""
    for name, svc in services.items():
        for key, value in env_of(svc).items():
            if SECRET_NAME.search(key) or key == "NACS_API_KEYS":
                assert ":?" in value, f"{name}.{key} may silently be empty: {value}"


def test_gpu_worker_is_only_under_the_gpu_profile(services, stages):
    gpu = {}
    for name, svc in services.items():
        devices = (
            ((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}
        ).get("devices") or []
        if any(d.get("driver") == "nvidia" for d in devices):
            gpu[name] = svc
            assert "gpu" in (svc.get("profiles") or []), (
                f"{name} reserves a GPU outside the gpu profile"
            )
            assert all("gpu" in d.get("capabilities", []) for d in devices), name
    assert gpu, "no service reserves a GPU"
    for name, svc in gpu.items():
        assert svc["build"]["target"] == "worker"
        # A forked child cannot use the parent's CUDA context: GPU workers run jobs in-process.
        assert "--no-fork" in (svc.get("command") or []), f"{name} forks after CUDA starts"
        index = svc["build"]["args"]["TORCH_INDEX_URL"]
        assert re.search(r"/whl/cu\d+", index), f"{name} would build CPU torch: {index}"
    for name, svc in services.items():
        if name not in gpu:
            index = str(
                ((svc.get("build") or {}).get("args") or {}).get("TORCH_INDEX_URL", CPU_INDEX)
            )
            assert "/whl/cu" not in index, f"{name} builds CUDA torch outside the gpu profile"
            assert "gpu" not in (svc.get("profiles") or []), name


def test_api_and_workers_share_redis_queue_and_store(services):
    ours = our_services(services)
    shared = ["NACS_REDIS_URL", "NACS_STORAGE_URI", "NACS_S3_ENDPOINT_URL"]
    values = {name: {k: env_of(svc).get(k) for k in shared} for name, svc in ours.items()}
    first = next(iter(values.values()))
    assert all(first[k] for k in shared), first
    for name, v in values.items():
        assert v == first, f"{name} disagrees with the others: {v} != {first}"
        assert "redis:6379" in v["NACS_REDIS_URL"]
    assert "NACS_API_KEYS" in env_of(services["api"])
    for name, svc in ours.items():
        if svc["build"]["target"] == "worker":
            assert "NACS_API_KEYS" not in env_of(svc), f"{name} does not need the API keys"


# ---------------------------------------------------------------- commands and settings


def entry_point_target(pyproject: dict, group: str, name: str) -> str:
    if group == "scripts":
        return pyproject["project"]["scripts"][name]
    return pyproject["project"]["entry-points"][group][name]


def assert_defined(target: str) -> None:
    """``module:attr`` names a module in the repository that defines ``attr`` at top level."""
    module, _, attr = target.partition(":")
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    assert path.exists(), f"entry point {target}: no module {module} in the repository"
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    assert attr in names, f"entry point {target}: {module} defines no {attr}"


def requirement_names(pyproject: dict, extras: set[str]) -> set[str]:
    """Distribution names a pip install of this project with these extras brings in."""
    project = pyproject["project"]
    reqs = list(project["dependencies"])
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in project["optional-dependencies"][extra]:
            nested = re.fullmatch(r"nacs\[([^\]]+)\]", req)
            if nested:
                todo.extend(e.strip() for e in nested.group(1).split(","))
            else:
                reqs.append(req)
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def module_available(module: str, distributions: set[str]) -> bool:
    """Whether ``import module`` works in an image holding these distributions and the repo's
    packages."""
    if module in sys.stdlib_module_names or (ROOT / module / "__init__.py").exists():
        return True
    providers = importlib.metadata.packages_distributions().get(module, [])
    return any(p.lower().replace("_", "-") in distributions for p in providers)


def python_imports(code: str) -> set[str]:
    tree = ast.parse(code)
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module.split(".")[0])
    return mods


def check_command(argv: list[str], target: str, stages, pyproject) -> None:
    """Every program an image runs exists in that image."""
    distributions = requirement_names(pyproject, installed_extras(stages, target))
    if installs_torch(stages, target):
        distributions.add("torch")
    program = argv[0]
    if program == "nacs":
        assert_defined(entry_point_target(pyproject, "scripts", "nacs"))
        sub = argv[1]
        assert sub in pyproject["project"]["entry-points"]["nacs.cli"], (
            f"nacs {sub} is not a plugin command"
        )
        ep = entry_point_target(pyproject, "nacs.cli", sub)
        assert_defined(ep)
        module, _, attr = ep.partition(":")
        command = getattr(importlib.import_module(module), attr)
        options = {opt for p in getattr(command, "params", []) for opt in getattr(p, "opts", [])}
        for flag in (a for a in argv[2:] if a.startswith("--")):
            assert flag in options, f"nacs {sub} has no option {flag} (it has {sorted(options)})"
    elif program in {"python", "python3"}:
        if argv[1] == "-c":
            for module in python_imports(argv[2]):
                assert module_available(module, distributions), (
                    f"{target}: python -c imports {module}"
                )
        elif argv[1] == "-m":
            assert module_available(argv[2].split(".")[0], distributions), argv
    else:
        pytest.fail(f"{target} runs {program}, which nothing in the image provides")


def test_dockerfile_commands_exist_in_their_image(stages, pyproject):
    for target in OUR_TARGETS:
        for ins in stages[target].instructions:
            if ins.keyword == "CMD":
                check_command(exec_form(ins.args), target, stages, pyproject)
            elif ins.keyword == "HEALTHCHECK":
                check_command(healthcheck_argv(ins), target, stages, pyproject)
            elif ins.keyword == "RUN":
                for code in re.findall(r"python -c \"([^\"]+)\"", ins.args):
                    check_command(["python", "-c", code], target, stages, pyproject)


def test_compose_commands_exist_in_their_image(services, stages, pyproject):
    for name, svc in our_services(services).items():
        target = svc["build"]["target"]
        check_command(compose_argv(svc["healthcheck"]["test"]), target, stages, pyproject)
        if svc.get("command"):
            command = svc["command"]
            check_command(
                command if isinstance(command, list) else shlex.split(command),
                target,
                stages,
                pyproject,
            )
        probe = " ".join(compose_argv(svc["healthcheck"]["test"]))
        for var in re.findall(r"environ\[['\"](\w+)['\"]\]", probe):
            assert var in env_of(svc), f"{name}: its healthcheck reads {var}, which it is not given"


def test_python_snippets_are_valid_python(stages, services):
    snippets = []
    for target in OUR_TARGETS:
        for ins in stage_instructions(stages, target):
            if ins.keyword == "HEALTHCHECK":
                argv = healthcheck_argv(ins)
                if argv[:2] == ["python", "-c"]:
                    snippets.append(argv[2])
            elif ins.keyword == "RUN":
                snippets.extend(re.findall(r"python -c \"([^\"]+)\"", ins.args))
    for svc in our_services(services).values():
        argv = compose_argv(svc["healthcheck"]["test"])
        if argv[:2] == ["python", "-c"]:
            snippets.append(argv[2])
    assert snippets
    for code in snippets:
        compile(code, "<healthcheck>", "exec")


def settings_env_names() -> set[str] | None:
    """NACS_* variables the service's settings classes read; None when no settings module exists
    yet."""
    from pydantic_settings import BaseSettings

    names: set[str] = set()
    found = False
    for module_name in ("service.settings", "worker.settings"):
        if not (ROOT / (module_name.replace(".", "/") + ".py")).exists():
            continue
        module = importlib.import_module(module_name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if not issubclass(cls, BaseSettings) or cls is BaseSettings:
                continue
            found = True
            prefix = cls.model_config.get("env_prefix", "")
            for fname, info in cls.model_fields.items():
                alias = info.validation_alias or info.alias
                choices = getattr(alias, "choices", None)
                if isinstance(alias, str):
                    names.add(alias.upper())
                elif choices:
                    names.update(c.upper() for c in choices if isinstance(c, str))
                else:
                    names.add((prefix + fname).upper())
    return names if found else None


def env_example_names() -> set[str]:
    path = ROOT / ".env.example"
    assert path.exists(), ".env.example documents every setting; it is missing"
    return set(re.findall(r"^\s*#?\s*([A-Z][A-Z0-9_]*)=", path.read_text(), re.MULTILINE))


def compose_code() -> str:
    """docker-compose.yml without its comment lines."""
    lines = (ROOT / "docker-compose.yml").read_text().splitlines()
    return "\n".join(ln for ln in lines if not ln.lstrip().startswith("#"))


def compose_nacs_variables(services) -> set[str]:
    names = set()
    for svc in services.values():
        names.update(k for k in env_of(svc) if k.startswith("NACS_"))
    text = compose_code()
    names.update(re.findall(r"\$\{(NACS_\w+?)(?::?[-?][^}]*)?\}", text))
    return names


def test_compose_nacs_variables_are_settings_the_service_reads(services):
    used = compose_nacs_variables(services)
    assert {"NACS_REDIS_URL", "NACS_API_KEYS", "NACS_STORAGE_URI", "NACS_S3_ENDPOINT_URL"} <= used
    known = settings_env_names()
    if known is None:
        known = {n for n in env_example_names() if n.startswith("NACS_")}
    unknown = used - known
    assert not unknown, f"compose sets variables no setting reads (typos?): {sorted(unknown)}"


def test_compose_variables_are_documented_in_env_example(services):
    documented = env_example_names()
    used = compose_nacs_variables(services)
    required = set(
        re.findall(r"\$\{(\w+):\?", compose_code())
    )  # compose refuses to start without these
    missing = (used | required) - documented
    assert not missing, f"not documented in .env.example: {sorted(missing)}"


# ---------------------------------------------------------------- what each image can import

BASE_IMAGE_MODULES = {
    "pip",
    "setuptools",
    "pkg_resources",
    "_distutils_hack",
}  # come with python:3.11-slim


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution_closure(pyproject: dict, extras: set[str]) -> set[str]:
    """Every distribution pip installs for this project with these extras (markers evaluated
    here)."""
    from packaging.requirements import Requirement

    project = pyproject["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    pending, seen_extras = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen_extras:
            continue
        seen_extras.add(extra)
        for req in map(Requirement, project["optional-dependencies"][extra]):
            if req.name == "nacs":
                pending.extend(req.extras)
            else:
                todo.append(req)
    closure: set[str] = set()
    visited: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req = todo.pop()
        key = (_normalise(req.name), frozenset(req.extras))
        if key in visited:
            continue
        visited.add(key)
        closure.add(key[0])
        try:
            requires = importlib.metadata.requires(req.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            sub = Requirement(line)
            wanted = sub.marker is None or any(
                sub.marker.evaluate({"extra": e}) for e in (req.extras or {""})
            )
            if wanted:
                todo.append(sub)
    return closure


IMPORT_IN_IMAGE = """
import importlib, json, pkgutil, sys

allowed = set(json.loads(sys.argv[1]))
packages = json.loads(sys.argv[2])
refused = set()


class NotInImage:
    # Refuses what the image would not hold; optional imports (try/except ImportError) carry on.
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in allowed or top in sys.stdlib_module_names or top.startswith("_"):
            return None
        refused.add(top)
        raise ModuleNotFoundError(f"No module named {top!r} in this image", name=top)


sys.meta_path.insert(0, NotInImage())
for name in packages:
    package = importlib.import_module(name)
    for info in pkgutil.walk_packages(package.__path__, name + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
if len(sys.argv) > 3:  # the image's command, as its console script runs it
    import contextlib, io
    from nacs_client.cli import main
    with contextlib.redirect_stdout(io.StringIO()):
        main(json.loads(sys.argv[3]) + ["--help"], standalone_mode=False)
loaded = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps({"loaded": loaded, "refused": sorted(refused)}))
"""


def import_as_in_image(
    packages: list[str], distributions: set[str], command: list[str] | None = None
) -> dict[str, list[str]]:
    """Import every module of ``packages`` in a fresh interpreter that can see only what an
    image with these distributions holds (plus the standard library and this repository)."""
    import subprocess

    provided = importlib.metadata.packages_distributions()
    allowed = {
        m for m, dists in provided.items() if any(_normalise(d) in distributions for d in dists)
    }
    allowed |= {p.parent.name for p in ROOT.glob("*/__init__.py")} | BASE_IMAGE_MODULES
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_IN_IMAGE, json.dumps(sorted(allowed)), json.dumps(packages)]
        + ([json.dumps(command)] if command else []),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, (
        f"{packages} do not import with only {sorted(distributions)}:\n{out.stderr[-3000:]}"
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_api_code_runs_with_only_the_server_extra(stages, pyproject):
    """Every module of service/ imports in the api image: no torch, nothing from the engine
    extra."""
    distributions = distribution_closure(pyproject, installed_extras(stages, "api"))
    assert "torch" not in distributions
    cmd = exec_form(next(i.args for i in stages["api"].instructions if i.keyword == "CMD"))
    result = import_as_in_image(["service"], distributions, command=cmd[1:2])
    assert "torch" not in result["loaded"], "service/ imports torch: the api image has none"


def test_the_worker_code_runs_in_the_worker_image(stages, pyproject):
    distributions = distribution_closure(pyproject, installed_extras(stages, "worker")) | {"torch"}
    cmd = exec_form(next(i.args for i in stages["worker"].instructions if i.keyword == "CMD"))
    import_as_in_image(["worker", "service", "nacs_engine"], distributions, command=cmd[1:2])
