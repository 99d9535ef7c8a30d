# A shardclaim worker image: `docker run IMAGE status gs://bucket/ds` (any shardclaim command; gs://, s3://).
# No credentials are baked in: mount them or use the metadata server (see README, "Docker").

# The wheel is built where a C compiler is (the full image), so it carries the C line scan and line
# check (shardclaim._scan and _valid, optional extensions: the slim image has no compiler and would go
# without them).
FROM python:3.11 AS wheel
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY shardclaim ./shardclaim
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -c "import glob, sys, zipfile; \
names = zipfile.ZipFile(glob.glob('/wheels/shardclaim-*.whl')[0]).namelist(); \
sys.exit(not all(any(n.startswith('shardclaim/' + m) for n in names) for m in ('_scan', '_valid')))"

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/shardclaim
COPY --from=wheel /wheels /wheels
COPY scripts ./scripts
# The project itself, with its S3 extra (hadolint reads the extra as an unpinned package name).
# hadolint ignore=DL3013
RUN whl="$(echo /wheels/shardclaim-*.whl)" \
    && pip install --no-cache-dir "${whl}[s3]" \
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin worker

USER 10001
WORKDIR /home/worker
ENTRYPOINT ["shardclaim"]
CMD ["--help"]
