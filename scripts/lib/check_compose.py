#!/usr/bin/env python3
"""Checks deploy/docker-compose.yml beyond its schema (which `compose config`
already checked): one worker service per work queue the topology declares,
each running the right stage and tier; every reelfleet service's environment
accepted by `reelfleet config check` (which refuses well-known credentials);
every published port bound to 127.0.0.1; the SQS bridge under the aws profile;
one intake API service with its clients file mounted from the host (and
accepted by `config check`); the URL pull and webhook workers with no SSRF
allow-list; MinIO notifying the topology's uploads
exchange with the arguments the workers declare it with.

Usage: check_compose.py RESOLVED_COMPOSE_YAML PATH/TO/reelfleet
"""

import json
import os
import subprocess
import sys

import yaml

import report

failures = []
resolved = yaml.safe_load(open(sys.argv[1]))
reelfleet = sys.argv[2]
services = resolved["services"]
ours = {n: s for n, s in services.items() if s.get("image", "").startswith("reelfleet")}
namespaces = {s["environment"].get("REELFLEET_NAMESPACE", "reelfleet") for s in ours.values()}
if len(namespaces) != 1:
    failures.append(f"reelfleet services disagree on the namespace: {namespaces}")
namespace = namespaces.pop()

clean = {k: v for k, v in os.environ.items() if not k.startswith("REELFLEET_")}
show = subprocess.run(
    [reelfleet, "topology", "show", "--json"],
    env=dict(clean, REELFLEET_NAMESPACE=namespace),
    capture_output=True,
    text=True,
    check=True,
)
topology = json.loads(show.stdout)

def mounts(service):
    """Container path -> host path of a service's bind mounts (compose v2
    resolves them to mappings, v1 keeps "source:target[:mode]")."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            if v.get("type", "bind") == "bind":
                out[v["target"]] = v["source"]
        else:
            parts = str(v).split(":")
            if len(parts) >= 2:
                out[parts[1]] = parts[0]
    return out


workers = {}
intakes = []
for name, s in ours.items():
    env = dict(clean, **{k: str(v) for k, v in s["environment"].items()})
    # The intake's clients file is mounted: `config check` reads it where the host has it.
    clients = env.get("REELFLEET_INTAKE__CLIENTS_FILE")
    if clients:
        host = mounts(s).get(clients)
        if not host or not os.path.isfile(host):
            failures.append(f"{name}: its clients file {clients} is not mounted from a file on the host ({host})")
        else:
            env["REELFLEET_INTAKE__CLIENTS_FILE"] = host
    out = subprocess.run([reelfleet, "config", "check"], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        failures.append(f"{name}: `reelfleet config check` refuses its environment: {out.stderr.strip()}")
    command = s.get("command", [])
    if command == ["intake"]:
        intakes.append(name)
        if not clients:
            failures.append(f"{name}: runs the intake without REELFLEET_INTAKE__CLIENTS_FILE")
        bind = env.get("REELFLEET_INTAKE__BIND_ADDR", "127.0.0.1:8088").rsplit(":", 1)[1]
        targets = [str(p.get("target")) if isinstance(p, dict) else str(p).split(":")[-1].split("/")[0] for p in s.get("ports", [])]
        if bind not in targets:
            failures.append(f"{name}: listens on {bind}, publishes {targets}")
    if command[:1] == ["worker"]:
        workers.setdefault(tuple(command[1:]), []).append(name)
        grace = s.get("stop_grace_period", "10s")
        if not grace.endswith("m") or int(grace[:-1]) * 60 <= int(env.get("REELFLEET_RUNTIME__GRACE_PERIOD_SECS", "30")):
            failures.append(f"{name}: stop_grace_period {grace} must be above the runtime grace period")

# The SQS bridge (profile aws) feeds the uploads exchange; it consumes no work queue.
bridges = workers.pop(("bridge-sqs",), [])
if len(bridges) != 1:
    failures.append(f"{len(bridges)} services run `worker bridge-sqs` (expected one, under the aws profile)")
for name in bridges:
    if services[name].get("profiles") != ["aws"]:
        failures.append(f"{name}: the SQS bridge must only start with --profile aws")
    if not services[name]["environment"].get("REELFLEET_SQS__QUEUE_URL"):
        failures.append(f"{name}: REELFLEET_SQS__QUEUE_URL is not passed through")
if len(intakes) != 1:
    failures.append(f"expected one intake service, found {intakes}")

for q in topology["work_queues"]:
    want = (q["stage"],) + (("--tier", q["tier"]) if q["tier"] else ())
    if len(workers.get(want, [])) != 1:
        failures.append(f"queue {q['queue']}: {len(workers.get(want, []))} services run `worker {' '.join(want)}`")
if len(workers) != len(topology["work_queues"]):
    failures.append(f"worker services {sorted(workers)} do not match the work queues")

# The workers that fetch URLs and POST webhooks must not be told to reach the
# compose network's private addresses (MinIO, RabbitMQ): no allow-list for them.
for stage in ("pull", "webhooks"):
    for name in workers.get((stage,), []):
        env = ours[name]["environment"]
        opened = {k: v for k, v in env.items() if k.endswith("__ALLOW_CIDRS") and str(v).strip() not in ("", "[]")}
        if opened:
            failures.append(f"{name}: the SSRF guard's allow-list is opened in compose: {opened}")

for name, s in services.items():
    for p in s.get("ports", []):
        # Compose v2 resolves ports to mappings, v1 keeps "host_ip:published:target".
        if isinstance(p, dict):
            host_ip, published = p.get("host_ip"), p.get("published")
        else:
            parts = str(p).split(":")
            host_ip, published = (parts[0] if len(parts) == 3 else None), parts[-2] if len(parts) > 1 else parts[0]
        if host_ip != "127.0.0.1":
            failures.append(f"{name}: port {published} is published on {host_ip or 'every interface'}, not 127.0.0.1")

minio = services["minio"]["environment"]
if minio.get("MINIO_NOTIFY_AMQP_EXCHANGE_PRIMARY") != topology["uploads_exchange"]:
    failures.append(f"MinIO publishes to {minio.get('MINIO_NOTIFY_AMQP_EXCHANGE_PRIMARY')}, not {topology['uploads_exchange']}")
if minio.get("MINIO_NOTIFY_AMQP_EXCHANGE_TYPE_PRIMARY") != "fanout" or minio.get("MINIO_NOTIFY_AMQP_DURABLE_PRIMARY") != "on":
    failures.append("MinIO must declare the uploads exchange as the workers do: durable fanout")
buckets = " ".join(services["buckets"]["command"])
upload_buckets = {s["environment"]["REELFLEET_S3__UPLOAD_BUCKET"] for s in ours.values()}
for b in upload_buckets:
    if f"local/{b} arn:minio:sqs::primary:amqp" not in buckets:
        failures.append(f"no MinIO notification on the upload bucket {b}")

report.finish(
    "compose",
    failures,
    f"{len(services)} services, {len(workers)} workers, one per work queue, the intake API, MinIO -> {topology['uploads_exchange']}",
)
