#!/usr/bin/env bash
# check_compose.sh SOURCE_DIR - validates docker/docker-compose.yml without
# a Docker engine (ctest -L packaging):
#  1. Debian's docker-compose accepts it: `docker-compose config -q`;
#  2. every file it bind-mounts and the Dockerfile it builds exist;
#  3. the environment it gives the bridge is what config/mqtt2amqp.yaml
#     reads (${VAR}), and the bridge's config passes `mqtt2amqp --check`
#     with that environment (when MQTT2AMQP_BIN names the binary);
#  4. docker/rabbitmq/definitions.json declares the exchanges, queues and
#     bindings of config/mqtt2amqp.yaml's topology with the same properties
#     (else RabbitMQ refuses the bridge's declarations), and a user whose
#     password hash matches the AMQP_USER/AMQP_PASSWORD given to the bridge.
# Exit 0 when all hold; otherwise 1 with one line per problem.
set -euo pipefail
SRC=${1:?usage: check_compose.sh SOURCE_DIR}
COMPOSE="$SRC/docker/docker-compose.yml"

command -v docker-compose >/dev/null 2>&1 || {
    echo "check_compose: docker-compose not installed (scripts/deps.sh installs it)" >&2
    exit 1
}
# Keep the user's environment (COMPOSE_FILE, .env overrides) out of it.
unset COMPOSE_FILE COMPOSE_PROJECT_NAME
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

services = resolved.get("services", {})
for name in ("mosquitto", "rabbitmq", "bridge"):
    if name not in services:
        bad(f"no service {name}")

# 2. bind mounts and the Dockerfile exist
for name, svc in services.items():
    for v in svc.get("volumes", []):
        source = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
        if source.startswith("/") and not os.path.exists(source):
            bad(f"{name}: bind-mounted {source} does not exist")
    b = svc.get("build")
    if b:
        ctx = b["context"] if isinstance(b, dict) else b
        df = os.path.join(ctx, b.get("dockerfile", "Dockerfile") if isinstance(b, dict) else "Dockerfile")
        if not os.path.isfile(df):
            bad(f"{name}: Dockerfile {df} does not exist")
    if "healthcheck" not in svc and name != "bridge":
        bad(f"{name}: no healthcheck (the bridge waits for service_healthy)")

bridge = services.get("bridge", {})
for dep in ("mosquitto", "rabbitmq"):
    cond = (bridge.get("depends_on") or {}).get(dep, {})
    if not isinstance(cond, dict) or cond.get("condition") != "service_healthy":
        bad(f"bridge: depends_on {dep} is not condition: service_healthy")

# 3. the environment matches what the config reads
cfg_path = os.path.join(src, "config", "mqtt2amqp.yaml")
cfg_text = open(cfg_path).read()
read_vars = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", cfg_text))
env = bridge.get("environment") or {}
if isinstance(env, list):
    env = dict(e.split("=", 1) for e in env)
for k in env:
    if k not in read_vars:
        bad(f"bridge: environment {k} is not read by config/mqtt2amqp.yaml")
if binary:
    r = subprocess.run([binary, "--check", "-c", cfg_path], capture_output=True, text=True,
                       env={**os.environ, **{k: str(v) for k, v in env.items()}})
    if r.returncode != 0:
        bad(f"mqtt2amqp --check with the bridge's environment: {r.stderr.strip() or r.stdout.strip()}")

# 4. definitions match the config's topology and credentials
cfg = yaml.safe_load(cfg_text)
defs = json.load(open(os.path.join(src, "docker", "rabbitmq", "definitions.json")))
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
            bad(f"definitions: exchange {e['name']!r} {key} {d.get(key)!r}, config {e.get(key, default)!r}")
    if (d.get("arguments") or {}) != (e.get("arguments") or {}):
        bad(f"definitions: exchange {e['name']!r} arguments differ from the config's")
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
            bad(f"definitions: queue {q['name']!r} {key} {d.get(key)!r}, config {q.get(key, default)!r}")
    if (d.get("arguments") or {}) != (q.get("arguments") or {}):
        bad(f"definitions: queue {q['name']!r} arguments {d.get('arguments')}, config {q.get('arguments')}")
    for b in q.get("bindings") or []:
        if (b["exchange"], q["name"], b.get("routing_key", "#")) not in dbind:
            bad(f"definitions: no binding {b['exchange']!r} -> {q['name']!r} key {b.get('routing_key', '#')!r}")

user, password = env.get("AMQP_USER"), env.get("AMQP_PASSWORD")
if user is not None:
    users = {u["name"]: u for u in defs.get("users", [])}
    u = users.get(user)
    if not u:
        bad(f"definitions: no user {user!r} (the bridge's AMQP_USER)")
    else:
        raw = base64.b64decode(u["password_hash"])
        salt, digest = raw[:4], raw[4:]
        if u.get("hashing_algorithm") != "rabbit_password_hashing_sha256" or \
                hashlib.sha256(salt + str(password).encode()).digest() != digest:
            bad(f"definitions: user {user!r} password hash does not match the bridge's AMQP_PASSWORD")
        if not any(p["user"] == user and p["vhost"] == vhost for p in defs.get("permissions", [])):
            bad(f"definitions: user {user!r} has no permissions on vhost {vhost!r}")

for p in problems:
    print("check_compose:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
echo "check_compose: $COMPOSE is valid"
