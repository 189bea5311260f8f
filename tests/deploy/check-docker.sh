#!/usr/bin/env bash
# Check deploy/docker/ without a container engine. docker-compose.yml must
# parse and keep its security settings: non-root numeric users, read-only
# root file systems, no capabilities, no privileged mode, and keyd without a
# network and alone with the data volume. The ids and paths must agree
# between docker-compose.yml, Containerfile and
# deploy/examples/metacrypt-docker.toml.
#
# Needs python3 with the yaml module (tomllib is in the standard library from
# Python 3.11); without them it prints a SKIP line and exits 0.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import tomllib, yaml' 2>/dev/null; then
    echo "SKIP: python3 with the yaml and tomllib modules is not available, so deploy/docker/ was not checked"
    exit 0
fi

exec python3 - "$repo" <<'EOF'
import re
import sys
import tomllib
from pathlib import Path

import yaml

repo = Path(sys.argv[1])
failures = 0


def check(condition, message):
    global failures
    if condition:
        print(f"ok: {message}")
    else:
        print(f"FAIL: {message}")
        failures += 1


compose = yaml.safe_load((repo / "deploy/docker/docker-compose.yml").read_text())
config = tomllib.loads((repo / "deploy/examples/metacrypt-docker.toml").read_text())
containerfile = (repo / "deploy/docker/Containerfile").read_text()

services = compose.get("services", {})
check(sorted(services) == ["frontd", "keyd"], f"services are keyd and frontd: {sorted(services)}")
keyd = services.get("keyd", {})
frontd = services.get("frontd", {})


def ids(service):
    user = str(service.get("user", ""))
    match = re.fullmatch(r"(\d+):(\d+)", user)
    return (int(match.group(1)), int(match.group(2))) if match else None


def mounts(service):
    return [str(volume).split(":")[:2] for volume in service.get("volumes", [])]


for name, service in services.items():
    check(ids(service) is not None, f"{name}: user is numeric uid:gid ({service.get('user')!r})")
    check(ids(service) is not None and ids(service)[0] != 0, f"{name}: user is not root")
    check(service.get("read_only") is True, f"{name}: read_only is true")
    check(service.get("cap_drop") == ["ALL"], f"{name}: cap_drop is [ALL]")
    check(not service.get("privileged", False), f"{name}: not privileged")
    check(
        "no-new-privileges:true" in service.get("security_opt", []),
        f"{name}: security_opt has no-new-privileges:true",
    )
    check(not service.get("cap_add"), f"{name}: cap_add is empty")

check(keyd.get("network_mode") == "none", "keyd: network_mode is none")
check(["metacrypt-data", "/srv/metacrypt"] in mounts(keyd), "keyd mounts metacrypt-data on /srv/metacrypt")
check(
    all(source != "metacrypt-data" for source, _ in mounts(frontd)),
    "frontd does not mount metacrypt-data",
)
for name, service in services.items():
    check(["metacrypt-run", "/run/metacrypt"] in mounts(service), f"{name} mounts metacrypt-run on /run/metacrypt")

# keyd drops CAP_IPC_LOCK at start, so only the limit lets it lock keys.
memlock = keyd.get("ulimits", {}).get("memlock")
check(memlock is not None, "keyd: memlock ulimit is set")

# Users in the images and in the compose file.
image_users = dict(re.findall(r"^FROM scratch AS (\w+)\n(?:.*\n)*?USER (\S+)$", containerfile, re.M))
for name, service in services.items():
    check(
        image_users.get(name) == service.get("user"),
        f"{name}: Containerfile USER {image_users.get(name)} matches compose user {service.get('user')}",
    )

# Socket directory: owned by keyd, entered by frontd's supplementary group.
run_options = compose["volumes"]["metacrypt-run"]["driver_opts"]["o"]
options = dict(item.split("=", 1) for item in run_options.split(",") if "=" in item)
keyd_uid, keyd_gid = ids(keyd) or (None, None)
frontd_uid, _ = ids(frontd) or (None, None)
check(options.get("uid") == str(keyd_uid), f"metacrypt-run uid {options.get('uid')} is keyd's uid {keyd_uid}")
check(options.get("gid") == str(keyd_gid), f"metacrypt-run gid {options.get('gid')} is keyd's gid {keyd_gid}")
check(
    str(keyd_gid) in [str(group) for group in frontd.get("group_add", [])],
    f"frontd has keyd's group {keyd_gid} in group_add",
)

# The config used by both containers.
keyd_config = config.get("keyd", {})
check(
    frontd_uid in keyd_config.get("front_allowed_uids", []),
    f"keyd.front_allowed_uids admits frontd's uid {frontd_uid}",
)
check(
    config.get("database", {}).get("path", "").startswith("/srv/metacrypt/"),
    "database.path is in keyd's data volume",
)
for key in ("front_socket", "admin_socket"):
    check(
        keyd_config.get(key, "").startswith("/run/metacrypt/"),
        f"keyd.{key} is in the shared socket volume",
    )
for key in ("tls_cert", "tls_key"):
    check(
        config.get("server", {}).get(key, "").startswith("/etc/metacrypt/certs/"),
        f"server.{key} is in frontd's certificate mount",
    )
check(
    config.get("mcias", {}).get("ca_cert", "").startswith("/etc/metacrypt/certs/"),
    "mcias.ca_cert is set (the image has no CA roots) and in the certificate mount",
)
for name, service in services.items():
    check(
        service.get("command") == ["--config", "/etc/metacrypt/metacrypt.toml"],
        f"{name}: started with --config /etc/metacrypt/metacrypt.toml",
    )
    check(
        ["./metacrypt.toml", "/etc/metacrypt/metacrypt.toml"] in mounts(service),
        f"{name} mounts ./metacrypt.toml",
    )

if failures:
    print(f"{failures} check(s) failed")
    sys.exit(1)
print("all docker checks passed")
EOF
