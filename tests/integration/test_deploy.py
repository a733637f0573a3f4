"""The deployment files: compose.yaml's structure, and its services' commands run for real.

No Docker here: compose.yaml is read with PyYAML, and the web, worker and beat services are
started exactly as it gives them (only the bind address and the beat schedule file moved)
in this virtual environment, against the test's database and broker, then checked with the
health checks compose.yaml declares. The Dockerfile's collectstatic step runs as written.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from contextlib import contextmanager
from email.message import Message
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
import pytest
import yaml
from django.conf import settings

from config.celery import app as celery_app
from tests.integration.conftest import database_url_for_worker, wait_for_line

ROOT = Path(settings.BASE_DIR)
COMPOSE_TEXT = (ROOT / "compose.yaml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
KEEL = ("setup", "web", "worker", "beat", "worker-gpu", "flower")  # run Keel's image
DOCKERFILE = (ROOT / "Dockerfile").read_text()
BIN = Path(sys.executable).parent
PUBLIC_HOST = "keel.example.com"
SECRETS = {"KEEL_SECRET_KEY": "test-only-" + "k" * 50, "POSTGRES_PASSWORD": "pw0123"}


# --- compose.yaml as compose reads it --------------------------------------------------------

INNERMOST = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^${}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error} (defaults may nest)
    and $$ for a literal $. A missing required variable raises LookupError."""

    def one(match: re.Match) -> str:
        name, op, arg = match[1], match[2], match[3] or ""
        value = env.get(name)
        if op in (":?", "?"):
            if value is None or (op == ":?" and value == ""):
                raise LookupError(f"{name}: {arg}")
            return value
        if op == ":-":
            return value or arg
        if op == "-":
            return arg if value is None else value
        return value or ""

    text = text.replace("$$", "\0")
    while (resolved := INNERMOST.sub(one, text)) != text:
        text = resolved
    return text.replace("\0", "$")


def service_env(name: str, env: dict[str, str]) -> dict[str, str]:
    return {k: interpolate(str(v), env) for k, v in SERVICES[name]["environment"].items()}


def mounts(name: str) -> dict[str, tuple[str, str]]:
    """target -> (source, mode) of a service's volumes."""
    found = {}
    for volume in SERVICES[name].get("volumes", []):
        source, target, *mode = volume.split(":")
        found[target] = (source, mode[0] if mode else "rw")
    return found


def dockerfile_env(name: str) -> str:
    return re.search(rf"\b{name}=(\S+)", DOCKERFILE)[1]


# --- Structure ---------------------------------------------------------------------------------


def test_every_service_has_a_health_check_or_runs_once():
    waited_on = {
        dep
        for service in SERVICES.values()
        for dep, cond in (service.get("depends_on") or {}).items()
        if cond["condition"] == "service_completed_successfully"
    }
    for name, service in SERVICES.items():
        if service.get("restart") == "no":  # a one-shot job: others wait for it to finish
            assert name in waited_on, f"{name} runs once but nothing waits for it"
            continue
        test = (service.get("healthcheck") or {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
        assert service["restart"] == "unless-stopped", name
    assert waited_on == {"setup"}
    assert SERVICES["setup"]["command"][-1] == (
        "python manage.py migrate --no-input && python manage.py keel_setup"
    )


def test_keel_services_share_one_image_build():
    web = SERVICES["web"]
    assert web["build"] == {"context": "."} and web["image"] == "keel:cpu"
    for name in ("setup", "worker", "beat", "flower"):
        assert (SERVICES[name]["image"], SERVICES[name]["build"]) == (web["image"], web["build"])
    gpu = SERVICES["worker-gpu"]
    assert gpu["image"] != web["image"] and gpu["build"]["context"] == "."
    assert gpu["build"]["args"]["TORCH_INDEX"].startswith("https://download.pytorch.org/whl/cu")
    for arg in gpu["build"]["args"]:
        assert re.search(rf"^ARG {arg}=", DOCKERFILE, re.M), f"the Dockerfile has no ARG {arg}"
    assert gpu["command"] == SERVICES["worker"]["command"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    ]
    assert (gpu["profiles"], SERVICES["flower"]["profiles"]) == (["gpu"], ["monitor"])
    for name in set(SERVICES) - {"worker-gpu", "flower"}:
        assert "profiles" not in SERVICES[name], f"{name} must start with a plain `up`"


def test_volumes_are_declared_and_hold_data_and_checkpoints():
    named = {
        source
        for name in SERVICES
        for source, _ in mounts(name).values()
        if not source.startswith((".", "/"))
    }
    assert named == set(COMPOSE["volumes"]) == {"keel-data", "postgres-data", "redis-data"}
    data_dir = dockerfile_env("KEEL_DATA_DIR")
    assert data_dir == "/var/lib/keel"
    for name in KEEL:
        assert mounts(name)[data_dir] == ("keel-data", "rw"), name
        assert mounts(name)["/checkpoints"] == ("./checkpoints", "ro"), name
        roots = service_env(name, SECRETS)["KEEL_CHECKPOINT_ROOTS"].split(",")
        # keel_setup converts the default model into KEEL_MODELS_DIR and training writes
        # variants under the first root: both must be the data volume's models folder.
        assert settings.KEEL_MODELS_DIR == settings.KEEL_DATA_DIR / "models"
        assert roots == [f"{data_dir}/models", "/checkpoints"], name
    assert mounts("postgres")["/var/lib/postgresql/data"][0] == "postgres-data"
    assert mounts("redis")["/data"][0] == "redis-data"
    redis = SERVICES["redis"]["command"]
    assert redis[redis.index("--appendonly") + 1] == "yes"  # queued tasks survive a restart


def test_services_wait_for_what_they_need():
    ready = {
        "setup": {"condition": "service_completed_successfully"},
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    for name in ("web", "worker", "beat", "worker-gpu"):
        assert SERVICES[name]["depends_on"] == ready, name
    for name, service in SERVICES.items():
        for dep, cond in (service.get("depends_on") or {}).items():
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[dep], f"{name} waits for {dep}'s health"


def test_environment_is_what_settings_read():
    source = (ROOT / "config" / "settings.py").read_text()
    for name in KEEL:
        env = service_env(name, SECRETS)
        for variable in env:
            if variable.startswith("KEEL_"):
                assert f'"{variable}"' in source, f"{name}: settings.py never reads {variable}"
        db = dj_database_url.parse(env["DATABASE_URL"])
        postgres = SERVICES["postgres"]["environment"]
        assert (db["HOST"], db["PORT"], db["USER"], db["NAME"]) == (
            "postgres", 5432, postgres["POSTGRES_USER"], postgres["POSTGRES_DB"]
        )  # fmt: skip
        assert db["PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
        assert urlsplit(env["REDIS_URL"]).hostname == "redis"
        assert env["KEEL_SECRET_KEY"] == SECRETS["KEEL_SECRET_KEY"]
    assert service_env("worker", SECRETS)["KEEL_WORKER_DEVICES"] == "cpu"
    assert service_env("worker-gpu", SECRETS)["KEEL_WORKER_DEVICES"] == "cuda:0"
    # Another host's worker points DATABASE_URL and REDIS_URL at the main host.
    remote = service_env(
        "worker-gpu",
        SECRETS | {"DATABASE_URL": "postgres://keel:x@10.0.0.5:5432/keel", "REDIS_URL": "r"},
    )
    assert (remote["DATABASE_URL"], remote["REDIS_URL"]) == (
        "postgres://keel:x@10.0.0.5:5432/keel", "r"
    )  # fmt: skip
    with pytest.raises(LookupError, match="KEEL_SECRET_KEY: set KEEL_SECRET_KEY in .env"):
        service_env("web", {"POSTGRES_PASSWORD": "pw"})


def test_env_example_names_every_variable_compose_reads():
    example = (ROOT / ".env.example").read_text()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE_TEXT))
    assert required == {"KEEL_SECRET_KEY", "POSTGRES_PASSWORD"}
    for variable in required:
        assert re.search(rf"^{variable}=$", example, re.M), f"{variable} is not in .env.example"
    for variable in set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_TEXT)):
        assert re.search(rf"^(# )?{variable}=", example, re.M), f".env.example lacks {variable}"


def test_worker_and_beat_commands_match_their_health_checks():
    command = SERVICES["worker"]["command"]
    assert command == ["python", "manage.py", "worker", "--queues", "evaluate,train"]
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    assert set(command[-1].split(",")) == routed
    # manage.py worker names its node NAME@%h, NAME keel unless --name says otherwise; the
    # check pings keel@ on this host.
    from gpu_tasks.management.commands.worker import Command

    assert Command().create_parser("manage.py", "worker").parse_args([]).name == "keel"
    worker_source = (ROOT / "gpu_tasks" / "management" / "commands" / "worker.py").read_text()
    assert '"--hostname", f"{options[\'name\']}@%h"' in worker_source
    assert "--destination keel@$$HOSTNAME" in SERVICES["worker"]["healthcheck"]["test"][1]
    beat = SERVICES["beat"]["command"]
    assert beat[:4] == ["celery", "-A", "config", "beat"] and "--enable-remote-control" in beat
    assert beat[beat.index("--schedule") + 1].startswith(dockerfile_env("KEEL_DATA_DIR") + "/")
    assert "--destination celerybeat@$$HOSTNAME" in SERVICES["beat"]["healthcheck"]["test"][1]


def test_flower_refuses_to_start_without_a_password():
    env = service_env("flower", SECRETS)
    assert env["FLOWER_BASIC_AUTH"] == ""  # unset in .env: Flower would be open to anyone
    script = SERVICES["flower"]["command"][2].replace("$$", "$")
    result = subprocess.run(
        ["sh", "-c", script], env=os.environ | env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "Set FLOWER_BASIC_AUTH=user:password in .env to start Flower."
    assert SERVICES["flower"]["ports"] == ["127.0.0.1:5555:5555"]


def test_dockerfile_and_dockerignore():
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm\nFROM ${BASE_IMAGE}" in DOCKERFILE
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in DOCKERFILE
    # torch and the data packages come from keel.py's own pins, so the two cannot drift
    assert "keel.TORCH" in DOCKERFILE and "keel.DATA_PACKAGES" in DOCKERFILE
    assert re.search(r"^USER keel$", DOCKERFILE, re.M)
    assert re.search(r"^EXPOSE 8000$", DOCKERFILE, re.M)
    assert "0.0.0.0:8000" in SERVICES["web"]["command"]
    healthcheck = r'^HEALTHCHECK .*\n\s+CMD \["python", "-m", "config.health"\]'
    assert re.search(healthcheck, DOCKERFILE, re.M)
    assert SERVICES["web"]["healthcheck"]["test"] == ["CMD", "python", "-m", "config.health"]
    assert dockerfile_env("KEEL_STATIC_ROOT") == "/app/staticfiles"
    # .dockerignore is an allowlist: everything out, then what the image needs back in.
    rules = [r for r in (ROOT / ".dockerignore").read_text().split("\n") if r and r[0] != "#"]
    assert rules[0] == "*" and "**/__pycache__" in rules
    allowed = {r[1:] for r in rules if r.startswith("!")}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    needed = {"static", "templates", "manage.py", "keel.py", "pyproject.toml"}
    assert allowed == packages | needed | {pyproject["project"]["readme"]}
    for path in allowed:
        assert (ROOT / path).exists(), path


# --- Running the services ----------------------------------------------------------------------


def dockerfile_collectstatic(static_root: Path, build_dir: Path) -> subprocess.CompletedProcess:
    """The Dockerfile's collectstatic RUN step, as written, with its folders moved here."""
    step = re.search(
        r"^RUN (KEEL_SECRET_KEY=\S+ KEEL_DATA_DIR=.*?)\n(?=\S|$)", DOCKERFILE, re.M | re.S
    )
    script = step[1].replace("\\\n", " ")
    script = script.replace(re.search(r"KEEL_DATA_DIR=(\S+)", script)[1], str(build_dir))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env |= {"KEEL_STATIC_ROOT": str(static_root), "PATH": f"{BIN}:{env['PATH']}"}
    return subprocess.run(
        ["sh", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def static_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("static")
    build_dir = tmp_path_factory.mktemp("build") / "keel-build"
    result = dockerfile_collectstatic(root, build_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not build_dir.exists(), "the build's throwaway data folder (and secret) is left"
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free once closed: a closed port when nothing binds it


def served_env(static_root: Path | None = None, **overrides: str) -> dict[str, str]:
    """compose.yaml's web environment, with this test's database, broker, folders and a
    public host behind TLS, as in production."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env |= service_env("web", SECRETS)
    env |= {
        "DATABASE_URL": database_url_for_worker(),
        "KEEL_DATA_DIR": str(settings.KEEL_DATA_DIR),
        "KEEL_CHECKPOINT_ROOTS": ",".join(str(p) for p in settings.KEEL_CHECKPOINT_ROOTS),
        "KEEL_ALLOWED_HOSTS": PUBLIC_HOST,
        "KEEL_HTTPS": "1",
        "WEB_CONCURRENCY": "1",
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "HOSTNAME": socket.gethostname(),  # as in a container, for the checks' $HOSTNAME
    }
    if static_root:
        env["KEEL_STATIC_ROOT"] = str(static_root)
    if settings.REDIS_URL:
        env["REDIS_URL"] = settings.REDIS_URL
    else:
        del env["REDIS_URL"]  # embedded: the filesystem broker under KEEL_DATA_DIR
    return env | overrides


def request(port: int, path: str, https: bool = True) -> tuple[int, Message | dict, bytes]:
    """GET as the TLS proxy in front would send it; status 0 when nothing answers."""
    headers = {"Host": PUBLIC_HOST} | ({"X-Forwarded-Proto": "https"} if https else {})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)  # the first loads torch
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    except OSError as exc:
        return 0, {}, str(exc).encode()
    finally:
        conn.close()


def as_here(argv: list[str]) -> list[str]:
    """A compose command run in this virtual environment."""
    return [str(BIN / argv[0]) if (BIN / argv[0]).exists() else argv[0], *argv[1:]]


@contextmanager
def started(argv: list[str], env: dict[str, str], log_path: Path):
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            as_here(argv), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # its own group, started above
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextmanager
def web_server(env: dict[str, str], log_path: Path):
    """compose.yaml's web command, bound to a free loopback port instead of 0.0.0.0:8000."""
    port = free_port()
    argv = list(SERVICES["web"]["command"])
    argv[argv.index("0.0.0.0:8000")] = f"127.0.0.1:{port}"
    with started(argv, env, log_path) as process:
        deadline = time.monotonic() + 120
        while request(port, "/healthz")[0] == 0:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the web server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield port


def health_check(service: str, env: dict[str, str], url: str = "") -> subprocess.CompletedProcess:
    """The service's compose health check, run here ($$ is compose's escape for $)."""
    test = SERVICES[service]["healthcheck"]["test"]
    if test[0] == "CMD-SHELL":
        argv = ["sh", "-c", test[1].replace("$$", "$")]
    else:
        argv = [sys.executable if test[1] == "python" else test[1], *test[2:]]
        argv += [url] if url else []
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.integration
def test_web_serves_as_compose_runs_it(transactional_db, static_root, tmp_path):
    env = served_env(static_root)
    with web_server(env, tmp_path / "web.log") as port:
        status, _, body = request(port, "/healthz")
        assert status == 200, body
        assert json.loads(body) == {
            "database": "ok", "broker": "ok", "version": settings.KEEL_VERSION
        }  # fmt: skip
        status, _, body = request(port, "/login/")
        assert status == 200 and b'name="csrfmiddlewaretoken"' in body
        status, headers, body = request(port, "/static/css/keel.css")
        assert status == 200 and headers["Content-Type"].startswith("text/css")
        assert body == (static_root / "css" / "keel.css").read_bytes()
        # Without the proxy's header Keel sends plain http to https, so the container's own
        # health check has to say the request came through TLS.
        status, headers, _ = request(port, "/healthz", https=False)
        assert status == 301 and headers["Location"] == f"https://{PUBLIC_HOST}/healthz"
        check = health_check("web", env, f"http://127.0.0.1:{port}/healthz")
        assert check.returncode == 0, check.stderr


@pytest.mark.integration
def test_web_health_is_503_naming_the_broker_when_redis_is_down(
    transactional_db, static_root, tmp_path
):
    closed = free_port()
    env = served_env(static_root, REDIS_URL=f"redis://127.0.0.1:{closed}/0")
    with web_server(env, tmp_path / "web.log") as port:
        status, _, body = request(port, "/healthz")
        assert status == 503, body
        answer = json.loads(body)
        assert (answer["database"], answer["broker"]) == ("ok", "error")
        assert f"127.0.0.1:{closed}" in answer["errors"]["broker"]
        check = health_check("web", env, f"http://127.0.0.1:{port}/healthz")
        assert check.returncode == 1 and "unhealthy (503)" in check.stderr


needs_redis = pytest.mark.skipif(
    not settings.REDIS_URL,
    reason="worker and beat answer pings over Redis; the filesystem broker has no broadcast "
    "(set REDIS_URL to run this)",
)


@pytest.mark.integration
@needs_redis
def test_worker_answers_its_health_check(transactional_db, tmp_path):
    celery_app.control.purge()  # nothing left from earlier runs for it to take
    env = served_env(KEEL_WORKER_DEVICES="cpu", KEEL_DTYPE="float32")
    log = tmp_path / "worker.log"
    with started(SERVICES["worker"]["command"], env, log) as process:
        wait_for_line(log, "ready.", process, seconds=120)
        assert f"keel@{socket.gethostname()}" in log.read_text()
        check = health_check("worker", env)
        assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.integration
@needs_redis
def test_beat_answers_its_health_check(transactional_db, tmp_path):
    env = served_env()
    argv = list(SERVICES["beat"]["command"])
    argv[argv.index("--schedule") + 1] = str(tmp_path / "celerybeat-schedule")
    log = tmp_path / "beat.log"
    with started(argv, env, log) as process:
        wait_for_line(log, "beat pidbox: Connected", process, seconds=60)
        check = health_check("beat", env)
        assert check.returncode == 0, check.stdout + check.stderr
    celery_app.control.purge()  # beat may have queued a reap for no one
