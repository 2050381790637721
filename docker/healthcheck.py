"""Container health check of the serving image: the gateway's /healthz, or a worker's grpc.health.v1
(SERVING only once a model is warm). SERVING_ROLE says which; exit 0 = healthy."""

import os
import sys
import urllib.request


def main() -> int:
    if os.environ.get("SERVING_ROLE", "gateway") == "worker":
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        port = os.environ.get("LIFECYCLE_WORKER_PORT", "50051")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
    port = os.environ.get("LIFECYCLE_GATEWAY_PORT", "8000")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as resp:
        return 0 if resp.status == 200 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy"
        print(f"unhealthy: {exc}", file=sys.stderr)
        sys.exit(1)
