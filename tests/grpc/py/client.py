"""A foreign gRPC client for the daemon tests: Python grpcio with stubs
generated from protos/ at test time.

It executes requests it reads from stdin, one JSON object per line, and
answers each with one JSON line on stdout. Requests carry protobuf messages
as base64 of their encoded bytes; they are parsed with the generated message
classes and sent through the generated stubs, so the wire traffic is what
any grpcio client produces. Answers carry the status code number, the
details text and the response messages (base64). The Deno test decides what
is right; this script only reports what happened.

Usage: client.py STUBS_DIR ADDRESS   (ADDRESS as grpcio takes it, e.g.
ipv6:[::1]:8000 or unix:/path/to/socket)

Ops (field "op"):
  blob.stat / blob.read / directory.get / pathinfo.get / pathinfo.put /
  pathinfo.calculate_nar / pathinfo.list   {"request": b64}
  blob.put {"chunks": [b64 data...]}        directory.put {"messages": [b64...]}
  blob.put {"chunks": [...], "cancel": true}: sends the chunks, then cancels
  reflection {"version": "v1"|"v1alpha", "request": b64}  (raw bytes both ways)
  hold.read {"id": str, "request": b64}: starts a Read, takes one message,
      leaves the rest unread; answers once the first message arrived
  hold.put {"id": str, "chunks": [...]}: starts a blob Put that sends the
      chunks and then waits; answers once they were taken
  hold.finish {"id": str}: finishes a held call (reads the rest / ends the
      upload) and answers with its outcome
"""

import base64
import json
import sys
import threading


def b64d(text):
    return base64.b64decode(text)


def b64e(data):
    return base64.b64encode(data).decode("ascii")


def main():
    stubs_dir, address = sys.argv[1], sys.argv[2]
    sys.path.insert(0, stubs_dir)
    import grpc
    from tvix.castore.protos import castore_pb2
    from tvix.castore.protos import rpc_blobstore_pb2 as blob_pb2
    from tvix.castore.protos import rpc_blobstore_pb2_grpc as blob_grpc
    from tvix.castore.protos import rpc_directory_pb2 as dir_pb2
    from tvix.castore.protos import rpc_directory_pb2_grpc as dir_grpc
    from tvix.store.protos import pathinfo_pb2
    from tvix.store.protos import rpc_pathinfo_pb2 as pi_pb2
    from tvix.store.protos import rpc_pathinfo_pb2_grpc as pi_grpc

    # Accept whatever the server sends, so oversized responses would show up
    # as data rather than as client-side errors.
    channel = grpc.insecure_channel(
        address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    )
    blobs = blob_grpc.BlobServiceStub(channel)
    dirs = dir_grpc.DirectoryServiceStub(channel)
    infos = pi_grpc.PathInfoServiceStub(channel)
    held = {}

    def ok(responses):
        return {"code": 0, "details": "", "responses": [b64e(m.SerializeToString()) for m in responses]}

    def failed(err, responses=()):
        return {
            "code": err.code().value[0],
            "details": err.details() or "",
            "responses": [b64e(m.SerializeToString()) for m in responses],
        }

    def unary(method, message):
        try:
            return ok([method(message)])
        except grpc.RpcError as err:
            return failed(err)

    def streamed(call):
        got = []
        try:
            for m in call:
                got.append(m)
            return ok(got)
        except grpc.RpcError as err:
            return failed(err, got)

    def chunk_iter(chunks, gate=None, taken=None):
        for c in chunks:
            yield blob_pb2.BlobChunk(data=b64d(c))
        if taken is not None:
            taken.set()
        if gate is not None:
            gate.wait()

    def run(req):
        op = req["op"]
        if op == "blob.stat":
            return unary(blobs.Stat, blob_pb2.StatBlobRequest.FromString(b64d(req["request"])))
        if op == "blob.read":
            return streamed(blobs.Read(blob_pb2.ReadBlobRequest.FromString(b64d(req["request"]))))
        if op == "blob.put":
            if req.get("cancel"):
                gate, taken = threading.Event(), threading.Event()
                future = blobs.Put.future(chunk_iter(req["chunks"], gate, taken))
                taken.wait(30)
                future.cancel()
                gate.set()
                try:
                    future.result()
                    return ok([])
                except grpc.FutureCancelledError:
                    return {"code": 1, "details": "cancelled by client", "responses": []}
                except grpc.RpcError as err:
                    return failed(err)
            return unary(blobs.Put, chunk_iter(req["chunks"]))
        if op == "directory.get":
            return streamed(dirs.Get(dir_pb2.GetDirectoryRequest.FromString(b64d(req["request"]))))
        if op == "directory.put":
            msgs = (castore_pb2.Directory.FromString(b64d(m)) for m in req["messages"])
            return unary(dirs.Put, msgs)
        if op == "pathinfo.get":
            return unary(infos.Get, pi_pb2.GetPathInfoRequest.FromString(b64d(req["request"])))
        if op == "pathinfo.put":
            return unary(infos.Put, pathinfo_pb2.PathInfo.FromString(b64d(req["request"])))
        if op == "pathinfo.calculate_nar":
            return unary(infos.CalculateNAR, castore_pb2.Node.FromString(b64d(req["request"])))
        if op == "pathinfo.list":
            return streamed(infos.List(pi_pb2.ListPathInfoRequest()))
        if op == "reflection":
            method = "/grpc.reflection.%s.ServerReflection/ServerReflectionInfo" % req["version"]
            call = channel.stream_stream(
                method, request_serializer=lambda b: b, response_deserializer=lambda b: b
            )
            try:
                got = list(call(iter([b64d(req["request"])])))
                return {"code": 0, "details": "", "responses": [b64e(m) for m in got]}
            except grpc.RpcError as err:
                return {"code": err.code().value[0], "details": err.details() or "", "responses": []}
        if op == "hold.read":
            call = blobs.Read(blob_pb2.ReadBlobRequest.FromString(b64d(req["request"])))
            first = next(call)
            held[req["id"]] = ("read", call, [first])
            return ok([first])
        if op == "hold.put":
            gate, taken = threading.Event(), threading.Event()
            future = blobs.Put.future(chunk_iter(req["chunks"], gate, taken))
            taken.wait(30)
            held[req["id"]] = ("put", future, gate)
            return ok([])
        if op == "hold.finish":
            kind, call, extra = held.pop(req["id"])
            if kind == "read":
                res = streamed(call)
                res["responses"] = [b64e(m.SerializeToString()) for m in extra] + res["responses"]
                return res
            extra.set()
            try:
                return ok([call.result(timeout=30)])
            except grpc.RpcError as err:
                return failed(err)
        raise ValueError("unknown op %r" % op)

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            answer = run(json.loads(line))
        except Exception as err:  # report, never die silently
            answer = {"error": "%s: %s" % (type(err).__name__, err)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    channel.close()


if __name__ == "__main__":
    main()
