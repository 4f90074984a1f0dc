#!/usr/bin/env bash
# Fetch the KEDA CRD schemas that tests/test_deploy_k8s.py validates the ScaledObject and the
# TriggerAuthentication against, into a cache folder (git-ignored), and print that folder.
# Without kubectl or kustomize on PATH it also builds kustomize into <cache>/bin (Go module
# sigs.k8s.io/kustomize/kustomize/v5, about a minute), where the test looks for it.
#
#   bash .ci/k8s-schemas.sh            # -> .cache/k8s-schemas/keda-2.10.1
#   K8S_SCHEMA_CACHE=/some/dir bash .ci/k8s-schemas.sh
#
# Source: the npm package @kubernetes-models/keda 0.3.2, generated from KEDA 2.10.1's CRD
# manifest, which carries each CRD's OpenAPI schema as a JSON literal (`const schema = {...};`
# in keda.sh/v1alpha1/<Kind>.js). Later versions of the package (0.4.x, 2.x) ship only compiled
# validator code, no schema data. The tarball is checked against a pinned SHA-256. The Kubernetes
# schemas themselves come with the kubernetes-validate package (PyPI) and need no fetching.
# Needs npm, tar, sha256sum and python3. Exit 0 and the folder on stdout, 1 on any failure.
set -euo pipefail

PACKAGE="@kubernetes-models/keda"
VERSION="0.3.2"
KEDA_VERSION="2.10.1"
SHA256="24e4aaef8e4d8f93abdd516512b31a0083c0e386f1d8b0580aff7f3a3f767c39"
KINDS=(ScaledObject TriggerAuthentication)
KUSTOMIZE_VERSION="v5.5.0"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${K8S_SCHEMA_CACHE:-$root/.cache/k8s-schemas}
dest=$cache/keda-$KEDA_VERSION
python=${PYTHON:-python3}

complete() {
    local kind
    for kind in "${KINDS[@]}"; do
        [[ -s $dest/${kind,,}.json ]] || return 1
    done
}

# kustomize renders the manifests; kubectl has it built in.
if ! command -v kubectl >/dev/null && ! command -v kustomize >/dev/null \
    && [[ ! -x $cache/bin/kustomize ]]; then
    command -v go >/dev/null || { echo "k8s-schemas: no kubectl, kustomize or go" >&2; exit 1; }
    echo "k8s-schemas: building kustomize $KUSTOMIZE_VERSION into $cache/bin" >&2
    GOBIN=$cache/bin go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" >&2
fi

if complete; then
    echo "$dest"
    exit 0
fi

for tool in npm tar sha256sum "$python"; do
    command -v "$tool" >/dev/null || { echo "k8s-schemas: $tool not found" >&2; exit 1; }
done

mkdir -p "$cache"
work=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null)
tarball=$(find "$work" -maxdepth 1 -name '*.tgz' | head -n 1)
[[ -n $tarball ]] || { echo "k8s-schemas: npm pack $PACKAGE@$VERSION wrote no tarball" >&2; exit 1; }
echo "$SHA256  $tarball" | sha256sum --check --status || {
    echo "k8s-schemas: $tarball does not match the pinned SHA-256 $SHA256" >&2
    exit 1
}
tar -xzf "$tarball" -C "$work"

mkdir -p "$work/out"
"$python" - "$work/package" "$work/out" "${KINDS[@]}" <<'PY'
"""Cut each kind's schema literal out of the package's CommonJS module and write it as JSON."""
import json
import re
import sys
from pathlib import Path

package, out, kinds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
for kind in kinds:
    source = (package / "keda.sh" / "v1alpha1" / f"{kind}.js").read_text(encoding="utf-8")
    found = re.search(r"^const schema = (\{.*?^\});$", source, re.MULTILINE | re.DOTALL)
    if found is None:
        sys.exit(f"k8s-schemas: no schema literal in keda.sh/v1alpha1/{kind}.js")
    schema = json.loads(found.group(1))
    (out / f"{kind.lower()}.json").write_text(json.dumps(schema, indent=1), encoding="utf-8")
PY
printf '%s@%s (KEDA %s CRDs), sha256 %s\n' "$PACKAGE" "$VERSION" "$KEDA_VERSION" "$SHA256" \
    >"$work/out/SOURCE"

rm -rf "$dest"
mv "$work/out" "$dest"
complete || { echo "k8s-schemas: $dest is incomplete" >&2; exit 1; }
echo "$dest"
