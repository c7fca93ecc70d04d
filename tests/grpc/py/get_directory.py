"""One non-recursive DirectoryService/Get through Python grpcio, with the
channel's default receive limit or the one given, to see which directories
a client with grpcio's defaults can fetch.

Usage: get_directory.py STUBS_DIR ADDRESS DIGEST_B64 [MAX_RECEIVE_BYTES]

Prints one JSON line: the status code number, its details, the number of
directories received and the encoded size of each.
"""

import base64
import json
import sys


def main():
    stubs_dir, address, digest = sys.argv[1], sys.argv[2], base64.b64decode(sys.argv[3])
    sys.path.insert(0, stubs_dir)
    import grpc
    from tvix.castore.protos import rpc_directory_pb2 as dir_pb2
    from tvix.castore.protos import rpc_directory_pb2_grpc as dir_grpc

    options = []
    if len(sys.argv) > 4:
        options.append(("grpc.max_receive_message_length", int(sys.argv[4])))
    with grpc.insecure_channel(address, options=options) as channel:
        stub = dir_grpc.DirectoryServiceStub(channel)
        sizes = []
        code, details = 0, ""
        try:
            for d in stub.Get(dir_pb2.GetDirectoryRequest(digest=digest, recursive=False)):
                sizes.append(d.ByteSize())
        except grpc.RpcError as err:
            code, details = err.code().value[0], err.details() or ""
    print(json.dumps({"code": code, "details": details, "sizes": sizes}))


if __name__ == "__main__":
    main()
