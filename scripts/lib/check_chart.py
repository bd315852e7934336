#!/usr/bin/env python3
"""Checks helm/reelfleet with a real Helm engine (helm-python-sdk bundles Helm's
library) and the Kubernetes schemas (kubernetes-validate), offline.

For the default values and each values file in helm/reelfleet/ci/:
  - `helm lint --strict` finds nothing;
  - the chart renders, and every core object validates against the Kubernetes
    schema (strict: unknown fields are errors);
  - every work queue the topology declares (`reelfleet topology show --json`)
    has exactly one KEDA ScaledObject pointing at it, whose Deployment runs the
    worker of that queue, with `protocol: http` and `mode: QueueLength`;
  - the ConfigMap + Secret environment is accepted by `reelfleet config check`
    (the same names the binary reads, no unknown setting);
  - probes, grace period, resources and PodDisruptionBudgets are where they
    must be;
  - with `intake.enabled`, the intake runs `reelfleet intake` on the port its
    Service targets, its clients file comes from a Secret the binary accepts,
    and its own NetworkPolicy opens the API port only.
Then values that must be refused are refused, the HPA fallback renders one HPA
per Deployment, and every value in values.yaml carries a comment.

Usage: check_chart.py PATH/TO/reelfleet
"""

import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import helm_python
import jsonschema
import kubernetes_validate
import yaml

import report

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "reelfleet"
KUBE_VERSION = "1.30.0"
CORE_KINDS = {
    "ConfigMap",
    "Secret",
    "ServiceAccount",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
}
failures = []

# The fields of KEDA's ScaledObject / TriggerAuthentication (keda.sh/v1alpha1)
# and the Prometheus Operator's ServiceMonitor that their documentation lists,
# written here (no cluster, no CRD), so a misspelt field fails as it would at
# `kubectl apply` with server-side validation.
def _obj(required, **props):
    return {"type": "object", "required": required, "additionalProperties": False, "properties": props}


_META = {"type": "object", "required": ["name"]}
_STR = {"type": "string"}
_INT = {"type": "integer", "minimum": 0}
def _crd(api_version, spec):
    return _obj(
        ["apiVersion", "kind", "metadata", "spec"],
        apiVersion={"const": api_version},
        kind=_STR,
        metadata=_META,
        spec=spec,
    )


CRD_SCHEMAS = {
    "ScaledObject": _crd(
        "keda.sh/v1alpha1",
        _obj(
            ["scaleTargetRef", "triggers"],
            scaleTargetRef=_obj(["name"], apiVersion=_STR, kind=_STR, name=_STR, envSourceContainerName=_STR),
            pollingInterval=_INT,
            cooldownPeriod=_INT,
            initialCooldownPeriod=_INT,
            idleReplicaCount=_INT,
            minReplicaCount=_INT,
            maxReplicaCount=_INT,
            fallback=_obj(["failureThreshold", "replicas"], failureThreshold=_INT, replicas=_INT, behavior=_STR),
            advanced=_obj(
                [],
                restoreToOriginalReplicaCount={"type": "boolean"},
                horizontalPodAutoscalerConfig=_obj([], name=_STR, behavior={"type": "object"}),
                scalingModifiers={"type": "object"},
            ),
            triggers={
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    ["type", "metadata"],
                    type=_STR,
                    name=_STR,
                    useCachedMetrics={"type": "boolean"},
                    metricType={"enum": ["AverageValue", "Value", "Utilization"]},
                    metadata={"type": "object", "additionalProperties": _STR},
                    authenticationRef=_obj(["name"], name=_STR, kind={"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]}),
                ),
            },
        ),
    ),
    "TriggerAuthentication": _crd(
        "keda.sh/v1alpha1",
        _obj(
            [],
            secretTargetRef={"type": "array", "items": _obj(["parameter", "name", "key"], parameter=_STR, name=_STR, key=_STR)},
            env={"type": "array"},
            podIdentity={"type": "object"},
        ),
    ),
    "ServiceMonitor": _crd(
        "monitoring.coreos.com/v1",
        _obj(
            ["selector", "endpoints"],
            selector=_obj([], matchLabels={"type": "object", "additionalProperties": _STR}, matchExpressions={"type": "array"}),
            namespaceSelector={"type": "object"},
            jobLabel=_STR,
            endpoints={
                "type": "array",
                "minItems": 1,
                "items": _obj([], port=_STR, path=_STR, interval={"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}, scrapeTimeout=_STR, scheme=_STR),
            },
        ),
    ),
}


def fail(case, message):
    failures.append(f"[{case}] {message}")


# Credentials as an operator gives them (none has a default in the chart).
CREDENTIALS = {
    "REELFLEET_BROKER__URL": "amqp://fleet:Nq3xv81ke2@rabbitmq:5672/video",
    "REELFLEET_BROKER__MANAGEMENT_URL": "http://fleet:Nq3xv81ke2@rabbitmq:15672/",
    "REELFLEET_S3__ACCESS_KEY": "AKIACHARTCHECK01",
    "REELFLEET_S3__SECRET_KEY": "c7e0f5a1b9d24e8f9a3b6c0d1e2f3a4b",
    "REELFLEET_SIGNING__SECRET": "3f9a0c7e1b5d2e8f4a6c9b0d3e7f1a2c5b8d0e4f6a9c1b3d5e7f0a2c4b6d8e9f",
    "REELFLEET_INFERENCE__API_KEY": "sk-chart-check-5e1d9c",
    "REELFLEET_STATE__URL": "postgres://fleet:Hk2p9w@postgresql:5432/reelfleet",
    "REELFLEET_INDEX__URL": "postgres://fleet:Hk2p9w@postgresql:5432/reelfleet",
    "REELFLEET_SQS__ACCESS_KEY": "AKIABRIDGECHECK01",
    "REELFLEET_SQS__SECRET_KEY": "9d8c7b6a5f4e3d2c1b0a",
}
SQS_QUEUE = "https://sqs.eu-west-1.amazonaws.com/123456789012/uploads-events"
BRIDGE = {"bridgeSqs": {"enabled": True}, "config": {"sqs": {"queue_url": SQS_QUEUE, "region": "eu-west-1"}}}
# The bridge on its ServiceAccount's IAM role (IRSA): no SQS keys anywhere.
BRIDGE_ROLE = {
    "bridgeSqs": {"enabled": True},
    "config": {"sqs": {"queue_url": SQS_QUEUE, "region": "eu-west-1", "credentials": "aws"}},
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/reelfleet"}},
    "secrets": {"values": {"REELFLEET_SQS__ACCESS_KEY": "", "REELFLEET_SQS__SECRET_KEY": ""}},
}
GIVEN = {"secrets": {"values": CREDENTIALS}}
# One intake client as `reelfleet intake client` prints it (the key's hash, never the key).
INTAKE_CLIENTS = (
    '[[clients]]\nid = "chart-check"\n'
    f'api_key_sha256 = "{hashlib.sha256(b"rfk_chart_check").hexdigest()}"\n'
    f'secret = "whsec_{base64.b64encode(bytes(range(32))).decode()}"\n'
)
INTAKE = {"intake": {"enabled": True, "clientsToml": INTAKE_CLIENTS}}
# One console account as `reelfleet console account` prints it (the password's argon2 hash, never the password).
CONSOLE = {
    "console": {
        "enabled": True,
        "accountsToml": '[[accounts]]\nname = "ops"\npassword_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"\nrole = "operator"\n',
    },
    "secrets": {"values": {"REELFLEET_CONSOLE__SESSION_KEY": "ab" * 32, "REELFLEET_INDEX__URL": "postgres://fleet:pw@postgres/reelfleet"}},
}


def with_credentials(values):
    """`values` with every credential given, unless it names an existing Secret."""
    if values.get("secrets", {}).get("existingSecret"):
        return values
    merged = json.loads(json.dumps(values))
    merged.setdefault("secrets", {}).setdefault("values", {})
    for k, v in CREDENTIALS.items():
        merged["secrets"]["values"].setdefault(k, v)
    return merged


def check_hardening(case, docs, values):
    """NetworkPolicy: no ingress but the metrics port, egress only DNS and the
    listed peers; ffmpeg threads follow a CPU limit; scratch sized from what a
    worker holds at once."""
    net = values.get("networkPolicy", {})
    every = by_kind(docs, "NetworkPolicy")
    intake = [p for p in every if p["metadata"]["labels"].get("app.kubernetes.io/component") == "intake"]
    fetch = [p for p in every if p["metadata"]["name"].endswith("-fetch")]
    console = [p for p in every if p["metadata"]["labels"].get("app.kubernetes.io/component") == "console"]
    policies = [p for p in every if p not in intake and p not in fetch and p not in console]
    check_intake_policy(case, intake, values)
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    check_fetch_policy(case, every, net, deployments)
    if net.get("enabled", True):
        if len(policies) != 1:
            fail(case, f"expected one NetworkPolicy, found {len(policies)}")
        else:
            spec = policies[0]["spec"]
            if sorted(spec.get("policyTypes", [])) != ["Egress", "Ingress"]:
                fail(case, "the NetworkPolicy must govern both ingress and egress")
            ports = [p.get("port") for rule in spec.get("ingress", []) for p in rule.get("ports", [])]
            if ports != ["http-metrics"] or any("ports" not in r for r in spec.get("ingress", [])):
                fail(case, f"ingress must be the metrics port only, got {ports}")
            dns = spec.get("egress", [{}])[0].get("ports", [])
            if sorted(p["port"] for p in dns) != [53, 53]:
                fail(case, "the first egress rule must be DNS")
    elif policies:
        fail(case, "networkPolicy.enabled is false but a NetworkPolicy was rendered")
    config = values.get("config", {})
    for d in by_kind(docs, "Deployment"):
        name = d["metadata"]["name"]
        pod = d["spec"]["template"]["spec"]
        container = pod["containers"][0]
        if d["metadata"]["labels"].get("reelfleet.io/stage") in ("bridge-sqs", "intake", "console"):
            # No ffmpeg, no scratch: they relay small messages.
            if any(v["name"] == "scratch" for v in pod.get("volumes", [])) or "REELFLEET_MEDIA__THREADS" in str(container.get("env")):
                fail(case, f"{name}: the bridge and the intake need no scratch volume or media threads")
            continue
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        cpu = container.get("resources", {}).get("limits", {}).get("cpu")
        if cpu and not config.get("media", {}).get("threads"):
            text = str(cpu)
            want = -(-int(text[:-1]) // 1000) if text.endswith("m") else -(-float(text) // 1)
            if env.get("REELFLEET_MEDIA__THREADS") != str(int(want)):
                fail(case, f"{name}: CPU limit {cpu} but media threads {env.get('REELFLEET_MEDIA__THREADS')}")
        elif "REELFLEET_MEDIA__THREADS" in env and not cpu:
            fail(case, f"{name}: media threads set without a CPU limit")
        (scratch,) = [v for v in pod["volumes"] if v["name"] == "scratch"]
        size = scratch["emptyDir"]["sizeLimit"]
        if not values.get("scratch", {}).get("sizeLimit"):
            stage = d["metadata"]["labels"]["reelfleet.io/stage"]
            if stage in ("pull", "webhooks", "index"):
                # They stream through memory; scratch only holds what the runtime sweeps.
                held = 64 << 20
            elif stage == "inference":
                tier = d["metadata"]["labels"]["reelfleet.io/tier"]
                held = config.get("inference", {}).get(tier, {}).get("concurrency", 4) * config.get("inference", {}).get("max_video_bytes", 4 << 30)
            else:
                held = config.get("broker", {}).get("prefetch", 4) * config.get("limits", {}).get("max_bytes", 10 << 30) * 3
            if size != f"{held // (1 << 20)}Mi":
                fail(case, f"{name}: scratch {size}, expected {held // (1 << 20)}Mi for what it holds at once")


def check_intake_policy(case, policies, values):
    """With the intake and network policies on, one more policy opens the API
    port to the intake pods, and nothing else."""
    wanted = values.get("intake", {}).get("enabled") and values.get("networkPolicy", {}).get("enabled", True)
    if not wanted:
        if policies:
            fail(case, "an intake NetworkPolicy without the intake (or with network policies off)")
        return
    if len(policies) != 1:
        fail(case, f"expected one intake NetworkPolicy, found {len(policies)}")
        return
    spec = policies[0]["spec"]
    if spec["podSelector"]["matchLabels"].get("app.kubernetes.io/component") != "intake":
        fail(case, "the intake NetworkPolicy selects more than the intake pods")
    ports = [p.get("port") for rule in spec.get("ingress", []) for p in rule.get("ports", [])]
    if ports != ["http-api"] or spec.get("policyTypes") != ["Ingress"] or spec.get("egress"):
        fail(case, f"the intake NetworkPolicy must open the API port only, got {ports}")


def check_intake(case, docs, values, reelfleet):
    """The intake, when enabled: `reelfleet intake` listening on the port its
    Service targets, its clients file mounted from a Secret holding
    clients.toml, and the binary accepting those clients."""
    enabled = values.get("intake", {}).get("enabled", False)
    deployments = [d for d in by_kind(docs, "Deployment") if d["spec"]["template"]["spec"]["containers"][0]["args"] == ["intake"]]
    services = [s for s in by_kind(docs, "Service") if s["metadata"]["labels"].get("app.kubernetes.io/component") == "intake"]
    if not enabled:
        if deployments or services:
            fail(case, "intake is disabled but an intake is rendered")
        return
    if len(deployments) != 1 or len(services) != 1:
        fail(case, f"expected one intake Deployment and Service, got {len(deployments)} and {len(services)}")
        return
    pod = deployments[0]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    bind_port = int(env.get("REELFLEET_INTAKE__BIND_ADDR", ":0").rsplit(":", 1)[1])
    if ports.get("http-api") != bind_port or services[0]["spec"]["ports"][0]["targetPort"] != "http-api":
        fail(case, f"the intake listens on {bind_port}, its container port is {ports.get('http-api')}, the Service targets {services[0]['spec']['ports'][0]['targetPort']}")
    selector = services[0]["spec"]["selector"]
    if not all(pod_labels.get(k) == v for pod_labels in [deployments[0]["spec"]["template"]["metadata"]["labels"]] for k, v in selector.items()):
        fail(case, "the intake Service does not select the intake pods")
    clients_file = env.get("REELFLEET_INTAKE__CLIENTS_FILE", "")
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volume = next((v for v in pod.get("volumes", []) if v["name"] == mounts.get(os.path.dirname(clients_file))), None)
    if not volume or "secret" not in volume:
        fail(case, f"the intake's clients file {clients_file} is not mounted from a Secret")
        return
    secret_name = volume["secret"]["secretName"]
    made = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    clients = values["intake"].get("clientsToml") or INTAKE_CLIENTS
    if secret_name in made:
        data = made[secret_name].get("data", {})
        if "clients.toml" not in data:
            fail(case, f"Secret {secret_name} has no clients.toml")
            return
        clients = base64.b64decode(data["clients.toml"]).decode()
    # The binary reads the clients as the pod would: `config check` refuses a malformed one.
    env_check = {k: v for k, v in os.environ.items() if not k.startswith("REELFLEET_")}
    env_check.update(CREDENTIALS)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clients.toml"
        path.write_text(clients)
        env_check["REELFLEET_INTAKE__CLIENTS_FILE"] = str(path)
        out = subprocess.run([reelfleet, "config", "check"], env=env_check, capture_output=True, text=True)
    if out.returncode != 0:
        fail(case, f"`reelfleet config check` refuses the intake's clients: {out.stderr.strip()}")


# What the URL pull and webhook workers must never reach, even past the SSRF guard.
INWARD_V4 = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "127.0.0.0/8"}
INWARD_V6 = {"fc00::/7", "fe80::/10", "::1/128"}


def selects(policy, labels):
    """Whether a NetworkPolicy's podSelector selects pods with `labels`."""
    sel = policy["spec"].get("podSelector", {})
    if any(labels.get(k) != v for k, v in sel.get("matchLabels", {}).items()):
        return False
    for e in sel.get("matchExpressions", []):
        value = labels.get(e["key"])
        if e["operator"] == "In" and value not in e["values"]:
            return False
        if e["operator"] == "NotIn" and value in e["values"]:
            return False
    return True


def check_fetch_policy(case, every, net, deployments):
    """The pull and webhooks workers' egress, as Kubernetes applies it: the
    union of every NetworkPolicy selecting their pods (policies add up). When
    networkPolicy is on and fetchEgress is not emptied: DNS, in-cluster peers
    on listed ports, and address blocks only on ports 80 and 443 that keep out
    the private, CGNAT, loopback and link-local ranges; the broker still
    reachable. Every other worker keeps the release-wide policy."""
    wanted = net.get("enabled", True) and net.get("fetchEgress", True) != []
    fetch = [p for p in every if p["metadata"]["name"].endswith("-fetch")]
    if not wanted:
        if fetch:
            fail(case, "a fetch NetworkPolicy is rendered although networkPolicy or fetchEgress is off")
        return
    if len(fetch) != 1:
        fail(case, f"expected one NetworkPolicy for the pull and webhooks workers, found {len(fetch)}")
        return
    for name, d in deployments.items():
        labels = d["spec"]["template"]["metadata"]["labels"]
        governing = [p for p in every if selects(p, labels)]
        if labels.get("reelfleet.io/stage") not in ("pull", "webhooks"):
            if fetch[0] in governing:
                fail(case, f"{name}: the fetch NetworkPolicy selects a worker that does not fetch")
            continue
        if governing != fetch:
            fail(case, f"{name}: governed by {[p['metadata']['name'] for p in governing]}, not its fetch policy alone")
        rules = [r for p in governing for r in p["spec"].get("egress", [])]
        broker = False
        for rule in rules:
            ports = sorted(p.get("port") for p in rule.get("ports", []))
            peers = rule.get("to")
            if not peers:
                if ports != [53, 53]:
                    fail(case, f"{name}: egress to anywhere on ports {ports or 'all'}; only DNS may be")
                continue
            if not ports:
                fail(case, f"{name}: egress to {peers} on every port")
            for peer in peers:
                block = peer.get("ipBlock")
                if block is None:
                    if not ({"namespaceSelector", "podSelector"} & set(peer)):
                        fail(case, f"{name}: egress to {peer}")
                    broker = broker or 5672 in ports
                    continue
                if any(p not in (80, 443) for p in ports):
                    fail(case, f"{name}: an address block open on ports {ports}; only 80 and 443")
                inward = INWARD_V6 if ":" in block["cidr"] else INWARD_V4
                missing = inward - set(block.get("except", []))
                if block["cidr"] in ("0.0.0.0/0", "::/0") and missing:
                    fail(case, f"{name}: {block['cidr']} reaches {sorted(missing)}")
        if not broker:
            fail(case, f"{name}: its NetworkPolicy lets it reach no broker")


def check_secret_rolls_pods():
    """A changed credential changes every pod template (so pods roll), and
    the same values render the same Secret (nothing is made per render)."""
    def annotations(values):
        docs = render(values)
        return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"] for d in by_kind(docs, "Deployment")}, by_kind(docs, "Secret")
    a, secret_a = annotations(GIVEN)
    b, secret_b = annotations(GIVEN)
    if a != b or secret_a != secret_b:
        fail("secret", "two renders of the same values differ")
    changed = json.loads(json.dumps(GIVEN))
    changed["secrets"]["values"]["REELFLEET_SIGNING__SECRET"] = "9" + CREDENTIALS["REELFLEET_SIGNING__SECRET"][1:]
    c, _ = annotations(changed)
    same = [n for n in a if a[n].get("checksum/credentials") == c[n].get("checksum/credentials")]
    if same:
        fail("secret", f"a new signing key does not roll {same}")


def render(values, name="reelfleet", namespace="video"):
    out = helm_python.Chart.load(str(CHART)).render(values, name=name, namespace=namespace)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def topology(namespace, reelfleet):
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELFLEET_")}
    env["REELFLEET_NAMESPACE"] = namespace
    out = subprocess.run(
        [reelfleet, "topology", "show", "--json"], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)["work_queues"]


def check_settings(case, docs, values, reelfleet):
    """The environment the pods get must load in the binary as it is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELFLEET_")}
    settings = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-settings")]
    if len(settings) != 1:
        fail(case, f"expected one settings ConfigMap, found {len(settings)}")
        return
    env.update(settings[0]["data"])
    # The release's Secret of REELFLEET_ variables (not the intake's clients file).
    secrets = [s for s in by_kind(docs, "Secret") if all(k.startswith("REELFLEET_") for k in s.get("data", {}))]
    if secrets:
        for key, value in secrets[0].get("data", {}).items():
            env[key] = base64.b64decode(value).decode()
    else:
        # An existing Secret: stand-ins for the keys an operator puts in it.
        env.update(CREDENTIALS)
    with tempfile.TemporaryDirectory() as tmp:
        if values.get("configFile"):
            path = Path(tmp) / "reelfleet.toml"
            path.write_text(values["configFile"])
            env["REELFLEET_CONFIG"] = str(path)
        out = subprocess.run([reelfleet, "config", "check", "--json"], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        fail(case, f"`reelfleet config check` refuses the chart's environment: {out.stderr.strip()}")
        return None
    effective = json.loads(out.stdout)
    for key, value in settings[0]["data"].items():
        path = key[len("REELFLEET_") :].lower().split("__")
        got = effective
        for part in path:
            got = got.get(part) if isinstance(got, dict) else None
        if got is None or str(got).lower() != value.lower() and not _same_number(got, value):
            fail(case, f"{key}={value!r} did not reach the settings (got {got!r})")
    return effective


def held_per_replica(effective, stage, tier):
    """Messages one replica takes off its queue at once (the runtime's prefetch)."""
    prefetch = effective["broker"]["prefetch"]
    if stage == "inference":
        t = effective["inference"][tier]
        return max(t["batch_size"] * t["concurrency"], prefetch)
    return prefetch


def _same_number(a, b):
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def check_workloads(case, docs, values):
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    pdbs = by_kind(docs, "PodDisruptionBudget")
    settings = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-settings"))["data"]
    job_timeout = int(settings.get("REELFLEET_RUNTIME__JOB_TIMEOUT_SECS", "900"))
    health_port = int(settings.get("REELFLEET_RUNTIME__HEALTH_ADDR", "0.0.0.0:9090").rsplit(":", 1)[1])
    for name, d in deployments.items():
        pod = d["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        grace = pod.get("terminationGracePeriodSeconds", 30)
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        if container["args"] == ["console"]:
            # The console runs no job and has no health server: its own port answers /healthz.
            for probe in ("livenessProbe", "readinessProbe"):
                got = container.get(probe, {}).get("httpGet", {})
                if got.get("path") != "/healthz" or got.get("port") != "http-console" or "http-console" not in ports:
                    fail(case, f"{name}: {probe} must GET /healthz on the console's port, got {got}")
        else:
            if grace <= job_timeout:
                fail(case, f"{name}: terminationGracePeriodSeconds {grace} is not above the job timeout {job_timeout}")
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                got = container.get(probe, {}).get("httpGet", {})
                if got.get("path") != path or ports.get(got.get("port")) != health_port:
                    fail(case, f"{name}: {probe} must GET {path} on the health port {health_port}, got {got}")
        if not container.get("resources", {}).get("requests"):
            fail(case, f"{name}: no resource requests")
        if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
            fail(case, f"{name}: pods must run as non-root")
        labels = d["spec"]["template"]["metadata"]["labels"]
        covering = [
            p for p in pdbs if all(labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items())
        ]
        if values.get("podDisruptionBudget", {}).get("enabled", True) and len(covering) != 1:
            fail(case, f"{name}: {len(covering)} PodDisruptionBudgets select it, expected 1")
        if container["args"][0] != "worker" and container["args"] not in (["intake"], ["console"]):
            fail(case, f"{name}: does not run `reelfleet worker`: {container['args']}")


def check_keda(case, docs, namespace, reelfleet, values, effective):
    # The intake answers HTTP; it has no queue to scale on.
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment") if d["metadata"]["labels"].get("reelfleet.io/stage") not in ("intake", "console")}
    scaled = by_kind(docs, "ScaledObject")
    auths = {a["metadata"]["name"]: a for a in by_kind(docs, "TriggerAuthentication")}
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    existing = values.get("secrets", {}).get("existingSecret")
    for queue in topology(namespace, reelfleet):
        pointing = [
            s
            for s in scaled
            for t in s["spec"]["triggers"]
            if t["type"] == "rabbitmq" and t["metadata"].get("queueName") == queue["queue"]
        ]
        if len(pointing) != 1:
            fail(case, f"queue {queue['queue']}: {len(pointing)} ScaledObjects point at it, expected exactly 1")
            continue
        so = pointing[0]
        target = so["spec"]["scaleTargetRef"]
        d = deployments.get(target["name"])
        if target.get("kind", "Deployment") != "Deployment" or d is None:
            fail(case, f"{so['metadata']['name']}: scales {target}, which is not a rendered Deployment")
            continue
        args = d["spec"]["template"]["spec"]["containers"][0]["args"]
        want = ["worker", queue["stage"]] + (["--tier", queue["tier"]] if queue["tier"] else [])
        if args != want:
            fail(case, f"{so['metadata']['name']}: its Deployment runs {args}, but {queue['queue']} needs {want}")
        (trigger,) = so["spec"]["triggers"]
        meta = trigger["metadata"]
        if meta.get("protocol") != "http" or meta.get("mode") != "QueueLength":
            fail(case, f"{so['metadata']['name']}: needs protocol http + mode QueueLength (ready + unacked), got {meta}")
        for key in ("value", "activationValue"):
            if not isinstance(meta.get(key), str) or float(meta[key]) < 0:
                fail(case, f"{so['metadata']['name']}: metadata.{key} must be a numeric string, got {meta.get(key)!r}")
        if float(meta["value"]) <= 0:
            fail(case, f"{so['metadata']['name']}: value must be above 0")
        elif effective is not None:
            # A replica holds its whole prefetch as unacked: a target below that
            # makes KEDA add replicas that find nothing to take.
            held = held_per_replica(effective, queue["stage"], queue["tier"])
            if float(meta["value"]) < held:
                fail(
                    case,
                    f"{so['metadata']['name']}: queueLength {meta['value']} is below the {held} messages one replica "
                    f"holds (prefetch): KEDA would start replicas with nothing to take",
                )
        spec = so["spec"]
        if not 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]:
            fail(case, f"{so['metadata']['name']}: min/max replicas out of order")
        auth = auths.get(trigger.get("authenticationRef", {}).get("name"))
        if auth is None:
            fail(case, f"{so['metadata']['name']}: its TriggerAuthentication is not rendered")
            continue
        if trigger["type"] != "rabbitmq":
            continue
        for ref in auth["spec"]["secretTargetRef"]:
            if ref["parameter"] != "host":
                fail(case, f"TriggerAuthentication: unexpected parameter {ref['parameter']}")
            if existing:
                if ref["name"] != existing:
                    fail(case, f"TriggerAuthentication reads Secret {ref['name']}, not the existing {existing}")
            elif ref["key"] not in secrets.get(ref["name"], {}).get("data", {}):
                fail(case, f"TriggerAuthentication reads {ref['name']}/{ref['key']}, which the chart does not create")
    if len(scaled) != len(deployments):
        fail(case, f"{len(scaled)} ScaledObjects for {len(deployments)} Deployments")
    # Retry and dead-letter queues have no consumer: nothing may scale on them.
    work = {q["queue"] for q in topology(namespace, reelfleet)}
    for so in scaled:
        for t in so["spec"]["triggers"]:
            if t["type"] == "rabbitmq" and t["metadata"].get("queueName") not in work:
                fail(case, f"{so['metadata']['name']}: scales on {t['metadata'].get('queueName')}, not a work queue")
    check_bridge(case, values, deployments, scaled, auths, secrets, existing)


def check_bridge(case, values, deployments, scaled, auths, secrets, existing):
    """The SQS bridge, when enabled: its Deployment runs `worker bridge-sqs`,
    KEDA scales it on the configured queue with the Secret's SQS keys."""
    enabled = values.get("bridgeSqs", {}).get("enabled", False)
    bridges = [n for n, d in deployments.items() if d["spec"]["template"]["spec"]["containers"][0]["args"] == ["worker", "bridge-sqs"]]
    sqs = [s for s in scaled for t in s["spec"]["triggers"] if t["type"] == "aws-sqs-queue"]
    if not enabled:
        if bridges or sqs:
            fail(case, "bridgeSqs is disabled but a bridge is rendered")
        return
    if len(bridges) != 1 or len(sqs) != 1:
        fail(case, f"expected one bridge Deployment and one aws-sqs-queue ScaledObject, got {bridges} and {len(sqs)}")
        return
    so = sqs[0]
    if so["spec"]["scaleTargetRef"]["name"] != bridges[0]:
        fail(case, f"the aws-sqs-queue ScaledObject scales {so['spec']['scaleTargetRef']['name']}, not {bridges[0]}")
    (trigger,) = so["spec"]["triggers"]
    want_queue = values.get("config", {}).get("sqs", {}).get("queue_url")
    if trigger["metadata"].get("queueURL") != want_queue:
        fail(case, f"KEDA watches {trigger['metadata'].get('queueURL')}, the bridge reads {want_queue}")
    auth = auths.get(trigger.get("authenticationRef", {}).get("name"), {})
    if values.get("config", {}).get("sqs", {}).get("credentials") == "aws":
        if auth.get("spec", {}).get("podIdentity") != {"provider": "aws", "identityOwner": "workload"}:
            fail(case, f"with the bridge on an IAM role, KEDA must use the workload's: {auth.get('spec')}")
        for name, secret in secrets.items():
            if {"REELFLEET_SQS__ACCESS_KEY", "REELFLEET_SQS__SECRET_KEY"} & set(secret.get("data", {})):
                fail(case, f"the Secret {name} carries SQS keys though the bridge uses its IAM role")
        return
    params = {r["parameter"]: r for r in auth.get("spec", {}).get("secretTargetRef", [])}
    if set(params) != {"awsAccessKeyID", "awsSecretAccessKey"}:
        fail(case, f"the SQS TriggerAuthentication gives {sorted(params)}")
    for ref in params.values():
        if existing:
            if ref["name"] != existing:
                fail(case, f"the SQS TriggerAuthentication reads {ref['name']}, not the existing {existing}")
        elif ref["key"] not in secrets.get(ref["name"], {}).get("data", {}):
            fail(case, f"the SQS TriggerAuthentication reads {ref['name']}/{ref['key']}, which the chart does not create")


def check_case(case, values, reelfleet):
    values = with_credentials(values)
    lint = helm_python.lint(str(CHART), values or None, strict=True)
    for m in lint["messages"]:
        if m["severity"] >= 2:
            fail(case, f"helm lint: {m['path']}: {m['error']}")
    for e in lint["errors"]:
        fail(case, f"helm lint: {e}")
    docs = render(values)
    for d in docs:
        if d["kind"] in CORE_KINDS:
            try:
                kubernetes_validate.validate(d, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(case, f"{d['kind']}/{d['metadata']['name']}: {e.message} at {list(e.path)}")
        elif d["kind"] in CRD_SCHEMAS:
            for e in jsonschema.Draft7Validator(CRD_SCHEMAS[d["kind"]]).iter_errors(d):
                fail(case, f"{d['kind']}/{d['metadata']['name']}: {e.message} at {list(e.path)}")
        else:
            fail(case, f"unexpected kind {d['kind']}")
    namespace = (values.get("config") or {}).get("namespace", "reelfleet")
    mode = (values.get("autoscaling") or {}).get("mode", "keda")
    check_workloads(case, docs, values)
    check_hardening(case, docs, values)
    check_intake(case, docs, values, reelfleet)
    effective = check_settings(case, docs, values, reelfleet)
    if mode == "keda":
        check_keda(case, docs, namespace, reelfleet, values, effective)
    elif mode == "hpa":
        hpas = by_kind(docs, "HorizontalPodAutoscaler")
        targets = sorted(h["spec"]["scaleTargetRef"]["name"] for h in hpas)
        queued = [d for d in by_kind(docs, "Deployment") if d["metadata"]["labels"].get("reelfleet.io/stage") != "intake"]
        if targets != sorted(d["metadata"]["name"] for d in queued) or by_kind(docs, "ScaledObject"):
            fail(case, f"HPA mode must give one HPA per Deployment and no ScaledObject, got HPAs for {targets}")
    if values.get("metrics", {}).get("serviceMonitor", {}).get("enabled"):
        (sm,) = by_kind(docs, "ServiceMonitor")
        (svc,) = by_kind(docs, "Service")
        selector = sm["spec"]["selector"]["matchLabels"]
        if not all(svc["metadata"]["labels"].get(k) == v for k, v in selector.items()):
            fail(case, "the ServiceMonitor does not select the metrics Service")
        if sm["spec"]["endpoints"][0]["port"] not in [p["name"] for p in svc["spec"]["ports"]]:
            fail(case, "the ServiceMonitor scrapes a port the Service does not name")
    kinds = {}
    for d in docs:
        kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
    return kinds


REFUSED = [
    ("no existing Secret and no credentials", {}),
    ("an empty signing key", {"secrets": {"values": dict(CREDENTIALS, REELFLEET_SIGNING__SECRET="")}}),
    ("the SQS bridge without its queue", {"bridgeSqs": {"enabled": True}}),
    ("SQS keys beside the bridge's IAM role", dict(BRIDGE_ROLE, secrets={"values": {}})),
    ("the intake without clients", {"intake": {"enabled": True}}),
    ("the console without accounts", {"console": {"enabled": True}, "secrets": CONSOLE["secrets"]}),
    ("an unknown autoscaling mode", {"autoscaling": {"mode": "sometimes"}}),
    ("an inference worker without a tier", {"workers": {"inference-x": {"stage": "inference"}}}),
    ("a worker of no stage", {"workers": {"transcode": {"stage": "transcode"}}}),
    ("a negative queue length", {"workerDefaults": {"queueLength": -1}}),
    ("an unknown top-level value", {"replicaCount": 3}),
    ("a job longer than the broker's consumer timeout", {"config": {"runtime": {"job_timeout_secs": 90000}}}),
    ("a credential in the ConfigMap", {"config": {"signing": {"secret": "in-plain-sight-0123456789"}}}),
    ("a grace period below the job timeout", {"workerDefaults": {"terminationGracePeriodSeconds": 60}}),
    ("a list in config", {"config": {"inference": {"models": [{"model": "x"}]}}}),
    ("a health address apart from the metrics port", {"config": {"runtime": {"health_addr": "0.0.0.0:1"}}}),
]


def check_refusals():
    for what, values in REFUSED:
        if what not in ("no existing Secret and no credentials", "an empty signing key"):
            values = with_credentials(values)
        try:
            render(values)
        except helm_python.HelmError as e:
            print(f"  refused as expected: {what}: {str(e).splitlines()[0][:140]}")
            continue
        fail("refusals", f"the chart accepted {what}: {values}")


def check_documented():
    """Every value in values.yaml carries a comment: each leaf key has one on the
    line above, except inside free-form maps documented as a whole."""
    free_form = {"config", "workers", "podSecurityContext", "securityContext", "resources", "values", "requests", "egress", "fetchEgress"}
    lines = (CHART / "values.yaml").read_text().splitlines()
    parents = []
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#") or stripped.startswith("-") or ":" not in stripped:
            continue
        indent = len(line) - len(stripped)
        key = stripped.split(":", 1)[0]
        parents = [(ind, k) for ind, k in parents if ind < indent]
        is_leaf = not line.rstrip().endswith(":")
        if is_leaf and not any(k in free_form for _, k in parents) and not lines[i - 1].lstrip().startswith("#"):
            fail("values.yaml", f"line {i + 1}: `{key}` has no comment")
        parents.append((indent, key))


def main():
    reelfleet = sys.argv[1]
    cases = [("default values with credentials given", {})]
    for path in sorted((CHART / "ci").glob("*.yaml")):
        cases.append((path.name, yaml.safe_load(path.read_text()) or {}))
    cases.append(("SQS bridge", BRIDGE))
    cases.append(("SQS bridge on an IAM role (IRSA)", BRIDGE_ROLE))
    cases.append(("intake API", INTAKE))
    cases.append(("intake API, clients in an existing Secret", {"intake": {"enabled": True, "clientsSecret": "intake-clients"}}))
    cases.append(("console", CONSOLE))
    cases.append(("HPA fallback", {"autoscaling": {"mode": "hpa"}}))
    cases.append(("fixed replicas", {"autoscaling": {"mode": "none"}, "podDisruptionBudget": {"enabled": False}}))
    for case, values in cases:
        kinds = check_case(case, values, reelfleet)
        print(f"  {case}: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    check_refusals()
    check_secret_rolls_pods()
    check_documented()
    report.finish("chart", failures, "lint, render, Kubernetes schemas, one ScaledObject per work queue, settings")


if __name__ == "__main__":
    main()
