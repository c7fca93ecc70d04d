"""grpc.health.v1.Health from grpcio, the way a load balancer probes it.

Usage: health_client.py TARGET check SERVICE   -> prints the status name, or "error <CODE>"
       health_client.py TARGET watch SERVICE   -> prints "ready", each status as it
                                                  arrives, then "end <CODE>"

The two one-field messages are encoded by hand (no generated stubs needed).
"""
import sys

import grpc

NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def encode_request(service):
    data = service.encode()
    assert len(data) < 128
    return b"\x0a" + bytes([len(data)]) + data if data else b""


def decode_response(data):
    # HealthCheckResponse { ServingStatus status = 1; } (absent = UNKNOWN)
    if not data:
        return 0
    assert data[0] == 0x08 and len(data) == 2, data
    return data[1]


def main():
    target, mode, service = sys.argv[1], sys.argv[2], sys.argv[3]
    channel = grpc.insecure_channel(target)
    if mode == "check":
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=encode_request,
            response_deserializer=decode_response,
        )
        try:
            print(NAMES[check(service, timeout=10)], flush=True)
        except grpc.RpcError as err:
            print("error", err.code().name, flush=True)
        return
    watch = channel.unary_stream(
        "/grpc.health.v1.Health/Watch",
        request_serializer=encode_request,
        response_deserializer=decode_response,
    )
    stream = watch(service)
    print("ready", flush=True)
    try:
        for status in stream:
            print(NAMES[status], flush=True)
        print("end OK", flush=True)
    except grpc.RpcError as err:
        print("end", err.code().name, flush=True)


main()
