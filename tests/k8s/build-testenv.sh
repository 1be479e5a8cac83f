#!/usr/bin/env bash
# Build the envtest binaries (kube-apiserver, etcd, kubectl) offline from Debian bookworm's packages and cache
# them outside the clone, so the build happens once per machine. `make k8s-testenv` runs this; the k8s tests
# use $KUBEBUILDER_ASSETS instead when it is set (e.g. from `setup-envtest use -p path`).
#
# No registry ships a kube-apiserver binary, but Debian's `kubernetes` source package is the full upstream
# tree (v1.20.2) with vendor/. Everything comes through a private apt configuration (under the work dir), so
# the system's apt sources stay untouched and nothing is installed system-wide: .debs are unpacked with
# `dpkg -x`. Pitfalls handled here (see /work/shared/OFFLINE.md): GOPATH mode (module mode fails on
# -mod=vendor), pkg/generated/openapi generated first with the vendored openapi-gen, and the vendored
# modern-go/reflect2 1.0.1 replaced by Debian's 1.0.2 (1.0.1 segfaults in map iteration with Go >= 1.18).
set -euo pipefail

K8S_DEB_VERSION="${K8S_DEB_VERSION:-1.20.5+really1.20.2-1.1+deb12u1}"
K8S_VERSION="${K8S_VERSION:-v1.20.2}"
ASSETS="${VLM_K8S_ASSETS:-${XDG_CACHE_HOME:-$HOME/.cache}/vlm-platform/k8s-testenv/$K8S_VERSION}"
SUITE="${DEBIAN_SUITE:-bookworm}"

if [[ -x "$ASSETS/kube-apiserver" && -x "$ASSETS/etcd" && -x "$ASSETS/kubectl" ]]; then
  echo "k8s test binaries already built: $ASSETS"
  exit 0
fi

mirror() {  # the machine's configured Debian mirror (deb822 or one-line format), else deb.debian.org
  local uri=""
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    uri=$(awk '/^URIs:/ {print $2}' /etc/apt/sources.list.d/*.sources | grep -v -- '-security' | grep -m1 debian || true)
  fi
  if [[ -z "$uri" && -f /etc/apt/sources.list ]]; then
    uri=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^(http|https|file):/) {print $i; exit}}' /etc/apt/sources.list)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

if ! command -v dpkg-source >/dev/null; then  # a fresh Debian machine (CI runs as root)
  if [[ $(id -u) -ne 0 ]]; then echo "dpkg-source is missing: apt-get install dpkg-dev (as root)" >&2; exit 1; fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg-dev xz-utils >/dev/null
fi

mkdir -p "$ASSETS"
WORK=$(mktemp -d "$ASSETS/../build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)
cd "$WORK"

# 1. A private apt configuration: binary + source entries for the suite on the configured mirror.
MIRROR=$(mirror)
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
SIGNED=""; [[ -f $KEYRING ]] && SIGNED=" [signed-by=$KEYRING]"
mkdir -p apt/lists/partial apt/archives/partial
printf 'deb%s %s %s main\ndeb-src%s %s %s main\n' "$SIGNED" "$MIRROR" "$SUITE" "$SIGNED" "$MIRROR" "$SUITE" > apt/sources.list
APT=(apt-get -q -o "Dir::Etc::SourceList=$WORK/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o "Dir::State::Lists=$WORK/apt/lists" -o "Dir::Cache::Archives=$WORK/apt/archives"
     -o "Dir::State::status=/dev/null" -o APT::Sandbox::User=root)
echo "== apt: $MIRROR $SUITE"
"${APT[@]}" update >/dev/null

# 2. Toolchain and binaries as unpacked .debs (no system install).
DEBS=(golang-1.19-go golang-1.19-src etcd-server golang-github-modern-go-reflect2-dev "kubernetes-client=$K8S_DEB_VERSION")
mkdir -p debs root
(cd debs && "${APT[@]}" download "${DEBS[@]}" >/dev/null)
for deb in debs/*.deb; do dpkg -x "$deb" root; done
export GOROOT="$WORK/root/usr/lib/go-1.19"  # its src/ and pkg/include are relative links into usr/share
export PATH="$GOROOT/bin:$PATH" GOPATH="$WORK/gopath" GOCACHE="$WORK/gocache" GO111MODULE=off CGO_ENABLED=0 GOFLAGS=
go version

# 3. The kubernetes source tree in a GOPATH.
echo "== source: kubernetes $K8S_DEB_VERSION"
(cd debs && "${APT[@]}" source --download-only "kubernetes=$K8S_DEB_VERSION" >/dev/null)
SRC="$GOPATH/src/k8s.io/kubernetes"
mkdir -p "$(dirname "$SRC")"
dpkg-source --no-check -x debs/kubernetes_*.dsc "$SRC" >/dev/null
cd "$SRC"
rm -rf vendor/github.com/modern-go/reflect2
cp -r "$WORK/root/usr/share/gocode/src/github.com/modern-go/reflect2" vendor/github.com/modern-go/reflect2

# 4. Generated OpenAPI definitions (what Makefile.generated_files' KUBE target would do).
echo "== openapi-gen"
go build -o "$WORK/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
dirs=$(find -H . \( -path ./_\* -o -path ./.\* -o -path ./vendor \) -prune -o -type f -name '*.go' -print \
  | sed 's|^./staging/src|vendor|; s|^\./||' | xargs grep -l '+k8s:openapi-gen=' \
  | grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' \
  | xargs -n1 dirname | LC_ALL=C sort -u | sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)
"$WORK/openapi-gen" -i "$dirs" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
  -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$WORK/openapi-violations.report" >/dev/null 2>&1
test -s pkg/generated/openapi/zz_generated.openapi.go

# 5. kube-apiserver.
echo "== go build ./cmd/kube-apiserver (several minutes)"
V=k8s.io/kubernetes/vendor/k8s.io/component-base/version
major=${K8S_VERSION#v}; minor=${major#*.}; minor=${minor%%.*}; major=${major%%.*}
go build -trimpath -o "$WORK/kube-apiserver" -ldflags "-s -w -X $V.gitVersion=$K8S_VERSION -X $V.gitMajor=$major \
  -X $V.gitMinor=$minor -X $V.gitTreeState=clean -X $V.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)" ./cmd/kube-apiserver

install -m 0755 "$WORK/kube-apiserver" "$ASSETS/kube-apiserver"
install -m 0755 "$WORK/root/usr/bin/etcd" "$ASSETS/etcd"
install -m 0755 "$WORK/root/usr/bin/kubectl" "$ASSETS/kubectl"
echo "k8s test binaries ($K8S_VERSION) built in $(( $(date +%s) - start ))s: $ASSETS"
"$ASSETS/kube-apiserver" --version
