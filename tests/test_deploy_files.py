"""The Dockerfile and the Kubernetes manifests: linted and schema-checked, and consistent with each
other and with the server's flags.  There is no Docker engine or cluster in CI, so these checks
plus tests/test_deploy_install.py (which runs the Dockerfile's install steps) are what we have."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"  # the oldest release we claim; kubernetes-validate ships its schemas

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")


def _tool(name: str) -> str:
    # the venv's bin first: pytest may run without the venv on PATH
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: it is in the [test] extra (pip install -e '.[test]')")
    return found


# -- Dockerfile -----------------------------------------------------------------------------------
def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def test_hadolint_is_clean():
    out = subprocess.run([_tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_does_catch_mistakes(tmp_path):
    # the control: a linter that passes everything would make the test above worthless
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install poolserve\nCMD poolserve serve\n")
    out = subprocess.run([_tool("hadolint"), str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    for rule in ("DL3006", "DL3013", "DL3025"):  # untagged image, unpinned pip, shell-form CMD
        assert rule in out.stdout, out.stdout


def test_dockerfile_shape():
    ins = _instructions(DOCKERFILE.read_text())
    froms = [args for word, args in ins if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build"), froms  # multi-stage: build, runtime
    # the runtime stage takes the wheel from the build stage and has no compiler
    runtime = ins[[i for i, (w, _) in enumerate(ins) if w == "FROM"][1]:]
    assert any(w == "COPY" and a.startswith("--from=build ") for w, a in runtime)
    assert not any(w == "RUN" and re.search(r"\bgcc\b", a) for w, a in runtime)
    # non-root, numerically (Kubernetes' runAsNonRoot cannot resolve names)
    users = [a for w, a in ins if w == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), users
    assert {"50051", "9464"} <= set(" ".join(a for w, a in ins if w == "EXPOSE").split())
    (health,) = [a for w, a in ins if w == "HEALTHCHECK"]
    assert '["poolserve", "health"' in health  # the gRPC health service, exec form
    # exec form, so that poolserve is PID 1 and receives SIGTERM
    for word in ("ENTRYPOINT", "CMD"):
        (args,) = [a for w, a in ins if w == word]
        assert args.startswith("["), f"{word} {args}"
    # the GPU variant: a build arg choosing the extra that installs onnxruntime-gpu
    assert "EXTRA=server" in [a for w, a in ins if w == "ARG"]
    assert any(w == "RUN" and ".whl)[${EXTRA}]" in a for w, a in ins)  # the wheel by path, never by name


def _server_flags() -> dict[str, argparse.Action]:
    server = pytest.importorskip("poolserve.server", reason="the server (issue 4) is not in this tree yet")
    parser = argparse.ArgumentParser()
    server.add_arguments(parser)
    return {"POOLSERVE_" + a.dest.upper(): a for a in parser._actions if a.dest != "help"}


def _dockerfile_env() -> dict[str, str]:
    env = {}
    for word, args in _instructions(DOCKERFILE.read_text()):
        if word == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", args))
    return env


def test_dockerfile_env_names_real_flags():
    # POOLSERVE_* variables that no flag reads would be silently ignored
    flags = _server_flags()
    for name in _dockerfile_env():
        if name.startswith("POOLSERVE_"):
            assert name in flags, f"Dockerfile sets {name}, which no `poolserve serve` flag reads"


def test_gpu_extra_swaps_onnxruntime():
    # onnxruntime and onnxruntime-gpu install the same module: the gpu extra must not pull both
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {k: {re.split(r"[<>=\[; ]", r)[0] for r in v} for k, v in extras.items()}
    assert "onnxruntime-gpu" in names["gpu"] and "onnxruntime" not in names["gpu"]
    # and it is a whole server otherwise: everything [server] installs but onnxruntime
    assert names["server"] - {"onnxruntime"} <= names["gpu"], names["server"] - names["gpu"]


# -- Kubernetes -----------------------------------------------------------------------------------
def _manifests() -> dict[str, dict]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_manifest_matches_the_kubernetes_schema(path):
    for doc in yaml.safe_load_all(path.read_text()):
        # strict: a misspelt field is an error, not ignored as the API server would
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_schema_check_does_catch_mistakes():
    deployment = _manifests()["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["grpc"]["port"] = "grpc"  # gRPC probes take a number, not a name
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    container["readinessProbe"]["grpc"]["port"] = 50051
    container["resources"]["limit"] = {"cpu": "1"}  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_manifests_fit_together():
    m = _manifests()
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= set(m)
    dep, svc = m["Deployment"], m["Service"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for selector in (svc["spec"]["selector"], m["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items(), selector
    target = m["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"])

    # headless: DNS gives the pod addresses, for the clients' round_robin
    assert svc["spec"]["clusterIP"] == "None"
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 50051, "metrics": 9464}  # the Dockerfile's EXPOSE and defaults
    for p in svc["spec"]["ports"]:
        assert p["targetPort"] in ports and p["port"] == ports[p["targetPort"]]

    # probes ask the gRPC health service; readiness the pooling service itself
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == ports["grpc"], probe
    assert c["readinessProbe"]["grpc"]["service"] == "poolserve.v1.Pooling"
    assert {"cpu", "memory"} <= c["resources"]["requests"].keys() & c["resources"]["limits"].keys()
    assert pod["securityContext"]["runAsNonRoot"] is True

    # the ConfigMap's model file is mounted where POOLSERVE_MODEL_REPOSITORY says
    env = {e["name"]: e for e in c["env"]}
    (mount,) = [v for v in c["volumeMounts"] if v["name"] == "models"]
    (vol,) = [v for v in pod["volumes"] if v["name"] == "models"]
    assert vol["configMap"]["name"] == m["ConfigMap"]["metadata"]["name"]
    path = Path(env["POOLSERVE_MODEL_REPOSITORY"]["value"])
    assert str(path.parent) == mount["mountPath"] and path.name in m["ConfigMap"]["data"]
    assert json.loads(m["ConfigMap"]["data"][path.name])["models"]

    # the pod outlives the server's own shutdown (drain delay + grace) before SIGKILL
    drain = float(env["POOLSERVE_DRAIN_DELAY"]["value"]) + float(env["POOLSERVE_GRACE"]["value"])
    assert pod["terminationGracePeriodSeconds"] > drain


def test_deployment_env_names_real_flags():
    flags = _server_flags()
    (c,) = _manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    oip = importlib.util.find_spec("poolserve.models") is not None
    for e in c["env"]:
        if e["name"] == "POOLSERVE_MODEL_REPOSITORY" and not oip:
            continue  # the OIP API's flag (issue 5), once merged
        if e["name"].startswith("POOLSERVE_"):
            assert e["name"] in flags, f"deployment.yaml sets {e['name']}, which no `poolserve serve` flag reads"
            if "value" in e and flags[e["name"]].type:
                flags[e["name"]].type(e["value"])  # and the value parses as the flag's type


def test_configmap_models_load(tmp_path):
    # the model-repository file in the ConfigMap is one the server accepts
    models = pytest.importorskip("poolserve.models", reason="the OIP API (issue 5) is not in this tree yet")
    cm = _manifests()["ConfigMap"]
    for name, text in cm["data"].items():
        path = tmp_path / name
        path.write_text(text)
        loaded = models.load_repository(path)
        assert set(json.loads(text)["models"]) <= set(loaded), name
