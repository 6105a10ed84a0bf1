#!/usr/bin/env python3
"""Static checks of the deployment files that no installed tool covers (run by .ci/run).

No Docker engine runs in CI, so `docker compose config` is not available. This checks:

- deploy/docker-compose.yaml: YAML parses; known top-level and service keys only (catches typos
  that compose would reject); every service has an image or a build whose context holds the
  Dockerfile; ports, healthchecks, depends_on (targets exist, service_healthy targets have a
  healthcheck), and commands are gateway subcommands.
- every SFGW_* variable in the compose file and in deploy/kubernetes/*.yaml names a real setting
  of src/config.rs: the gateway refuses to start on an unknown one.
- the shutdown budget: Kubernetes' terminationGracePeriodSeconds and compose's stop_grace_period
  leave room for the preStop sleep plus the drain (at most 1.5 x drain_timeout + 1 s, see
  src/app.rs), so the drain is never cut short by SIGKILL.

Usage: check_deploy.py [REPO_ROOT]   (default: the parent of this file's folder)
"""

import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent)
COMPOSE = ROOT / "deploy" / "docker-compose.yaml"
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
CONFIG_RS = ROOT / "src" / "config.rs"

TOP_LEVEL_KEYS = {"version", "name", "include", "services", "networks", "volumes", "secrets", "configs", "models"}
# Compose service keys (the Compose Specification's service properties).
SERVICE_KEYS = {
    "annotations", "attach", "build", "blkio_config", "cap_add", "cap_drop", "cgroup", "cgroup_parent",
    "command", "configs", "container_name", "cpu_count", "cpu_percent", "cpu_shares", "cpu_quota",
    "cpu_period", "cpu_rt_period", "cpu_rt_runtime", "cpus", "cpuset", "credential_spec", "depends_on",
    "deploy", "develop", "device_cgroup_rules", "devices", "dns", "dns_opt", "dns_search", "domainname",
    "entrypoint", "env_file", "environment", "expose", "extends", "external_links", "extra_hosts",
    "gpus", "group_add", "healthcheck", "hostname", "image", "init", "ipc", "isolation", "label_file",
    "labels", "links", "logging", "mac_address", "mem_limit", "mem_reservation", "mem_swappiness",
    "memswap_limit", "models", "network_mode", "networks", "oom_kill_disable", "oom_score_adj", "pid",
    "pids_limit", "platform", "ports", "post_start", "pre_stop", "privileged", "profiles", "provider",
    "pull_policy", "pull_refresh_after", "read_only", "restart", "runtime", "scale", "secrets",
    "security_opt", "shm_size", "stdin_open", "stop_grace_period", "stop_signal", "storage_opt",
    "sysctls", "tmpfs", "tty", "ulimits", "use_api_socket", "user", "userns_mode", "uts", "volumes",
    "volumes_from", "working_dir",
}
BUILD_KEYS = {
    "context", "dockerfile", "dockerfile_inline", "args", "ssh", "labels", "cache_from", "cache_to",
    "no_cache", "additional_contexts", "network", "pull", "target", "shm_size", "extra_hosts",
    "isolation", "privileged", "secrets", "tags", "ulimits", "platforms", "entitlements",
}
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
SUBCOMMANDS = {"serve", "simulate"}
DURATION = re.compile(r"^(\d+(\.\d+)?(us|ms|s|m|h))+$")
PORT = re.compile(r"^((\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):)?(\d+(-\d+)?:)?\d+(-\d+)?(/(tcp|udp))?$")

problems = []


def problem(where, text):
    problems.append(f"{where}: {text}")


def seconds(text):
    """A duration as compose and humantime write them ('1m30s', '10s', '500ms'), in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    text = str(text).strip()
    if re.fullmatch(r"\d+", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(us|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def settings_tree():
    """{struct name: {field: type}} of the settings structs: src/config.rs's, and those a module
    owns in its settings.rs (composed into config.rs as one field, e.g. `cluster`)."""
    sources = [CONFIG_RS.read_text()] + [p.read_text() for p in sorted((ROOT / "src").glob("*/settings.rs"))]
    structs = {}
    for source in sources:
        for name, body in re.findall(r"pub struct (\w+) \{(.*?)\n\}", source, re.S):
            fields = re.findall(r"^\s*pub (\w+): ([^,]+),", body, re.M)
            # `crate::cluster::ClusterSettings` → `ClusterSettings`.
            structs[name] = {field: kind.strip().split("::")[-1] for field, kind in fields}
    if "Settings" not in structs:
        sys.exit(f"check_deploy: no `pub struct Settings` in {CONFIG_RS}")
    return structs


STRUCTS = settings_tree()


def check_env_name(where, name):
    if not name.startswith("SFGW_") or name == "SFGW_CONFIG":
        return
    path = name[len("SFGW_"):].lower().split("__")
    struct = "Settings"
    for depth, key in enumerate(path):
        fields = STRUCTS.get(struct)
        if fields is None or key not in fields:
            problem(where, f"{name}: no setting {'.'.join(path[: depth + 1])} in src/config.rs "
                           "(the gateway refuses unknown SFGW_* variables)")
            return
        struct = fields[key].strip()
    if struct in STRUCTS:
        problem(where, f"{name}: {'.'.join(path)} is a section, not a setting")


def env_value(env, name, default=None):
    return env.get(name, default)


def drain_budget(env):
    """Longest graceful exit for these settings: drain_timeout (hub) + 1 s, then drain_timeout / 2
    for the upstream sockets (src/app.rs)."""
    drain = seconds(env_value(env, "SFGW_DRAIN_TIMEOUT", "10s"))
    return 1.5 * drain + 1


def check_compose():
    where = COMPOSE.relative_to(ROOT)
    doc = yaml.safe_load(COMPOSE.read_text())
    if not isinstance(doc, dict):
        problem(where, "not a mapping")
        return
    for key in doc:
        if key not in TOP_LEVEL_KEYS and not key.startswith("x-"):
            problem(where, f"unknown top-level key {key!r}")
    services = doc.get("services")
    if not isinstance(services, dict) or not services:
        problem(where, "no services")
        return
    for name, svc in services.items():
        at = f"{where}: services.{name}"
        if not re.fullmatch(r"[a-zA-Z0-9._-]+", name):
            problem(at, "invalid service name")
        if not isinstance(svc, dict):
            problem(at, "not a mapping")
            continue
        for key in svc:
            if key not in SERVICE_KEYS and not key.startswith("x-"):
                problem(at, f"unknown key {key!r}")
        if "image" not in svc and "build" not in svc:
            problem(at, "neither image nor build")
        build = svc.get("build")
        if build is not None:
            build = {"context": build} if isinstance(build, str) else build
            for key in build:
                if key not in BUILD_KEYS and not key.startswith("x-"):
                    problem(at, f"unknown build key {key!r}")
            context = (COMPOSE.parent / build.get("context", ".")).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                problem(at, f"build: {dockerfile} does not exist")
        for port in svc.get("ports", []):
            if not isinstance(port, str) or not PORT.match(port):
                problem(at, f"port {port!r}: write it as a quoted \"[ip:]host:container\" string")
        health = svc.get("healthcheck")
        if health is not None:
            for key in health:
                if key not in HEALTHCHECK_KEYS:
                    problem(at, f"unknown healthcheck key {key!r}")
            test = health.get("test")
            if not (isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL", "NONE")) and not isinstance(test, str):
                problem(at, "healthcheck.test: a list starting with CMD, CMD-SHELL or NONE, or a string")
            for key in ("interval", "timeout", "start_period", "start_interval"):
                if key in health and not DURATION.match(str(health[key])):
                    problem(at, f"healthcheck.{key}: {health[key]!r} is not a duration")
            if "retries" in health and not isinstance(health["retries"], int):
                problem(at, "healthcheck.retries: not an integer")
        depends = svc.get("depends_on", {})
        for target in depends:
            if target not in services:
                problem(at, f"depends_on {target!r}: no such service")
                continue
            condition = depends[target].get("condition") if isinstance(depends, dict) else None
            if isinstance(depends, dict) and condition not in DEPENDS_CONDITIONS:
                problem(at, f"depends_on {target!r}: condition {condition!r}")
            if condition == "service_healthy" and "healthcheck" not in services[target]:
                problem(at, f"depends_on {target!r} is service_healthy but {target} has no healthcheck here "
                            "(the image's own HEALTHCHECK probes the gateway port)")
        command = svc.get("command")
        # Services of other images (Redis, a proxy) run their own commands and shutdowns.
        gateway_image = "build" in svc or str(svc.get("image", "")).startswith("signalflow-gateway")
        words = []
        if command is not None:
            words = command.split() if isinstance(command, str) else command
        if command is not None and gateway_image:
            if not words or words[0] not in SUBCOMMANDS:
                problem(at, f"command {command!r}: not a signalflow-gateway subcommand {sorted(SUBCOMMANDS)}")
        env = svc.get("environment", {})
        if isinstance(env, list):
            env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
        for var in env:
            check_env_name(at, var)
        runs_gateway = gateway_image and (command is None or (words and words[0] == "serve"))
        if runs_gateway:
            budget = drain_budget(env)
            grace = seconds(svc.get("stop_grace_period", "10s"))
            if grace <= budget:
                problem(at, f"stop_grace_period {grace:g}s <= the drain's {budget:g}s (1.5 x drain_timeout + 1 s)")


def pod_specs(doc):
    kind = doc.get("kind")
    if kind == "Pod":
        yield doc.get("spec", {})
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield doc.get("spec", {}).get("template", {}).get("spec", {})
    elif kind == "CronJob":
        yield doc.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})


def check_manifests():
    for path in MANIFESTS:
        where = path.relative_to(ROOT)
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            for spec in pod_specs(doc):
                at = f"{where}: {doc['kind']}/{doc['metadata']['name']}"
                grace = spec.get("terminationGracePeriodSeconds", 30)
                for c in spec.get("initContainers", []) + spec.get("containers", []):
                    env = {e["name"]: e.get("value") for e in c.get("env", [])}
                    for name in env:
                        check_env_name(f"{at} container {c['name']}", name)
                    if not any(n.startswith("SFGW_") for n in env):
                        continue
                    exec_cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
                    pre_stop = seconds(exec_cmd[1]) if exec_cmd[:1] == ["sleep"] and len(exec_cmd) == 2 else 0
                    budget = pre_stop + drain_budget({k: v for k, v in env.items() if v is not None})
                    if grace <= budget:
                        problem(at, f"terminationGracePeriodSeconds {grace} <= preStop {pre_stop:g}s + drain "
                                    f"{budget - pre_stop:g}s (1.5 x drain_timeout + 1 s)")


check_compose()
check_manifests()
if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"check_deploy: {COMPOSE.relative_to(ROOT)} and {len(MANIFESTS)} Kubernetes manifests are consistent")
