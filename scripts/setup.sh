#!/bin/sh
# Installs what the daemon, the tests and the benchmarks need on a fresh
# Debian machine: the pinned Deno from the npm registry, and Debian packages
# (protoc for codegen, nix-bin as the NAR/store-path oracle, python3-grpcio as
# a foreign gRPC client, fuse3 for mounts, postgresql and Ceph's radosgw as
# the real database and S3 servers the scale-out tests start). Idempotent;
# run as root.
set -eu
cd "$(dirname "$0")/.."
want=$(cat DENO_VERSION)
if ! command -v deno >/dev/null 2>&1 || [ "$(deno --version | sed -n '1s/^deno \([^ ]*\).*/\1/p')" != "$want" ]; then
  npm install -g --silent "deno@$want"
fi
packages="protobuf-compiler nix-bin b3sum strace python3-grpcio python3-grpc-tools fuse3 libfuse3-3 libfuse3-dev attr zstd xz-utils bzip2 gcc pkg-config curl postgresql"
missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq $missing >/dev/null
fi
# Ceph (radosgw) without the recommended extras; the script knows the set.
bash scripts/s3_test_server.sh install
