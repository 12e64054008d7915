"""The Docker files are checked by review and by parsing them here (no Docker engine on CI)."""
import fnmatch
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_has_gpu_server_sim_rig_and_data_volume():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    server, rig = services["server"], services["rig-sim"]
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    assert any(v.split(":")[0] in compose["volumes"] for v in server["volumes"])
    assert server["environment"]["ACTMAX_DATA_DIR"] == "/data"
    weights = server["environment"]["ACTMAX_WEIGHTS_DIR"]
    assert any(v.rsplit(":", 2)[1:] == [weights, "ro"] for v in server["volumes"])  # mounted read-only
    assert rig["command"][:3] == ["actmax", "rig", "sim"]
    endpoint = rig["command"][rig["command"].index("--endpoint") + 1]
    assert endpoint.startswith("tcp://server:")
    # Published ports stay on the host's loopback unless the host's environment says otherwise.
    assert all(_published(p, {}).startswith("127.0.0.1:") for p in server["ports"])


def _published(port: str, environ: dict) -> str:
    """A compose `ports` entry with its ``${NAME:-default}`` interpolated as Compose does from ``environ``."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: environ.get(m[1]) or m[2], port)


def _docker_block(marker: str) -> list[str]:
    """The lines of README's bash block holding ``marker``, without comments."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    block = next(b for b in blocks if marker in b)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_dockerfile_copies_every_package_and_installs_the_console_script():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = [pattern.rstrip("*") for pattern in found["include"]]  # what `pip install .` installs
    assert "server" in packages and "insilico" in packages  # `actmax` imports insilico for `actmax bench`
    for package in packages:
        assert (ROOT / package / "__init__.py").exists()
        assert re.search(rf"^COPY {package} \./{package}$", text, re.M), f"the Dockerfile does not copy {package}"
    assert "gan-face-generate" in text and "--no-deps" in text
    assert 'CMD ["actmax", "serve"]' in text


def test_image_installs_the_extras_it_is_documented_with():
    """Without the biggan extra every BigGAN generator is UNUSABLE in the container, whatever ./weights holds."""
    text = (ROOT / "Dockerfile").read_text()
    extras = re.search(r"pip install --no-cache-dir '\.\[([\w,]+)\]'", text)[1].split(",")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras) <= set(declared) and {"biggan", "reference", "nwb"} <= set(extras)
    assert "`reference`, `nwb` and `biggan` extras" in (ROOT / "README.md").read_text()


def test_cpu_image_takes_the_cpu_build_of_the_dockerfiles_torch():
    """PyPI's torch on Linux is a CUDA build: the CPU set-up builds its image from the CPU wheel index."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    default = re.search(r'^ARG TORCH_SPEC="(torch==[\d.]+)"$', dockerfile, re.M)[1]
    cpu_spec = f"{default} --index-url https://download.pytorch.org/whl/cpu"
    build = _compose("docker-compose.cpu.yml")["services"]["keys"]["build"]
    assert build == {"context": ".", "args": {"TORCH_SPEC": cpu_spec}}
    assert _compose("docker-compose.yml")["services"]["keys"]["build"] == "."  # the service that builds
    (image,) = {s["image"] for s in _compose("docker-compose.cpu.yml")["services"].values()}
    command = f'docker build -t {image} --build-arg TORCH_SPEC="{cpu_spec}" .'
    assert command in dockerfile and command in (ROOT / "README.md").read_text()
    assert "GPU hosts: build with a CUDA torch" not in dockerfile  # the default is one already


def test_compose_publishes_the_rig_port_on_the_lan_only_when_told():
    server = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["server"]
    assert "--zmq-endpoint" in server["command"]  # off loopback inside the container, so CURVE keys (`keys`)
    zmq = [p for p in server["ports"] if p.endswith(":5555")]
    assert [_published(p, {}) for p in zmq] == ["127.0.0.1:5555:5555"]
    assert [_published(p, {"ACTMAX_ZMQ_HOST_IP": "192.168.1.10"}) for p in zmq] == ["192.168.1.10:5555:5555"]
    rest = [p for p in server["ports"] if p.endswith(":8000")]
    assert [_published(p, {"ACTMAX_ZMQ_HOST_IP": "192.168.1.10"}) for p in rest] == ["127.0.0.1:8000:8000"]
    assert "ACTMAX_ZMQ_HOST_IP" in (ROOT / "README.md").read_text()


def test_readme_gets_a_lan_rigs_keys_from_where_the_container_keeps_them(tmp_path, monkeypatch):
    """README's commands for a rig on another machine, run against a data folder as the server's /data."""
    from server.cli import main

    server = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["server"]
    data_dir = server["environment"]["ACTMAX_DATA_DIR"]
    assert "ACTMAX_KEYS_DIR" not in server["environment"]
    monkeypatch.setenv("ACTMAX_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("ACTMAX_KEYS_DIR", raising=False)
    assert main(["keys", "init"]) == 0  # what the `keys` service does at each `up`
    lines = _docker_block("docker compose exec server actmax keys rig")
    prefix = "docker compose exec server "
    issue = next(line for line in lines if line.startswith(prefix + "actmax keys rig "))
    rig = issue.split()[-1]
    assert main(issue.removeprefix(prefix + "actmax ").split()) == 0
    copied = [line.split()[3] for line in lines if line.startswith("docker compose cp server:")]
    assert len(copied) == 2
    on_host = [Path(tmp_path, Path(path.removeprefix("server:")).relative_to(data_dir)) for path in copied]
    assert all(path.is_file() for path in on_host), copied
    removed = next(line for line in lines if line.startswith(prefix + "rm "))
    assert removed.split()[-1] == next(path for path in copied if path.endswith(".key_secret")).removeprefix("server:")
    sim = next(line.split() for line in lines if line.startswith("actmax rig sim "))
    assert sim[sim.index("--rig") + 1] == rig
    assert {sim[sim.index("--server-key") + 1], sim[sim.index("--rig-key") + 1]} == {p.name for p in on_host}
    address = next(line.split("=")[1] for line in lines if line.startswith("export ACTMAX_ZMQ_HOST_IP="))
    assert sim[sim.index("--endpoint") + 1] == f"tcp://{address}:5555"


def test_image_runs_as_a_non_root_user():
    users = re.findall(r"^USER (\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert users and users[-1] not in ("root", "0")


def test_compose_rigs_use_curve_keys_that_the_keys_service_makes():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    keys, server, rig = services["keys"], services["server"], services["rig-sim"]
    assert "build" in keys and server["depends_on"]["keys"]["condition"] == "service_completed_successfully"
    for name in ("server", "rig-sim"):  # the image is built here, never pulled from a registry
        assert services[name]["image"] == keys["image"] and services[name].get("pull_policy") == "never"
    made = keys["command"][-1]
    assert "actmax keys init" in made and "actmax keys rig sim" in made
    command = rig["command"]
    assert command[command.index("--rig-key") + 1] == "/rig-keys/sim.key_secret"
    assert command[command.index("--server-key") + 1] == "/rig-keys/server.key"
    assert command[command.index("--rig") + 1] == "sim"
    # The rig's keys travel on a volume of their own, which the keys service fills and the rig reads.
    assert "sim-rig-keys:/rig-keys" in keys["volumes"] and rig["volumes"] == ["sim-rig-keys:/rig-keys:ro"]
    assert "mv /data/keys/issued/sim.key_secret /rig-keys/sim.key_secret" in made  # not left on the server
    assert "cp /data/keys/server.key /rig-keys/server.key" in made


def test_compose_rig_cannot_read_the_servers_data():
    """The rig container mounts none of the server's volumes: not its secret key, rig secrets or database."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    server, rig = compose["services"]["server"], compose["services"]["rig-sim"]
    server_volumes = {v.split(":")[0] for v in server["volumes"]}
    assert "actmax-data" in server_volumes
    assert not server_volumes & {v.split(":")[0] for v in rig["volumes"]}
    assert "/rig-keys" in (ROOT / "Dockerfile").read_text()  # made owned by the image's user, as /data is


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    commands = [line.split("#")[0].strip() for line in readme[:5] if line.startswith("make ")]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_docs_name_no_file_outside_the_repository():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = doc.read_text()
        assert not re.search(r"(?<![\w/])spec/|\.\./shared|/work/", text), f"{doc.name} points outside the repository"


class _Reset:
    """Compose's ``!reset`` tag: the attribute is removed from the merged model."""


def _compose(name: str) -> dict:
    loader = type("ComposeLoader", (yaml.SafeLoader,), {})
    loader.add_constructor("!reset", lambda loader, node: _Reset)
    return yaml.load((ROOT / name).read_text(), Loader=loader)


def test_cpu_override_runs_the_server_without_a_gpu():
    base, cpu = _compose("docker-compose.yml"), _compose("docker-compose.cpu.yml")
    assert set(cpu["services"]) == set(base["services"])
    assert set(cpu["services"]["keys"]) == {"build", "image"}  # the CPU torch (test_cpu_image_takes_the_cpu_build...)
    assert set(cpu["services"]["rig-sim"]) == {"image"}  # else as in the base file
    # Each set-up runs the one image its keys service builds, and the two are tagged apart: a GPU `up` after a
    # CPU build would otherwise run the CPU torch with ACTMAX_DEVICE=cuda.
    gpu_images = {service["image"] for service in base["services"].values()}
    cpu_images = {service["image"] for service in cpu["services"].values()}  # each one overrides the base's
    assert len(gpu_images) == len(cpu_images) == 1 and gpu_images != cpu_images
    server = cpu["services"]["server"]
    assert server["deploy"] is _Reset and "deploy" in base["services"]["server"]  # no GPU reservation left
    assert server["environment"] == {"ACTMAX_DEVICE": "cpu"}  # merged over the base's cuda
    usage = "docker compose -f docker-compose.yml -f docker-compose.cpu.yml up --build"
    readme = (ROOT / "README.md").read_text()
    assert usage in (ROOT / "docker-compose.cpu.yml").read_text() and usage in readme
    assert "NVIDIA Container Toolkit" in readme


def test_dockerignore_keeps_environments_data_and_keys_out_of_the_build_context():
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    for needed in (".git", ".venv", "actmax-data*", "keys", "**/*.key_secret", "test-artifacts", "*.whl"):
        assert needed in patterns
    copied = re.findall(r"^COPY (.+) \S+$", (ROOT / "Dockerfile").read_text(), re.M)
    sources = [ROOT / name for line in copied for name in line.split()]
    files = [f for s in sources for f in ([s] if s.is_file() else s.rglob("*.py"))]
    assert len(files) > 20
    for path in files:  # nothing the image needs is left out (fnmatch's * also crosses "/": stricter)
        relative = path.relative_to(ROOT).as_posix()
        parts = [relative.rsplit("/", n)[0] for n in range(relative.count("/") + 1)]  # the file and its folders
        assert not [p for p in patterns for part in parts
                    if fnmatch.fnmatch(part, p) or fnmatch.fnmatch(part, p.removeprefix("**/"))], relative


def test_dockerfile_copies_every_file_the_build_reads():
    """pyproject.toml's readme and license files: without one, `pip install .` in the image warns that setuptools
    releases after 2027-02-18 will refuse to build."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    copied = [name for line in re.findall(r"^COPY (.+) \S+$", (ROOT / "Dockerfile").read_text(), re.M)
              for name in line.split()]
    for name in (project["readme"], *project["license-files"]):
        assert (ROOT / name).is_file() and name in copied, f"the Dockerfile does not copy {name}"
