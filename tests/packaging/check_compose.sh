#!/usr/bin/env bash
# check_compose.sh SOURCE_DIR [COMPOSE_FILE] - validates a compose file of
# docker/ (default docker/docker-compose.yml; ctest also runs it on
# docker/docker-compose.cluster.yml) without a Docker engine (ctest -L
# packaging). Services are told apart by image: eclipse-mosquitto:*,
# rabbitmq:*, and the bridges (mqtt2amqp:* or built from docker/Dockerfile).
#  1. Debian's docker-compose accepts it: `docker-compose config -q`;
#  2. every file it bind-mounts and the Dockerfile it builds exist; every
#     broker has a healthcheck and every bridge waits for all of them to be
#     healthy;
#  3. the environment each bridge gets is what its config (the file mounted
#     at /etc/mqtt2amqp/mqtt2amqp.yaml) reads (${VAR}), and that config passes
#     `mqtt2amqp --check` with that environment plus HOSTNAME (Docker sets it
#     to the service's hostname) when MQTT2AMQP_BIN names the binary;
#  4. docker/rabbitmq/definitions.json (the file the rabbitmq services mount)
#     declares the exchanges, queues and bindings of each bridge's topology
#     with the same properties (else RabbitMQ refuses the bridge's
#     declarations), and a user whose password hash matches the
#     AMQP_USER/AMQP_PASSWORD given to the bridge;
#  5. with several bridges: each has its own client_id (its config's, with
#     its environment) and its own spool volume, and all are in one
#     share_group;
#  6. with several RabbitMQ services: one Erlang cookie, a hostname each, the
#     peer list of the mounted cluster config names exactly those nodes, and
#     a service that imports the definitions (a quorum queue gets a replica
#     per member present when it is declared) waits for every other member
#     to be healthy.
# Exit 0 when all hold; otherwise 1 with one line per problem.
set -euo pipefail
SRC=${1:?usage: check_compose.sh SOURCE_DIR [COMPOSE_FILE]}
COMPOSE=${2:-$SRC/docker/docker-compose.yml}
[[ $COMPOSE = /* ]] || COMPOSE=$SRC/$COMPOSE

command -v docker-compose >/dev/null 2>&1 || {
    echo "check_compose: docker-compose not installed (scripts/deps.sh installs it)" >&2
    exit 1
}
# Keep the user's environment (COMPOSE_FILE, .env overrides, a cookie) out of it.
unset COMPOSE_FILE COMPOSE_PROJECT_NAME RABBITMQ_ERLANG_COOKIE
if ! docker-compose -f "$COMPOSE" config -q; then
    echo "check_compose: docker-compose config rejects $COMPOSE" >&2
    exit 1
fi
resolved=$(docker-compose -f "$COMPOSE" config)

python3 - "$SRC" "$resolved" "${MQTT2AMQP_BIN:-}" <<'EOF'
import base64, hashlib, json, os, re, subprocess, sys
import yaml

src, resolved, binary = sys.argv[1], yaml.safe_load(sys.argv[2]), sys.argv[3]
problems = []
def bad(msg):
    problems.append(msg)

CONFIG_AT = "/etc/mqtt2amqp/mqtt2amqp.yaml"
DEFS_AT = "/etc/rabbitmq/definitions.json"
services = resolved.get("services", {})

def image(svc):
    return svc.get("image", "") or ""

def mounts(svc):
    """(source, target, named) for each volume of a service."""
    out = []
    for v in svc.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            out.append((parts[0], parts[1] if len(parts) > 1 else parts[0],
                        not parts[0].startswith("/")))
        else:
            out.append((v.get("source", ""), v.get("target", ""), v.get("type") == "volume"))
    return out

def is_bridge(svc):
    b = svc.get("build")
    df = (b.get("dockerfile", "") if isinstance(b, dict) else "") if b else ""
    return image(svc).startswith("mqtt2amqp") or df.endswith("docker/Dockerfile")

mosquittos = [n for n, s in services.items() if image(s).startswith("eclipse-mosquitto")]
rabbits = [n for n, s in services.items() if image(s).startswith("rabbitmq")]
bridges = [n for n, s in services.items() if is_bridge(s)]
for role, names in (("Mosquitto", mosquittos), ("RabbitMQ", rabbits), ("bridge", bridges)):
    if not names:
        bad(f"no {role} service")

# 2. bind mounts and the Dockerfile exist; health
for name, svc in services.items():
    for source, _, named in mounts(svc):
        if not named and not os.path.exists(source):
            bad(f"{name}: bind-mounted {source} does not exist")
    b = svc.get("build")
    if b:
        ctx = b["context"] if isinstance(b, dict) else b
        df = os.path.join(ctx, b.get("dockerfile", "Dockerfile") if isinstance(b, dict) else "Dockerfile")
        if not os.path.isfile(df):
            bad(f"{name}: Dockerfile {df} does not exist")
    if "healthcheck" not in svc and name not in bridges:
        bad(f"{name}: no healthcheck (the bridges wait for service_healthy)")
for name in bridges:
    deps = services[name].get("depends_on") or {}
    for dep in mosquittos + rabbits:
        cond = deps.get(dep, {}) if isinstance(deps, dict) else {}
        if not isinstance(cond, dict) or cond.get("condition") != "service_healthy":
            bad(f"{name}: depends_on {dep} is not condition: service_healthy")

def expand(text, env):
    """The bridge's ${VAR} / ${VAR:-default} / $$ expansion (enough of it)."""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        var, default = m.group(1), m.group(3)
        val = env.get(var)
        if val in (None, "") and default is not None:
            return default
        return "" if val is None else str(val)
    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", sub, text)

# 3. each bridge's environment matches what its config reads
defs_path = None
for name in rabbits:
    for source, target, _ in mounts(services[name]):
        if target == DEFS_AT:
            defs_path = source
defs = json.load(open(defs_path)) if defs_path and os.path.isfile(defs_path) else None
if rabbits and defs is None:
    bad(f"no RabbitMQ service mounts the definitions at {DEFS_AT}")

seen_ids, seen_spools, groups, cfgs = {}, {}, set(), {}
for name in bridges:
    svc = services[name]
    cfg_path = next((s for s, t, _ in mounts(svc) if t == CONFIG_AT), None)
    if not cfg_path or not os.path.isfile(cfg_path):
        bad(f"{name}: no config mounted at {CONFIG_AT}")
        continue
    cfg_text = open(cfg_path).read()
    read_vars = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", cfg_text))
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    env = {k: str(v) for k, v in env.items()}
    for k in env:
        if k not in read_vars:
            bad(f"{name}: environment {k} is not read by {os.path.relpath(cfg_path, src)}")
    # What Docker adds: HOSTNAME is the service's hostname (or the container id).
    run_env = {**env, "HOSTNAME": str(svc.get("hostname", f"<{name} container id>"))}
    if binary:
        r = subprocess.run([binary, "--check", "-c", cfg_path], capture_output=True, text=True,
                           env={**os.environ, **run_env})
        if r.returncode != 0:
            bad(f"{name}: mqtt2amqp --check with its environment: {r.stderr.strip() or r.stdout.strip()}")
    cfg = yaml.safe_load(expand(cfg_text, run_env)) or {}
    cfgs[name] = (cfg, env)
    mqtt = cfg.get("mqtt") or {}
    cid = str(mqtt.get("client_id", "mqtt2amqp"))
    if cid in seen_ids:
        bad(f"{name}: client_id {cid!r} is {seen_ids[cid]}'s too (they would kick each other off)")
    seen_ids[cid] = name
    spool_dir = str((cfg.get("spool") or {}).get("dir", "/var/lib/mqtt2amqp"))
    vol = next((s for s, t, _ in mounts(svc) if t == spool_dir), None)
    if vol is None:
        bad(f"{name}: no volume at its spool dir {spool_dir}")
    elif vol in seen_spools:
        bad(f"{name}: spool volume {vol} is {seen_spools[vol]}'s too (the second would refuse to start)")
    else:
        seen_spools[vol] = name
    groups.add(mqtt.get("share_group"))
    amqp = cfg.get("amqp") or {}
    for node in amqp.get("hosts") or [f"{amqp.get('host', '127.0.0.1')}:{amqp.get('port', 5672)}"]:
        host = str(node).rsplit(":", 1)[0]
        if rabbits and host not in rabbits and host not in [str(services[r].get("hostname")) for r in rabbits]:
            bad(f"{name}: amqp node {node!r} is no RabbitMQ service of the compose file")

# 5. a fleet shares one group
if len(bridges) > 1 and (len(groups) != 1 or None in groups):
    bad(f"bridges {', '.join(bridges)} are not all in one share_group: {sorted(map(str, groups))}")

# 4. definitions match each bridge's topology and credentials
for name, (cfg, env) in cfgs.items():
    if defs is None:
        break
    vhost = (cfg.get("amqp") or {}).get("vhost", "/")
    topo = (cfg.get("amqp") or {}).get("topology") or {}
    if vhost not in [v["name"] for v in defs.get("vhosts", [])]:
        bad(f"definitions: no vhost {vhost!r}")
    dex = {e["name"]: e for e in defs.get("exchanges", []) if e.get("vhost") == vhost}
    for e in topo.get("exchanges") or []:
        d = dex.get(e["name"])
        if not d:
            bad(f"definitions: no exchange {e['name']!r} in vhost {vhost!r}")
            continue
        for key, default in (("type", "topic"), ("durable", True), ("auto_delete", False),
                             ("internal", False)):
            if d.get(key) != e.get(key, default):
                bad(f"definitions: exchange {e['name']!r} {key} {d.get(key)!r}, {name}'s config {e.get(key, default)!r}")
        if (d.get("arguments") or {}) != (e.get("arguments") or {}):
            bad(f"definitions: exchange {e['name']!r} arguments differ from {name}'s config")
    dq = {q["name"]: q for q in defs.get("queues", []) if q.get("vhost") == vhost}
    dbind = [(b["source"], b["destination"], b.get("routing_key", ""))
             for b in defs.get("bindings", []) if b.get("vhost") == vhost and b.get("destination_type") == "queue"]
    for q in topo.get("queues") or []:
        d = dq.get(q["name"])
        if not d:
            bad(f"definitions: no queue {q['name']!r} in vhost {vhost!r}")
            continue
        for key, default in (("durable", True), ("auto_delete", False)):
            if d.get(key) != q.get(key, default):
                bad(f"definitions: queue {q['name']!r} {key} {d.get(key)!r}, {name}'s config {q.get(key, default)!r}")
        if (d.get("arguments") or {}) != (q.get("arguments") or {}):
            bad(f"definitions: queue {q['name']!r} arguments {d.get('arguments')}, {name}'s config {q.get('arguments')}")
        for b in q.get("bindings") or []:
            if (b["exchange"], q["name"], b.get("routing_key", "#")) not in dbind:
                bad(f"definitions: no binding {b['exchange']!r} -> {q['name']!r} key {b.get('routing_key', '#')!r}")

    user, password = env.get("AMQP_USER"), env.get("AMQP_PASSWORD")
    if user is not None:
        users = {u["name"]: u for u in defs.get("users", [])}
        u = users.get(user)
        if not u:
            bad(f"definitions: no user {user!r} ({name}'s AMQP_USER)")
        else:
            raw = base64.b64decode(u["password_hash"])
            salt, digest = raw[:4], raw[4:]
            if u.get("hashing_algorithm") != "rabbit_password_hashing_sha256" or \
                    hashlib.sha256(salt + str(password).encode()).digest() != digest:
                bad(f"definitions: user {user!r} password hash does not match {name}'s AMQP_PASSWORD")
            if not any(p["user"] == user and p["vhost"] == vhost for p in defs.get("permissions", [])):
                bad(f"definitions: user {user!r} has no permissions on vhost {vhost!r}")

# 6. a RabbitMQ cluster
if len(rabbits) > 1:
    cookies = {str((services[n].get("environment") or {}).get("RABBITMQ_ERLANG_COOKIE")) for n in rabbits}
    if len(cookies) != 1 or "None" in cookies:
        bad(f"RabbitMQ services {', '.join(rabbits)} do not share one RABBITMQ_ERLANG_COOKIE")
    nodes = set()
    for n in rabbits:
        h = services[n].get("hostname")
        if not h:
            bad(f"{n}: no hostname (the node name rabbit@HOSTNAME must not change)")
        nodes.add(f"rabbit@{h}")
    listed = set()
    for n in rabbits:
        for source, target, named in mounts(services[n]):
            if named or not target.startswith("/etc/rabbitmq/conf.d/") or not os.path.isfile(source):
                continue
            for line in open(source):
                m = re.match(r"\s*cluster_formation\.classic_config\.nodes\.\d+\s*=\s*(\S+)", line)
                if m:
                    listed.add(m.group(1))
    if listed != nodes:
        bad(f"cluster peer list {sorted(listed)} is not the RabbitMQ services' nodes {sorted(nodes)}")
    importers = [n for n in rabbits if any(t == DEFS_AT for _, t, _ in mounts(services[n]))]
    for n in importers:
        deps = services[n].get("depends_on") or {}
        for other in rabbits:
            if other == n:
                continue
            cond = deps.get(other, {}) if isinstance(deps, dict) else {}
            if not isinstance(cond, dict) or cond.get("condition") != "service_healthy":
                bad(f"{n} imports the definitions but does not wait for {other} to be healthy "
                    f"(its quorum queues would lack that replica)")

for p in problems:
    print("check_compose:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
echo "check_compose: $COMPOSE is valid"
