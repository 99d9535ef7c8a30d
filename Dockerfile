# A shardclaim worker image: `docker run IMAGE status gs://bucket/ds` (any shardclaim command; gs://, s3://).
# No credentials are baked in: mount them or use the metadata server (see README, "Docker").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/shardclaim
COPY pyproject.toml README.md ./
COPY shardclaim ./shardclaim
COPY scripts ./scripts
# The project itself, with its S3 extra (hadolint reads ".[s3]" as an unpinned package name).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[s3]" \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin worker

USER 10001
WORKDIR /home/worker
ENTRYPOINT ["shardclaim"]
CMD ["--help"]
