#!/bin/sh
# Regenerates src/proto/ (ts-proto, typed messages + grpc-js service definitions)
# and src/proto/descriptor_set.bin (served by gRPC reflection) from protos/.
# Needs Debian's protoc (protobuf-compiler). Output is committed: nothing runs
# code generation at start-up.
set -eu
cd "$(dirname "$0")/.."
out=src/proto
files=$(cd protos && find tvix tvix_ts -name '*.proto' | sort)
rm -rf "$out/tvix" "$out/tvix_ts"
mkdir -p "$out"
NO_COLOR=1 protoc -I protos \
  --plugin=protoc-gen-ts_proto=scripts/protoc-gen-ts_proto \
  --ts_proto_out="$out" \
  --ts_proto_opt=outputServices=grpc-js,env=browser,forceLong=bigint,oneof=unions-value,esModuleInterop=true,importSuffix=.ts,outputJsonMethods=false,useExactTypes=false \
  $files
# The grpc-js service definitions use Buffer; import it explicitly for Deno.
for f in $(grep -l 'Buffer.from' $(find "$out/tvix" "$out/tvix_ts" -name '*.ts')); do
  sed -i '0,/^import /s//import { Buffer } from "node:buffer";\nimport /' "$f"
done
# Files with a service create grpc-js clients and servers: they load the
# HTTP/2 workarounds first (src/grpc/h2_goaway_workaround.ts), so no caller,
# test or tool, can open a channel without them.
for f in $(grep -l '^} from "@grpc/grpc-js";' $(find "$out/tvix" "$out/tvix_ts" -name '*.ts')); do
  rel=$(realpath --relative-to="$(dirname "$f")" src/grpc/h2_goaway_workaround.ts)
  sed -i "0,/^import /s||import \"$rel\";\nimport |" "$f"
done
# Reflection describes services and their messages; storage formats
# (tvix_ts/layout) are not part of the wire protocol.
protoc -I protos --include_imports \
  --descriptor_set_out="$out/descriptor_set.bin" $(echo "$files" | grep -v '^tvix_ts/layout/')
